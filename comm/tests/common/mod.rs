//! Helpers shared by the integration tests: deterministic random messages, thread runners,
//! loopback TCP meshes, and exchange scenarios written once against the `Transport` trait.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::time::Duration;

use seqpipe_comm::{
    CommOptions, DType, Data, Message, Tag, TagKind, TcpConfig, TcpTransport, Transport,
};

/// SplitMix64: small, deterministic, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A message of a random dtype and a random shape (rank 0 to 3, dims 0 to 9), from `seed`.
pub fn random_message(seed: u64) -> Message {
    let mut r = Rng::new(seed);
    let ndim = r.below(4) as usize;
    let shape: Vec<usize> = (0..ndim).map(|_| r.below(10) as usize).collect();
    let n: usize = shape.iter().product();
    let dtype = DType::ALL[r.below(7) as usize];
    let data = match dtype {
        DType::F32 => Data::F32((0..n).map(|_| r.next_u64() as f32 / 7.0).collect()),
        DType::F64 => Data::F64((0..n).map(|_| r.next_u64() as f64 / 3.0).collect()),
        DType::BF16 => Data::BF16((0..n).map(|_| r.next_u64() as u16).collect()),
        DType::F16 => Data::F16((0..n).map(|_| r.next_u64() as u16).collect()),
        DType::U32 => Data::U32((0..n).map(|_| r.next_u64() as u32).collect()),
        DType::I64 => Data::I64((0..n).map(|_| r.next_u64() as i64).collect()),
        DType::U8 => Data::U8((0..n).map(|_| r.next_u64() as u8).collect()),
    };
    Message::new(shape, data).unwrap()
}

/// Runs `f` on every rank in its own thread; results in rank order.
pub fn run_ranks<T, R, F>(ranks: Vec<T>, f: F) -> Vec<R>
where
    T: Transport + 'static,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks.into_iter().map(|t| s.spawn(|| f(t))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A loopback port free right now (bound and released: another process could take it, rarely).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A TCP mesh on loopback, every rank connected from its own thread.
pub fn tcp_mesh(world: usize, timeout: Duration) -> Vec<TcpTransport> {
    let port = free_port();
    let opts = CommOptions::with_timeout(timeout);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                s.spawn(move || {
                    let cfg = TcpConfig::new(rank, world, "127.0.0.1", port, opts).unwrap();
                    TcpTransport::connect(&cfg).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

pub fn act(mb: u32) -> Tag {
    Tag::new(TagKind::Act, mb, mb % 3, 0).unwrap()
}

/// Rank 0 sends `rounds` random messages, rank 1 echoes each; rank 0 checks every echo.
/// Returns the number of messages rank 0 verified (0 on the other ranks).
pub fn ping_pong<T: Transport>(mut t: T, rounds: u32, seed: u64) -> usize {
    let mut verified = 0;
    for i in 0..rounds {
        let tag = act(i);
        match t.rank() {
            0 => {
                let sent = random_message(seed + u64::from(i));
                t.send(1, tag, sent.clone()).unwrap();
                let back = t
                    .recv(1, Tag::new(TagKind::Grad, i, 0, 0).unwrap())
                    .unwrap();
                assert_eq!(back, sent, "round {i}");
                verified += 1;
            }
            1 => {
                let m = t.recv(0, tag).unwrap();
                t.send(0, Tag::new(TagKind::Grad, i, 0, 0).unwrap(), m)
                    .unwrap();
            }
            _ => {}
        }
    }
    verified
}

/// Every rank sends to the next and receives from the previous, `rounds` times, messages of
/// varying shapes; each receiver regenerates what the sender must have sent. Returns bytes checked.
pub fn ring<T: Transport>(mut t: T, rounds: u32) -> usize {
    let (r, n) = (t.rank(), t.world_size());
    let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
    let seed = |rank: usize, i: u32| (rank as u64) << 32 | u64::from(i);
    let mut checked = 0;
    for i in 0..rounds {
        t.send(next, act(i), random_message(seed(r, i))).unwrap();
        let got = t.recv(prev, act(i)).unwrap();
        assert_eq!(got, random_message(seed(prev, i)), "rank {r} round {i}");
        checked += got.size_in_bytes();
    }
    checked
}

/// What one rank saw in [`collectives`].
#[derive(Debug, PartialEq)]
pub struct CollectiveResult {
    pub f32_sum: Vec<f32>,
    pub f64_sum: Vec<f64>,
    pub broadcast: Message,
}

/// Integer-valued f32 contributions (sums are exact in any order) and random f64 ones; also a
/// broadcast from the last rank and barriers. Checks the sums against a serial sum.
pub fn collectives<T: Transport>(mut t: T, len: usize) -> CollectiveResult {
    let (r, n) = (t.rank(), t.world_size());
    let mut world = seqpipe_comm::Group::world(n).unwrap();
    let ints = |rank: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + rank * 13) % 101) as f32)
            .collect()
    };
    let floats = |rank: usize| -> Vec<f64> {
        let mut g = Rng::new(rank as u64 + 99);
        (0..len)
            .map(|_| (g.next_u64() % 1_000_000) as f64 / 997.0 - 500.0)
            .collect()
    };
    let shape = vec![len / 2, 2];
    let got = t
        .all_reduce_sum(
            &mut world,
            Message::from_f32(shape.clone(), ints(r)).unwrap(),
        )
        .unwrap();
    assert_eq!(got.shape(), &shape[..]);
    let f32_sum = got.into_f32().unwrap();
    let want: Vec<f32> = (0..len).map(|i| (0..n).map(|k| ints(k)[i]).sum()).collect();
    assert_eq!(f32_sum, want, "rank {r}: integer-valued sums are exact");
    t.barrier(&mut world).unwrap();
    let f64_sum = t
        .all_reduce_sum(&mut world, Message::from_f64(vec![len], floats(r)).unwrap())
        .unwrap()
        .into_f64()
        .unwrap();
    for (i, s) in f64_sum.iter().enumerate() {
        let serial: f64 = (0..n).map(|k| floats(k)[i]).sum();
        assert!(
            (s - serial).abs() <= 1e-12 * (n as f64) * 500.0,
            "rank {r} [{i}]: {s} vs {serial}"
        );
    }
    let root = n - 1;
    let payload = (r == root).then(|| random_message(4242));
    let broadcast = t.broadcast(&mut world, root, payload).unwrap();
    assert_eq!(broadcast, random_message(4242));
    t.barrier(&mut world).unwrap();
    CollectiveResult {
        f32_sum,
        f64_sum,
        broadcast,
    }
}

