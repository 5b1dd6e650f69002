//! TCP backend with real sockets on loopback, every rank a thread: exchanges, collectives,
//! mismatches, faults and rendezvous failures.

mod common;

use std::time::{Duration, Instant};

use common::*;
use seqpipe_comm::{CommError, CommOptions, Message, TcpConfig, TcpTransport, Transport};

const LONG: Duration = Duration::from_secs(20);

#[test]
fn ping_pong_of_random_messages() {
    for seed in [1, 77, 9001] {
        let verified = run_ranks(tcp_mesh(2, LONG), |t| ping_pong(t, 25, seed));
        assert_eq!(verified, vec![25, 0]);
    }
}

#[test]
fn ring_exchange_with_varying_shapes() {
    for world in [2, 3, 4] {
        let bytes = run_ranks(tcp_mesh(world, LONG), |t| ring(t, 20));
        assert!(bytes.iter().all(|&b| b > 0), "{bytes:?}");
    }
}

#[test]
fn all_reduce_equals_the_sum_and_every_rank_agrees() {
    for world in [1, 3] {
        let results = run_ranks(tcp_mesh(world, LONG), |t| collectives(t, 1000));
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "world {world}: ranks differ"
        );
    }
}

#[test]
fn tag_and_shape_mismatches_are_errors() {
    let errors = run_ranks(tcp_mesh(3, LONG), mismatches);
    check_mismatch_errors(&errors);
}

#[test]
fn large_messages_and_nonblocking_calls() {
    let mut ranks = tcp_mesh(2, LONG);
    let (mut a, mut b) = (ranks.remove(0), ranks.remove(0));
    assert_eq!(b.try_recv(0, act(0)).unwrap(), None);
    let big: Vec<f32> = (0..(4 << 20)).map(|i| i as f32).collect(); // 16 MiB
    let handle = a
        .isend(
            1,
            act(0),
            Message::from_f32(vec![1024, 4096], big.clone()).unwrap(),
        )
        .unwrap();
    let got = b.recv(0, act(0)).unwrap();
    handle.wait(LONG).unwrap();
    assert_eq!(got.shape(), &[1024, 4096]);
    assert_eq!(got.into_f32().unwrap(), big);
    a.send(1, act(1), Message::from_u8(vec![2], vec![4, 2]).unwrap())
        .unwrap();
    let polled = (0..2000).find_map(|_| {
        std::thread::sleep(Duration::from_millis(1));
        b.try_recv(0, act(1)).unwrap()
    });
    assert_eq!(polled.unwrap().into_u8().unwrap(), vec![4, 2]);
}

#[test]
fn a_silent_peer_times_out_naming_it() {
    let mut ranks = tcp_mesh(2, Duration::from_millis(300));
    let mut t = ranks.remove(0);
    let start = Instant::now();
    let err = t.recv(1, act(2)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(
            err,
            CommError::Timeout {
                peer: 1,
                waited_ms: 300,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_closed_peer_fails_the_waiting_rank_at_once() {
    let mut ranks = tcp_mesh(3, LONG);
    let start = Instant::now();
    let gone = ranks.remove(2);
    let waiters: Vec<_> = ranks
        .into_iter()
        .map(|mut t| std::thread::spawn(move || t.recv(2, act(0)).unwrap_err()))
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    drop(gone);
    for w in waiters {
        let err = w.join().unwrap();
        assert!(
            matches!(err, CommError::PeerDisconnected { peer: 2, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("rank 2 disconnected during recv act(mb=0"),
            "{err}"
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "no waiting out the 20 s timeout"
    );
}

#[test]
fn rendezvous_names_the_rank_that_never_came() {
    let port = free_port();
    let opts = CommOptions::with_timeout(Duration::from_millis(400));
    let start = Instant::now();
    let joined = std::thread::spawn(move || {
        TcpTransport::connect(&TcpConfig::new(1, 3, "127.0.0.1", port, opts).unwrap()).unwrap_err()
    });
    let master =
        TcpTransport::connect(&TcpConfig::new(0, 3, "127.0.0.1", port, opts).unwrap()).unwrap_err();
    let worker = joined.join().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    let text = master.to_string();
    assert!(
        text.starts_with("rendezvous failed on rank 0: waiting for ranks [2] to join"),
        "{text}"
    );
    assert!(
        matches!(worker, CommError::Rendezvous { rank: 1, .. }),
        "{worker}"
    );
}

#[test]
fn rendezvous_rejects_disagreeing_world_sizes() {
    let port = free_port();
    let opts = CommOptions::with_timeout(Duration::from_secs(5));
    let worker = std::thread::spawn(move || {
        TcpTransport::connect(&TcpConfig::new(1, 3, "127.0.0.1", port, opts).unwrap()).unwrap_err()
    });
    let master =
        TcpTransport::connect(&TcpConfig::new(0, 2, "127.0.0.1", port, opts).unwrap()).unwrap_err();
    assert!(
        master
            .to_string()
            .contains("rank 1 says WORLD_SIZE=3, rank 0 has 2"),
        "{master}"
    );
    let worker = worker.join().unwrap();
    assert!(worker.to_string().contains("address table"), "{worker}");
}
