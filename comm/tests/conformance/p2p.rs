//! Point-to-point scenarios: per-(peer, tag) order of many messages, a ring in which every rank
//! sends before it receives, random round trips driven by proptest, and the non-blocking calls.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use seqpipe_comm::{Message, Tag, TagKind, Transport};

use super::{on_mesh, worlds, Backend, LONG};
use crate::common::{act, random_message};

/// Messages per (sender, receiver) in each phase of [`ordered_delivery_per_peer_and_tag`].
const PER_PAIR: u32 = 30;

/// The tag of the `i`th message of a pair: alternates act/grad and walks micro-batches, slices
/// and chunks, so order is checked across changing tags, not within one.
fn nth_tag(i: u32) -> Tag {
    let kind = if i % 2 == 0 {
        TagKind::Act
    } else {
        TagKind::Grad
    };
    Tag::new(kind, i / 2, i % 3, i % 5).unwrap()
}

/// The seed of the `i`th message from `src` to `dst`: every message differs.
fn seed(src: usize, dst: usize, i: u32) -> u64 {
    (src as u64) << 48 | (dst as u64) << 32 | u64::from(i)
}

/// In turn, each rank sends [`PER_PAIR`] messages to every other rank before any of them
/// receives; then every rank but 0 sends to rank 0 at once and rank 0 takes them round-robin, so
/// one peer's messages wait while another's are read. Every message must arrive whole, in order,
/// with its tag.
pub fn ordered_delivery_per_peer_and_tag<B: Backend>(b: &B) {
    for world in worlds(b, "ordered_delivery", &[2, 3]) {
        let checked = on_mesh(b, world, LONG, |mut t| ordered_phases(&mut t));
        let from_phases = PER_PAIR as usize * (world - 1);
        let mut want = vec![from_phases; world];
        want[0] += from_phases;
        assert_eq!(checked, want, "world {world}: messages checked per rank");
    }
}

fn ordered_phases<T: Transport>(t: &mut T) -> usize {
    let (me, n) = (t.rank(), t.world_size());
    let mut checked = 0;
    for sender in 0..n {
        for i in 0..PER_PAIR {
            if sender == me {
                for dst in (0..n).filter(|&d| d != me) {
                    // Handles are dropped: completion shows up at the receiver.
                    t.isend(dst, nth_tag(i), random_message(seed(me, dst, i)))
                        .unwrap();
                }
            } else {
                let got = t.recv(sender, nth_tag(i)).unwrap();
                let want = random_message(seed(sender, me, i));
                assert_eq!(got, want, "rank {me}: message {i} from rank {sender}");
                checked += 1;
            }
        }
    }
    for i in PER_PAIR..2 * PER_PAIR {
        if me == 0 {
            for src in 1..n {
                let got = t.recv(src, nth_tag(i)).unwrap();
                assert_eq!(
                    got,
                    random_message(seed(src, 0, i)),
                    "fan-in {i} from {src}"
                );
                checked += 1;
            }
        } else {
            t.send(0, nth_tag(i), random_message(seed(me, 0, i)))
                .unwrap();
        }
    }
    checked
}

/// Every rank sends to the next and then receives from the previous, twenty times, messages of
/// every dtype and shape. A send that waited for its receiver would deadlock here.
pub fn ring_exchange_of_varying_shapes<B: Backend>(b: &B) {
    for world in worlds(b, "ring_exchange", &[2, 3, 4]) {
        let bytes = on_mesh(b, world, LONG, |mut t| {
            let (r, n) = (t.rank(), t.world_size());
            let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
            let mut bytes = 0;
            for i in 0..20 {
                t.send(next, act(i), random_message(seed(r, next, i)))
                    .unwrap();
                let got = t.recv(prev, act(i)).unwrap();
                assert_eq!(got, random_message(seed(prev, r, i)), "rank {r} round {i}");
                bytes += got.size_in_bytes();
            }
            bytes
        });
        assert!(bytes.iter().all(|&b| b > 0), "world {world}: {bytes:?}");
    }
}

/// Round trips each proptest case makes.
const ROUNDS: u32 = 6;
/// Proptest cases.
const CASES: u32 = 16;

/// Proptest draws seeds; rank 0 sends each seed's random messages (any dtype, any shape, empty
/// ones included) and rank 1 echoes them; every echo must equal what was sent. One mesh serves
/// every case, so slow-to-build backends cost one setup.
pub fn random_messages_round_trip<B: Backend>(b: &B) {
    for world in worlds(b, "random_round_trip", &[2]) {
        let verified = on_mesh(b, world, LONG, |t| match t.rank() {
            0 => pings(t),
            _ => echo(t),
        });
        assert_eq!(verified[0], (CASES * ROUNDS) as usize);
    }
}

fn control_tag() -> Tag {
    Tag::user(1).unwrap()
}

fn ping_tag(round: u32) -> Tag {
    Tag::user(1000 + u64::from(round)).unwrap()
}

fn pong_tag(round: u32) -> Tag {
    Tag::user(2000 + u64::from(round)).unwrap()
}