/// Tag and shape mismatches between ranks 0 and 1 (other ranks idle). Returns rank 1's errors
/// (tag, expected shape) and rank 0's and 1's all-reduce errors, as text.
pub fn mismatches<T: Transport>(mut t: T) -> Vec<String> {
    let mut world = seqpipe_comm::Group::new(vec![0, 1]).unwrap();
    let shape_of = |r: usize| vec![2, 3 + r];
    match t.rank() {
        0 => {
            t.send(1, act(5), Message::from_u8(vec![1], vec![9]).unwrap())
                .unwrap();
            t.send(
                1,
                act(6),
                Message::from_f32(vec![2, 4], vec![0.0; 8]).unwrap(),
            )
            .unwrap();
            let msg = Message::zeros(DType::F32, shape_of(0)).unwrap();
            vec![t.all_reduce_sum(&mut world, msg).unwrap_err().to_string()]
        }
        1 => {
            let tag_err = t.recv(0, act(4)).unwrap_err().to_string();
            let shape_err = t
                .recv_expect(0, act(6), DType::F32, &[2, 5])
                .unwrap_err()
                .to_string();
            let msg = Message::zeros(DType::F32, shape_of(1)).unwrap();
            let reduce_err = t.all_reduce_sum(&mut world, msg).unwrap_err().to_string();
            vec![tag_err, shape_err, reduce_err]
        }
        _ => Vec::new(),
    }
}

/// Checks the texts [`mismatches`] returned.
pub fn check_mismatch_errors(errors: &[Vec<String>]) {
    assert_eq!(
        errors[1][0],
        "tag mismatch from rank 0: expected act(mb=4, slice=1, chunk=0), received act(mb=5, slice=2, chunk=0) (both ranks must run the same schedule)"
    );
    assert_eq!(
        errors[1][1],
        "shape mismatch from rank 0 for act(mb=6, slice=0, chunk=0): expected f32[2, 5], received f32[2, 4]"
    );
    assert_eq!(
        errors[0][0],
        "shape mismatch from rank 1 for all_reduce#0: expected f32[2, 3], received f32[2, 4]"
    );
    assert_eq!(
        errors[1][2],
        "shape mismatch from rank 0 for all_reduce#0: expected f32[2, 4], received f32[2, 3]"
    );
}
