//! In-process backend: exchanges, collectives, mismatches and faults over threads.

mod common;

use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use seqpipe_comm::{
    CommError, CommOptions, DType, Group, LocalTransport, Message, Tag, TagKind, Transport,
    Watchdog,
};

fn mesh(world: usize, timeout_ms: u64) -> Vec<LocalTransport> {
    LocalTransport::mesh(
        world,
        CommOptions::with_timeout(Duration::from_millis(timeout_ms)),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn ping_pong_of_random_messages(seed in any::<u64>()) {
        let verified = run_ranks(mesh(2, 5000), |t| ping_pong(t, 12, seed));
        prop_assert_eq!(verified, vec![12, 0]);
    }
}

#[test]
fn ring_exchange_with_varying_shapes() {
    for world in [2, 3, 5] {
        let bytes = run_ranks(mesh(world, 5000), |t| ring(t, 20));
        assert!(bytes.iter().all(|&b| b > 0), "{bytes:?}");
    }
}

#[test]
fn boxed_transports_run_the_same_scenarios() {
    let boxed: Vec<Box<dyn Transport>> = mesh(3, 5000)
        .into_iter()
        .map(|t| Box::new(t) as Box<dyn Transport>)
        .collect();
    let results = run_ranks(boxed, |t| collectives(t, 64));
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn messages_move_without_copy() {
    let mut ranks = mesh(2, 1000);
    let (mut a, mut b) = (ranks.remove(0), ranks.remove(0));
    let v = vec![1.5f32; 1 << 16];
    let ptr = v.as_ptr();
    a.send(1, act(0), Message::from_f32(vec![1 << 16], v).unwrap())
        .unwrap();
    let received = b.recv(0, act(0)).unwrap().into_f32().unwrap();
    assert_eq!(received.as_ptr(), ptr);
}

#[test]
fn all_reduce_equals_the_sum_and_every_rank_agrees() {
    for world in [1, 2, 3, 4] {
        for len in [2, 10, 1000] {
            let results = run_ranks(mesh(world, 5000), |t| collectives(t, len));
            assert!(
                results.windows(2).all(|w| w[0] == w[1]),
                "world {world} len {len}: ranks differ"
            );
        }
    }
}

#[test]
fn tag_and_shape_mismatches_are_errors() {
    let errors = run_ranks(mesh(3, 5000), mismatches);
    check_mismatch_errors(&errors);
}

#[test]
fn collective_misuse_is_an_error() {
    let mut ranks = mesh(2, 200);
    let mut t = ranks.remove(0);
    let mut outsiders = Group::new(vec![1]).unwrap();
    assert!(matches!(
        t.barrier(&mut outsiders),
        Err(CommError::BadGroup { rank: 0, .. })
    ));
    let mut too_big = Group::new(vec![0, 7]).unwrap();
    assert!(matches!(
        t.barrier(&mut too_big),
        Err(CommError::BadRank { rank: 7, .. })
    ));
    let mut world = Group::world(2).unwrap();
    let ints = Message::from_u32(vec![1], vec![1]).unwrap();
    let err = t.all_reduce_sum(&mut world, ints).unwrap_err();
    assert_eq!(
        err.to_string(),
        "all_reduce_sum does not support dtype u32; supported: f32, f64"
    );
    assert!(matches!(
        t.send(0, act(0), Message::zeros(DType::U8, vec![0]).unwrap()),
        Err(CommError::SelfPeer { rank: 0 })
    ));
    assert!(matches!(
        t.recv(2, act(0)),
        Err(CommError::BadRank { rank: 2, .. })
    ));
}

#[test]
fn a_silent_peer_times_out_naming_it() {
    let mut ranks = mesh(2, 150);
    let mut t = ranks.remove(0);
    let start = Instant::now();
    let err = t
        .recv(1, Tag::new(TagKind::Grad, 3, 1, 0).unwrap())
        .unwrap_err();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(
        err.to_string(),
        "timed out after 150 ms waiting on rank 1 for recv grad(mb=3, slice=1, chunk=0) from rank 1; the peer may be stuck or running a different schedule"
    );
    assert_eq!(t.try_recv(1, act(0)).unwrap(), None);
}

#[test]
fn a_dead_peer_fails_the_waiting_rank_at_once() {
    let start = Instant::now();
    let errors = run_ranks(mesh(3, 30_000), |mut t| {
        if t.rank() == 1 {
            for peer in [0, 2] {
                t.send(peer, act(0), Message::from_u8(vec![1], vec![1]).unwrap())
                    .unwrap();
            }
            // Stage 1 ends (as a crashed thread unwinding would): its transport is dropped.
            return None;
        }
        // The message sent before the end is still delivered, then the disconnect shows.
        assert_eq!(t.recv(1, act(0)).unwrap().as_u8().unwrap(), &[1]);
        Some(t.recv(1, act(1)).unwrap_err())
    });
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "no waiting out the 30 s timeout"
    );
    for rank in [0, 2] {
        let err = errors[rank].as_ref().unwrap();
        assert!(
            matches!(err, CommError::PeerDisconnected { peer: 1, .. }),
            "rank {rank}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("rank 1 disconnected during recv act(mb=1"),
            "{text}"
        );
    }
    let mut ranks = mesh(2, 1000);
    let (mut a, b) = (ranks.remove(0), ranks.remove(0));
    drop(b);
    let err = a
        .send(1, act(0), Message::from_u8(vec![0], vec![]).unwrap())
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("rank 1 disconnected during send act(mb=0"),
        "{err}"
    );
}

#[test]
fn watchdog_dumps_every_rank_while_one_waits() {
    let mut ranks = mesh(2, 2000);
    let watchdog = Watchdog::new(ranks.iter().map(|t| t.progress()).collect());
    let (mut a, mut b) = (ranks.remove(0), ranks.remove(0));
    a.send(1, act(0), Message::from_u8(vec![1], vec![7]).unwrap())
        .unwrap();
    b.recv(0, act(0)).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let _guard = watchdog.clone().spawn(Duration::from_millis(50), move |d| {
        let _ = tx.send(d);
    });
    let waiter = std::thread::spawn(move || b.recv(0, act(1)).map(drop));
    let dump = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        dump.contains("rank 0: last completed send act(mb=0, slice=0, chunk=0) to rank 1"),
        "{dump}"
    );
    assert!(dump.contains("; idle"), "{dump}");
    assert!(
        dump.contains("rank 1: last completed recv act(mb=0, slice=0, chunk=0) from rank 0"),
        "{dump}"
    );
    assert!(
        dump.contains("waiting on recv act(mb=1, slice=1, chunk=0) from rank 0"),
        "{dump}"
    );
    a.send(1, act(1), Message::from_u8(vec![0], vec![]).unwrap())
        .unwrap();
    waiter.join().unwrap().unwrap();
}
