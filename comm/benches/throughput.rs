//! Throughput of the local and TCP backends for 1–64 MB messages, beside a plain memcpy and a raw
//! loopback socket. Each transport iteration is a round trip (send, echo back), counted as twice
//! the message size; memcpy is one copy of the message size. Short settings: 2 s per point.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use seqpipe_comm::{CommOptions, LocalTransport, Message, Tag, TcpConfig, TcpTransport, Transport};

const MB: usize = 1 << 20;
const SIZES_MB: [usize; 4] = [1, 4, 16, 64];

/// Echoes every message back until it gets an empty one.
fn echo<T: Transport>(mut t: T) {
    let (ping, pong) = (Tag::user(1).unwrap(), Tag::user(2).unwrap());
    loop {
        let m = t.recv(0, ping).unwrap();
        if m.numel() == 0 {
            return;
        }
        t.send(0, pong, m).unwrap();
    }
}

fn round_trips<T: Transport + 'static>(c: &mut Criterion, name: &str, mut ranks: Vec<T>) {
    let (ping, pong) = (Tag::user(1).unwrap(), Tag::user(2).unwrap());
    let echoer = ranks.pop().unwrap();
    let mut t = ranks.pop().unwrap();
    let handle = std::thread::spawn(move || echo(echoer));
    let mut g = c.benchmark_group("round_trip");
    for mb in SIZES_MB {
        g.throughput(Throughput::Bytes((2 * mb * MB) as u64));
        let mut msg = Some(Message::from_f32(vec![mb * MB / 4], vec![1.0; mb * MB / 4]).unwrap());
        g.bench_with_input(BenchmarkId::new(name, format!("{mb}MB")), &mb, |b, _| {
            b.iter(|| {
                t.send(1, ping, msg.take().unwrap()).unwrap();
                msg = Some(t.recv(1, pong).unwrap());
            })
        });
    }
    g.finish();
    t.send(1, ping, Message::from_u8(vec![0], vec![]).unwrap())
        .unwrap();
    handle.join().unwrap();
}

fn local(c: &mut Criterion) {
    round_trips(
        c,
        "local",
        LocalTransport::mesh(2, CommOptions::default()).unwrap(),
    );
}

fn tcp(c: &mut Criterion) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let connect = move |rank| {
        let cfg = TcpConfig::new(rank, 2, "127.0.0.1", port, CommOptions::default()).unwrap();
        TcpTransport::connect(&cfg).unwrap()
    };
    let other = std::thread::spawn(move || connect(1));
    let ranks = vec![connect(0), other.join().unwrap()];
    round_trips(c, "tcp", ranks);
}

/// The same round trip over a bare loopback socket pair: the ceiling for the TCP backend.
fn raw_socket(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut b, _) = listener.accept().unwrap();
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut len = [0u8; 8];
        while b.read_exact(&mut len).is_ok() {
            buf.resize(u64::from_le_bytes(len) as usize, 0);
            b.read_exact(&mut buf).unwrap();
            b.write_all(&buf).unwrap();
        }
    });
    let mut g = c.benchmark_group("round_trip");
    for mb in SIZES_MB {
        g.throughput(Throughput::Bytes((2 * mb * MB) as u64));
        let out = vec![1u8; mb * MB];
        let mut back = vec![0u8; mb * MB];
        g.bench_with_input(
            BenchmarkId::new("raw_socket", format!("{mb}MB")),
            &mb,
            |bch, _| {
                bch.iter(|| {
                    a.write_all(&(out.len() as u64).to_le_bytes()).unwrap();
                    a.write_all(&out).unwrap();
                    a.read_exact(&mut back).unwrap();
                })
            },
        );
    }
    g.finish();
    drop(a);
    echo.join().unwrap();
}

fn memcpy(c: &mut Criterion) {
    let mut g = c.benchmark_group("copy");
    for mb in SIZES_MB {
        g.throughput(Throughput::Bytes((mb * MB) as u64));
        let src = vec![1u8; mb * MB];
        let mut dst = vec![0u8; mb * MB];
        g.bench_with_input(
            BenchmarkId::new("memcpy", format!("{mb}MB")),
            &mb,
            |b, _| b.iter(|| dst.copy_from_slice(std::hint::black_box(&src))),
        );
    }
    g.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = short(); targets = memcpy, local, tcp, raw_socket }
criterion_main!(benches);
