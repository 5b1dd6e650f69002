//! Collective scenarios: all-reduce against a serial reference (f32 and f64, several shapes,
//! whole world and sub-groups), broadcast from every kind of root, and barriers that really wait.

use std::time::{Duration, Instant};

use seqpipe_comm::{CommError, Group, Message, Transport};

use super::{on_mesh, worlds, Backend, LONG, SHORT};
use crate::common::{random_message, Rng};

/// Element counts reduced in every world (0: an empty buffer must work too).
const LENGTHS: [usize; 4] = [0, 1, 7, 1000];

/// Integer-valued f32 contributions of `rank`: their sums are exact in any order.
fn ints(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + rank * 13) % 101) as f32 - 50.0)
        .collect()
}

/// Random f64 contributions of `rank`, in [-500, 500).
fn floats(rank: usize, len: usize) -> Vec<f64> {
    let mut g = Rng::new(rank as u64 + 99);
    (0..len)
        .map(|_| (g.next_u64() % 1_000_000) as f64 / 1000.0 - 500.0)
        .collect()
}

/// The sub-groups reduced over in worlds of 3 or more: even ranks and odd ranks (two disjoint
/// groups at once), then every rank but 0.
fn sub_groups(world: usize) -> Vec<Vec<usize>> {
    let parity = |p: usize| (0..world).filter(|r| r % 2 == p).collect();
    vec![parity(0), parity(1), (1..world).collect()]
}

/// What one rank got back.
struct RankSums {
    /// Per entry of [`LENGTHS`]: the world's f32 and f64 sums.
    world: Vec<(Vec<f32>, Vec<f64>)>,
    /// Per sub-group: its f64 sum, if this rank is a member.
    groups: Vec<Option<Vec<f64>>>,
}

/// In worlds of 1 to 4: f32 sums equal the serial sum exactly and f64 sums within rounding, for
/// 1-D and 2-D shapes, over the world and over sub-groups. Every member of a group gets the same
/// bits.
pub fn all_reduce_matches_the_reference<B: Backend>(b: &B) {
    for world in worlds(b, "all_reduce", &[1, 2, 3, 4]) {
        let results = on_mesh(b, world, LONG, reduce_everything);
        for i in 0..LENGTHS.len() {
            let sums: Vec<_> = results.iter().map(|r| &r.world[i]).collect();
            assert!(
                sums.windows(2).all(|w| w[0] == w[1]),
                "world {world}: ranks differ"
            );
        }
        for (g, members) in sub_groups(world).iter().enumerate().filter(|_| world >= 3) {
            let sums: Vec<_> = members.iter().map(|&r| &results[r].groups[g]).collect();
            assert!(sums.iter().all(|s| s.is_some()), "group {members:?}");
            assert!(
                sums.windows(2).all(|w| w[0] == w[1]),
                "group {members:?} differs"
            );
        }
    }
}

fn reduce_everything<T: Transport>(mut t: T) -> RankSums {
    let (r, n) = (t.rank(), t.world_size());
    let everyone: Vec<usize> = (0..n).collect();
    let mut world = Group::world(n).unwrap();
    let mut out = RankSums {
        world: Vec::new(),
        groups: Vec::new(),
    };
    for len in LENGTHS {
        let shape = match len {
            0 | 1 | 7 => vec![len],
            _ => vec![2, len / 2],
        };
        let f32_msg = Message::from_f32(shape.clone(), ints(r, len)).unwrap();
        let got = t.all_reduce_sum(&mut world, f32_msg).unwrap();
        assert_eq!(got.shape(), &shape[..]);
        let f32_sum = got.into_f32().unwrap();
        let want: Vec<f32> = (0..len)
            .map(|i| everyone.iter().map(|&k| ints(k, len)[i]).sum())
            .collect();
        assert_eq!(
            f32_sum, want,
            "rank {r} len {len}: integer-valued sums are exact"
        );
        let f64_sum = reduce_f64(&mut t, &mut world, len, &everyone);
        out.world.push((f32_sum, f64_sum));
    }
    for members in sub_groups(n).into_iter().filter(|_| n >= 3) {
        let sum = members.contains(&r).then(|| {
            let mut g = Group::new(members.clone()).unwrap();
            reduce_f64(&mut t, &mut g, 1000, &members)
        });
        out.groups.push(sum);
    }
    out
}

