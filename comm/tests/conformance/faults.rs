//! Fault scenarios: mismatched tags, shapes and dtypes, a silent peer, a dead peer, misuse of the
//! API, and the watchdog's view of a waiting rank. Each error must name the peer and what was
//! expected; the transport must stay usable after a mismatch.

use std::time::{Duration, Instant};

use seqpipe_comm::{CommError, DType, Group, Message, Tag, TagKind, Transport, Watchdog};

use super::{on_mesh, worlds, Backend, LONG, SHORT};
use crate::common::act;

/// Rank 0 sends messages rank 1 does not expect; rank 1's errors must name rank 0 and both
/// sides' tag, shape or dtype, and the next message must still arrive. Then the two disagree on
/// an all-reduce's shape (a sub-group in a world of 3, the whole world in a world of 2).
pub fn tags_shapes_and_dtypes_must_match<B: Backend>(b: &B) {
    for world in worlds(b, "mismatches", &[2, 3]) {
        let errors = on_mesh(b, world, LONG, mismatches);
        assert_eq!(
            errors[1][0],
            "tag mismatch from rank 0: expected act(mb=4, slice=1, chunk=0), received \
             act(mb=5, slice=2, chunk=0) (both ranks must run the same schedule)"
        );
        assert_eq!(
            errors[1][1],
            "shape mismatch from rank 0 for act(mb=6, slice=0, chunk=0): expected f32[2, 5], \
             received f32[2, 4]"
        );
        assert_eq!(
            errors[1][2],
            "shape mismatch from rank 0 for act(mb=7, slice=1, chunk=0): expected f64[2, 4], \
             received f32[2, 4]"
        );
        assert_eq!(
            errors[0][0],
            "shape mismatch from rank 1 for all_reduce#0: expected f32[2, 3], received f32[2, 4]"
        );
        assert_eq!(
            errors[1][3],
            "shape mismatch from rank 0 for all_reduce#0: expected f32[2, 4], received f32[2, 3]"
        );
    }
}

/// Rank 1's errors (tag, shape, dtype, all-reduce) and rank 0's all-reduce error, as text.
fn mismatches<T: Transport>(mut t: T) -> Vec<String> {
    let mut pair = Group::new(vec![0, 1]).unwrap();
    let shape_of = |r: usize| vec![2, 3 + r];
    let after = Tag::new(TagKind::Grad, 8, 0, 0).unwrap();
    match t.rank() {
        0 => {
            t.send(1, act(5), Message::from_u8(vec![1], vec![9]).unwrap())
                .unwrap();
            for mb in [6, 7] {
                let m = Message::from_f32(vec![2, 4], vec![0.5; 8]).unwrap();
                t.send(1, act(mb), m).unwrap();
            }
            t.send(1, after, Message::from_i64(vec![2], vec![-3, 4]).unwrap())
                .unwrap();
            let msg = Message::zeros(DType::F32, shape_of(0)).unwrap();
            vec![t.all_reduce_sum(&mut pair, msg).unwrap_err().to_string()]
        }
        1 => {
            let text = |e: CommError| e.to_string();
            let tag = t.recv(0, act(4)).map(drop).unwrap_err();
            let shape = t.recv_expect(0, act(6), DType::F32, &[2, 5]);
            let dtype = t.recv_expect(0, act(7), DType::F64, &[2, 4]);
            // Every mismatched message was consumed whole: the next one arrives intact.
            let next = t.recv(0, after).unwrap().into_i64().unwrap();
            assert_eq!(next, vec![-3, 4]);
            let msg = Message::zeros(DType::F32, shape_of(1)).unwrap();
            let reduce = t.all_reduce_sum(&mut pair, msg).unwrap_err();
            vec![
                text(tag),
                text(shape.unwrap_err()),
                text(dtype.unwrap_err()),
                text(reduce),
            ]
        }
        _ => Vec::new(),
    }
}

/// A receive from a rank that never sends fails after the timeout (default or per call) naming
/// the peer and the pending receive; a non-blocking one finds nothing.
pub fn silent_peer_times_out_naming_it<B: Backend>(b: &B) {
    for world in worlds(b, "silent_peer", &[2]) {
        on_mesh(b, world, SHORT, |mut t| {
            let done = Tag::user(99).unwrap();
            if t.rank() == 1 {
                // Stay alive (a dropped rank is a dead peer, another scenario) until rank 0 is done.
                t.recv_timeout(0, done, LONG).unwrap();
                return;
            }
            let tag = Tag::new(TagKind::Grad, 3, 1, 0).unwrap();
            let start = Instant::now();
            let err = t.recv(1, tag).unwrap_err();
            let waited = start.elapsed();
            assert!(waited >= SHORT && waited < SHORT + LONG / 5, "{waited:?}");
            assert_eq!(
                err.to_string(),
                "timed out after 300 ms waiting on rank 1 for recv grad(mb=3, slice=1, chunk=0) \
                 from rank 1; the peer may be stuck or running a different schedule"
            );
            let err = t.recv_timeout(1, act(0), Duration::from_millis(50));
            assert!(
                matches!(
                    err,
                    Err(CommError::Timeout {
                        peer: 1,
                        waited_ms: 50,
                        ..
                    })
                ),
                "{err:?}"
            );
            assert_eq!(t.try_recv(1, act(0)).unwrap(), None);
            t.send(1, done, Message::from_u8(vec![0], vec![]).unwrap())
                .unwrap();
        });
    }
}

