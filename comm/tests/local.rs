//! In-process backend: the conformance suite on `LocalTransport` (as itself and behind
//! `Box<dyn Transport>`, which must forward every method), plus what only channels promise:
//! a message moves without a copy, and a send to a dropped rank fails at once.

mod common;
#[macro_use]
mod conformance;

use std::time::Duration;

use conformance::Backend;
use seqpipe_comm::{CommError, CommOptions, LocalTransport, Message, Transport};

/// Ranks as threads over channels.
struct Local;

impl Backend for Local {
    type T = LocalTransport;
    fn name(&self) -> &'static str {
        "local"
    }
    fn max_world(&self) -> usize {
        usize::MAX
    }
    fn mesh(&self, world: usize, timeout: Duration) -> Vec<LocalTransport> {
        LocalTransport::mesh(world, CommOptions::with_timeout(timeout)).unwrap()
    }
}

/// The same ranks, each behind a `Box<dyn Transport>`, as the trainer holds them.
struct Boxed;

impl Backend for Boxed {
    type T = Box<dyn Transport>;
    fn name(&self) -> &'static str {
        "local (boxed)"
    }
    fn max_world(&self) -> usize {
        usize::MAX
    }
    fn mesh(&self, world: usize, timeout: Duration) -> Vec<Box<dyn Transport>> {
        let boxed = |t: LocalTransport| Box::new(t) as Box<dyn Transport>;
        Local.mesh(world, timeout).into_iter().map(boxed).collect()
    }
}

mod unboxed {
    with_scenarios!(scenario_tests!(super::Local));
}

mod boxed {
    with_scenarios!(scenario_tests!(super::Boxed));
}

#[test]
fn messages_move_without_copy() {
    let mut ranks = Local.mesh(2, conformance::LONG);
    let (mut a, mut b) = (ranks.remove(0), ranks.remove(0));
    let v = vec![1.5f32; 1 << 16];
    let ptr = v.as_ptr();
    a.send(
        1,
        common::act(0),
        Message::from_f32(vec![1 << 16], v).unwrap(),
    )
    .unwrap();
    let received = b.recv(0, common::act(0)).unwrap().into_f32().unwrap();
    assert_eq!(received.as_ptr(), ptr);
}

#[test]
fn a_send_to_a_dropped_rank_fails_at_once() {
    let mut ranks = Local.mesh(2, conformance::LONG);
    let (mut a, b) = (ranks.remove(0), ranks.remove(0));
    drop(b);
    let err = a
        .send(
            1,
            common::act(0),
            Message::from_u8(vec![0], vec![]).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(err, CommError::PeerDisconnected { peer: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("rank 1 disconnected during send act(mb=0"),
        "{err}"
    );
}