/// All-reduces this rank's [`floats`] over `group` and checks the sum against a serial one.
fn reduce_f64<T: Transport>(
    t: &mut T,
    group: &mut Group,
    len: usize,
    members: &[usize],
) -> Vec<f64> {
    let r = t.rank();
    let got = t
        .all_reduce_sum(group, Message::from_f64(vec![len], floats(r, len)).unwrap())
        .unwrap()
        .into_f64()
        .unwrap();
    assert_eq!(got.len(), len);
    for (i, s) in got.iter().enumerate() {
        let serial: f64 = members.iter().map(|&k| floats(k, len)[i]).sum();
        let tolerance = 1e-12 * 500.0 * members.len() as f64;
        assert!(
            (s - serial).abs() <= tolerance,
            "rank {r} [{i}]: {s} vs {serial}"
        );
    }
    got
}

/// Every member gets the root's message (any dtype and shape), for root 0, the last rank and a
/// middle one, then within a sub-group whose root is not rank 0.
pub fn broadcast_reaches_every_member<B: Backend>(b: &B) {
    for world in worlds(b, "broadcast", &[1, 2, 3]) {
        let received = on_mesh(b, world, LONG, |mut t| {
            let (r, n) = (t.rank(), t.world_size());
            let mut world = Group::world(n).unwrap();
            let mut got = Vec::new();
            for (k, root) in [0, n - 1, n / 2].into_iter().enumerate() {
                let payload = (r == root).then(|| random_message(700 + k as u64));
                got.push(t.broadcast(&mut world, root, payload).unwrap());
            }
            if n >= 3 {
                let mut pair = Group::new(vec![1, 2]).unwrap();
                if r >= 1 {
                    let payload = (r == 2).then(|| random_message(799));
                    got.push(t.broadcast(&mut pair, 2, payload).unwrap());
                }
            }
            got
        });
        for (r, got) in received.iter().enumerate() {
            let mut want: Vec<Message> = (0..3).map(|k| random_message(700 + k)).collect();
            if world >= 3 && r >= 1 {
                want.push(random_message(799));
            }
            assert_eq!(got, &want, "world {world} rank {r}");
        }
    }
}

/// Nobody leaves a barrier before the last member has entered it (each rank enters later than
/// the one before), over the world and over a sub-group; a member that never comes makes the
/// others time out naming it.
pub fn barrier_waits_for_every_member<B: Backend>(b: &B) {
    for world in worlds(b, "barrier", &[1, 2, 3]) {
        let times = on_mesh(b, world, LONG, |mut t| {
            let (r, n) = (t.rank(), t.world_size());
            let mut spans = Vec::new();
            let mut world = Group::world(n).unwrap();
            spans.push(Some(enter_late(&mut t, &mut world)));
            let mut ends = Group::new(if n > 1 { vec![0, n - 1] } else { vec![0] }).unwrap();
            spans.push((r == 0 || r == n - 1).then(|| enter_late(&mut t, &mut ends)));
            spans
        });
        for barrier in 0..2 {
            let spans: Vec<(Instant, Instant)> = times.iter().filter_map(|s| s[barrier]).collect();
            let last_in = spans.iter().map(|s| s.0).max().unwrap();
            let first_out = spans.iter().map(|s| s.1).min().unwrap();
            assert!(
                first_out >= last_in,
                "world {world} barrier {barrier}: left early"
            );
        }
    }
    for world in worlds(b, "barrier_timeout", &[2]) {
        on_mesh(b, world, SHORT, |mut t| {
            let done = seqpipe_comm::Tag::user(98).unwrap();
            if t.rank() == 1 {
                t.recv_timeout(0, done, LONG).unwrap();
                return;
            }
            let err = t.barrier(&mut Group::world(world).unwrap()).unwrap_err();
            assert!(matches!(err, CommError::Timeout { peer: 1, .. }), "{err}");
            assert!(
                err.to_string()
                    .contains("waiting on rank 1 for recv barrier#0"),
                "{err}"
            );
            t.send(1, done, Message::from_u8(vec![0], vec![]).unwrap())
                .unwrap();
        });
    }
}

/// Sleeps in proportion to the rank, then runs the barrier; returns (entered, left).
fn enter_late<T: Transport>(t: &mut T, group: &mut Group) -> (Instant, Instant) {
    std::thread::sleep(Duration::from_millis(20 * t.rank() as u64));
    let entered = Instant::now();
    t.barrier(group).unwrap();
    (entered, Instant::now())
}