/// Rank 1 sends one message to every other rank and then ends (its transport is dropped, as when
/// its thread or process ends) while they wait for a second one: they get the first, then fail
/// at once naming rank 1 and the pending receive, long before the 20 s timeout.
pub fn dead_peer_fails_the_waiting_rank_at_once<B: Backend>(b: &B) {
    for world in worlds(b, "dead_peer", &[2, 3]) {
        let timeout = Duration::from_secs(20);
        let outcomes = on_mesh(b, world, timeout, |mut t| {
            if t.rank() == 1 {
                for peer in (0..t.world_size()).filter(|&p| p != 1) {
                    t.send(peer, act(0), Message::from_u8(vec![1], vec![1]).unwrap())
                        .unwrap();
                }
                // Let the others block on their next receive before this rank goes.
                std::thread::sleep(Duration::from_millis(100));
                return None;
            }
            assert_eq!(t.recv(1, act(0)).unwrap().as_u8().unwrap(), &[1]);
            let start = Instant::now();
            let err = t.recv(1, act(1)).unwrap_err();
            Some((err, start.elapsed()))
        });
        for (rank, outcome) in outcomes.iter().enumerate().filter(|(r, _)| *r != 1) {
            let (err, waited) = outcome.as_ref().unwrap();
            assert!(
                matches!(err, CommError::PeerDisconnected { peer: 1, .. }),
                "rank {rank}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.starts_with("rank 1 disconnected during recv act(mb=1, slice=1, chunk=0)"),
                "rank {rank}: {text}"
            );
            assert!(
                *waited < Duration::from_secs(5),
                "rank {rank} waited {waited:?}"
            );
        }
    }
}

/// Bad ranks, groups, roots and dtypes are errors that name the bad value, on every rank count.
pub fn misuse_is_an_error<B: Backend>(b: &B) {
    let world = 2.min(b.max_world());
    on_mesh(b, world, SHORT, |mut t| {
        if t.rank() != 0 {
            return;
        }
        let n = t.world_size();
        let byte = || Message::from_u8(vec![1], vec![0]).unwrap();
        assert!(matches!(
            t.send(0, act(0), byte()),
            Err(CommError::SelfPeer { rank: 0 })
        ));
        let err = t.recv(n, act(0)).unwrap_err();
        assert!(
            matches!(err, CommError::BadRank { rank, .. } if rank == n),
            "{err}"
        );
        let mut too_big = Group::new(vec![0, 7]).unwrap();
        let err = t.barrier(&mut too_big).unwrap_err();
        assert!(matches!(err, CommError::BadRank { rank: 7, .. }), "{err}");
        let mut world = Group::world(n).unwrap();
        let ints = Message::from_u32(vec![1], vec![1]).unwrap();
        assert_eq!(
            t.all_reduce_sum(&mut world, ints).unwrap_err().to_string(),
            "all_reduce_sum does not support dtype u32; supported: f32, f64"
        );
        let mut alone = Group::new(vec![0]).unwrap();
        let err = t.broadcast(&mut alone, 0, None).unwrap_err();
        assert!(err.to_string().contains("root 0 must pass Some"), "{err}");
        let err = t.broadcast(&mut alone, 5, Some(byte())).unwrap_err();
        assert!(
            err.to_string().contains("broadcast root 5 is not a member"),
            "{err}"
        );
        if n >= 2 {
            let mut outsiders = Group::new(vec![1]).unwrap();
            let err = t.barrier(&mut outsiders).unwrap_err();
            assert!(matches!(err, CommError::BadGroup { rank: 0, .. }), "{err}");
            let mut pair = Group::new(vec![0, 1]).unwrap();
            let err = t.broadcast(&mut pair, 1, Some(byte())).unwrap_err();
            assert!(
                err.to_string().contains("not the broadcast root (1)"),
                "{err}"
            );
        }
    });
}

/// While rank 1 waits, a watchdog over both ranks shows rank 0's last send and rank 1's last
/// receive and pending receive; the wait then completes when rank 0 sends.
pub fn watchdog_sees_the_pending_op<B: Backend>(b: &B) {
    for world in worlds(b, "watchdog", &[2]) {
        let mut ranks = b.mesh(world, LONG);
        let watchdog = Watchdog::new(ranks.iter().map(|t| t.progress()).collect());
        let (mut a, mut waiter) = (ranks.remove(0), ranks.remove(0));
        a.send(1, act(0), Message::from_u8(vec![1], vec![7]).unwrap())
            .unwrap();
        waiter.recv(0, act(0)).unwrap();
        let (tx, dumps) = crossbeam_channel::unbounded();
        let guard = watchdog.spawn(Duration::from_millis(50), move |d| {
            let _ = tx.send(d);
        });
        let waiting = std::thread::spawn(move || waiter.recv(0, act(1)).map(drop));
        let dump = dumps.recv_timeout(LONG).unwrap();
        drop(guard);
        for line in [
            "rank 0: last completed send act(mb=0, slice=0, chunk=0) to rank 1",
            "rank 1: last completed recv act(mb=0, slice=0, chunk=0) from rank 0",
            "waiting on recv act(mb=1, slice=1, chunk=0) from rank 0",
        ] {
            assert!(dump.contains(line), "{line:?} not in\n{dump}");
        }
        assert!(dump.lines().next().unwrap().ends_with("; idle"), "{dump}");
        a.send(1, act(1), Message::from_u8(vec![0], vec![]).unwrap())
            .unwrap();
        waiting.join().unwrap().unwrap();
    }
}