/// Rank 0: runs the property, then tells the echo to stop (an empty control message).
fn pings<T: Transport>(t: T) -> usize {
    let t = RefCell::new(t);
    let verified = Cell::new(0);
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    let outcome = TestRunner::new(config).run(&any::<u64>(), |seed| {
        let mut t = t.borrow_mut();
        let fail = |e: seqpipe_comm::CommError| TestCaseError::fail(e.to_string());
        for round in 0..ROUNDS {
            let go = Message::from_u32(vec![1], vec![round]).unwrap();
            t.send(1, control_tag(), go).map_err(fail)?;
            let sent = random_message(seed.wrapping_add(u64::from(round)));
            t.send(1, ping_tag(round), sent.clone()).map_err(fail)?;
            let back = t.recv(1, pong_tag(round)).map_err(fail)?;
            prop_assert_eq!(&back, &sent, "round {}", round);
            verified.set(verified.get() + 1);
        }
        Ok(())
    });
    let stop = Message::from_u32(vec![0], vec![]).unwrap();
    t.borrow_mut().send(1, control_tag(), stop).unwrap();
    outcome.unwrap();
    // Shrinking reruns cases after a failure; without one, each case ran once.
    verified.get()
}

/// Rank 1: echoes each ping until told to stop.
fn echo<T: Transport>(mut t: T) -> usize {
    loop {
        let control = t.recv(0, control_tag()).unwrap().into_u32().unwrap();
        let Some(&round) = control.first() else {
            return 0;
        };
        let m = t.recv(0, ping_tag(round)).unwrap();
        t.send(0, pong_tag(round), m).unwrap();
    }
}

/// `try_recv` says `None` while nothing has been sent, and the message once it has arrived;
/// `isend` returns a handle that completes without the receiver doing anything (rank 1 only
/// starts polling after rank 0's handle is done and rank 0 has told it so through another rank
/// when there is one). A 4 MiB payload checks that big messages arrive whole.
pub fn isend_and_try_recv_do_not_block<B: Backend>(b: &B) {
    for world in worlds(b, "isend_and_try_recv", &[2, 3]) {
        let polled = on_mesh(b, world, LONG, nonblocking);
        assert!(polled[1] >= 1, "world {world}: rank 1 polled {polled:?}");
    }
}

/// `try_recv_any` hands over the next message from a peer whatever its tag, in the peer's
/// sending order, and `None` when nothing has come; a backend that cannot says so by name.
pub fn try_recv_any_takes_whatever_came_next<B: Backend>(b: &B) {
    let arrival = b.receives_in_arrival_order();
    on_mesh(b, 2, LONG, |mut t| {
        let tags = [act(7), nth_tag(3), act(1)];
        match t.rank() {
            0 => {
                for (i, &tag) in tags.iter().enumerate() {
                    t.send(1, tag, random_message(i as u64)).unwrap();
                }
                t.recv(1, act(9)).unwrap();
            }
            _ if !arrival => {
                let e = t.try_recv_any(0).unwrap_err().to_string();
                assert!(e.contains("arrival order"), "{e}");
                for (i, &tag) in tags.iter().enumerate() {
                    assert_eq!(t.recv(0, tag).unwrap(), random_message(i as u64));
                }
                t.send(0, act(9), random_message(9)).unwrap();
            }
            _ => {
                let deadline = Instant::now() + LONG;
                let mut got = Vec::new();
                while got.len() < tags.len() && Instant::now() < deadline {
                    match t.try_recv_any(0).unwrap() {
                        Some(m) => got.push(m),
                        None => std::thread::yield_now(),
                    }
                }
                let sent: Vec<(Tag, Message)> = (0..tags.len())
                    .map(|i| (tags[i], random_message(i as u64)))
                    .collect();
                assert_eq!(got, sent);
                assert_eq!(t.try_recv_any(0).unwrap(), None, "nothing more was sent");
                t.send(0, act(9), random_message(9)).unwrap();
            }
        }
    });
}

fn big_message() -> Message {
    let v: Vec<f32> = (0..1 << 20).map(|i| (i % 4099) as f32 - 7.5).collect();
    Message::from_f32(vec![1024, 1024], v).unwrap()
}

/// Returns how many times rank 1 polled before the message was there.
fn nonblocking<T: Transport>(mut t: T) -> usize {
    let (ready, sent, ack) = (act(1), act(2), act(3));
    let empty = || Message::from_u8(vec![0], vec![]).unwrap();
    let witness = (t.world_size() > 2).then_some(2);
    match t.rank() {
        0 => {
            t.recv(1, ready).unwrap();
            let handle = t.isend(1, act(0), big_message()).unwrap();
            handle.wait(LONG).unwrap();
            if let Some(w) = witness {
                t.send(w, sent, empty()).unwrap();
            }
            t.recv(1, ack).unwrap();
            0
        }
        1 => {
            assert_eq!(t.try_recv(0, act(0)).unwrap(), None, "nothing sent yet");
            t.send(0, ready, empty()).unwrap();
            if let Some(w) = witness {
                // Rank 0 reported its handle done before this rank asked for anything.
                t.recv(w, sent).unwrap();
            }
            let deadline = Instant::now() + LONG;
            let mut polls = 0;
            let got = loop {
                polls += 1;
                if let Some(m) = t.try_recv(0, act(0)).unwrap() {
                    break m;
                }
                assert!(Instant::now() < deadline, "the message never arrived");
                std::thread::sleep(Duration::from_millis(1));
            };
            assert_eq!(got, big_message());
            t.send(0, ack, empty()).unwrap();
            polls
        }
        _ => {
            t.recv(0, sent).unwrap();
            t.send(1, sent, empty()).unwrap();
            0
        }
    }
}
