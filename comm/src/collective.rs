//! Collectives over point-to-point: ring all-reduce, broadcast, barrier.
//!
//! Built on [`Transport`] send/recv so every backend shares one implementation, one set of checks
//! and the same timeout and dead-peer behaviour. Each [`Group`] numbers its collectives; the number
//! and the op are in the tag, so members that disagree on the sequence of collectives get a tag
//! mismatch instead of silently mixing buffers.

use crate::error::{CommError, Result};
use crate::header::Header;
use crate::message::{Data, Message};
use crate::tag::{CollectiveOp, Tag};
use crate::transport::Transport;

/// A set of ranks that run collectives together, plus the count of collectives run so far.
/// Every member holds its own `Group` value built from the same ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    ranks: Vec<usize>,
    seq: u64,
}

impl Group {
    /// A group of these ranks (any order; no duplicates, not empty).
    pub fn new(mut ranks: Vec<usize>) -> Result<Group> {
        let given = ranks.clone();
        ranks.sort_unstable();
        let duplicated = ranks.windows(2).any(|w| w[0] == w[1]);
        if ranks.is_empty() || duplicated {
            return Err(CommError::InvalidArgument(format!(
                "group {given:?}: a group needs at least one rank and no rank twice"
            )));
        }
        Ok(Group { ranks, seq: 0 })
    }

    /// All ranks `0..world_size`.
    pub fn world(world_size: usize) -> Result<Group> {
        Group::new((0..world_size).collect())
    }

    /// The members, ascending.
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.ranks.len()
    }

    /// Always false: a group has at least one member.
    pub fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }

    /// Position of `rank` in the group, if a member.
    pub fn position(&self, rank: usize) -> Option<usize> {
        self.ranks.binary_search(&rank).ok()
    }

    /// Checks the caller's membership and ranks against the world; returns the caller's position
    /// and the tag of the next collective.
    fn enter<T: Transport + ?Sized>(&mut self, t: &T, op: CollectiveOp) -> Result<(usize, Tag)> {
        let (rank, world) = (t.rank(), t.world_size());
        if let Some(&bad) = self.ranks.iter().find(|&&r| r >= world) {
            return Err(CommError::BadRank {
                what: "group member",
                rank: bad,
                world_size: world,
            });
        }
        let me = self.position(rank).ok_or_else(|| CommError::BadGroup {
            ranks: self.ranks.clone(),
            rank,
            reason: format!("rank {rank} is not a member, so it cannot take part"),
        })?;
        let tag = Tag::collective(op, self.seq);
        self.seq = self.seq.wrapping_add(1);
        Ok((me, tag))
    }
}

/// Element types the reductions support.
trait Summable: bytemuck::Pod + std::ops::AddAssign {
    fn wrap(v: Vec<Self>) -> Data;
    fn unwrap(d: Data) -> Option<Vec<Self>>;
}

impl Summable for f32 {
    fn wrap(v: Vec<Self>) -> Data {
        Data::F32(v)
    }
    fn unwrap(d: Data) -> Option<Vec<Self>> {
        match d {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl Summable for f64 {
    fn wrap(v: Vec<Self>) -> Data {
        Data::F64(v)
    }
    fn unwrap(d: Data) -> Option<Vec<Self>> {
        match d {
            Data::F64(v) => Some(v),
            _ => None,
        }
    }
}

pub(crate) fn all_reduce_sum<T: Transport + ?Sized>(
    t: &mut T,
    group: &mut Group,
    msg: Message,
) -> Result<Message> {
    check_summable(&msg)?;
    let (me, tag) = group.enter(t, CollectiveOp::AllReduce)?;
    let n = group.len();
    if n == 1 {
        return Ok(msg);
    }
    let ring = Ring::of(group, me, tag);
    check_same_header(t, &ring, Header::of(&msg, tag))?;
    let (shape, data) = msg.into_parts();
    let data = match data {
        Data::F32(v) => Data::F32(ring_sum(t, &ring, v)?),
        Data::F64(v) => Data::F64(ring_sum(t, &ring, v)?),
        other => other, // Unreachable: the dtype was checked above.
    };
    Message::new(shape, data)
}

/// The dtypes a host all-reduce sums, the same on every backend. Checked before the group counts
/// the collective: a bad argument must not shift the sequence of the group's later collectives.
pub(crate) fn check_summable(msg: &Message) -> Result<()> {
    if matches!(msg.data(), Data::F32(_) | Data::F64(_)) {
        return Ok(());
    }
    Err(CommError::UnsupportedDType {
        op: "all_reduce_sum",
        dtype: msg.dtype(),
        supported: "f32, f64",
    })
}

/// Checks that every member of the group passes the same dtype and shape, as the first half of a
/// reduction whose data travels elsewhere (NCCL). Counts as one all-reduce of the group; returns
/// its tag and the member this rank heard from (named if the reduction itself then stalls).
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub(crate) fn agree_on_header<T: Transport + ?Sized>(
    t: &mut T,
    group: &mut Group,
    header: &Header,
) -> Result<(Tag, usize)> {
    let (me, tag) = group.enter(t, CollectiveOp::AllReduce)?;
    let ring = Ring::of(group, me, tag);
    if group.len() > 1 {
        let mine = Header {
            tag,
            ..header.clone()
        };
        check_same_header(t, &ring, mine)?;
    }
    Ok((tag, ring.prev))
}

/// Neighbours of this member in the group's ring.
struct Ring {
    next: usize,
    prev: usize,
    me: usize,
    n: usize,
    tag: Tag,
}

impl Ring {
    /// The ring of `group` seen from its member at position `me`.
    fn of(group: &Group, me: usize, tag: Tag) -> Ring {
        let n = group.len();
        Ring {
            next: group.ranks[(me + 1) % n],
            prev: group.ranks[(me + n - 1) % n],
            me,
            n,
            tag,
        }
    }
}

/// Passes each member's header one step round the ring; if every neighbour pair agrees, all do.
fn check_same_header<T: Transport + ?Sized>(t: &mut T, ring: &Ring, mine: Header) -> Result<()> {
    t.send(ring.next, ring.tag, mine.to_message())?;
    let theirs = Header::from_message(ring.prev, ring.tag, &t.recv(ring.prev, ring.tag)?)?;
    mine.expect_same(ring.prev, &theirs)
}

/// Ring all-reduce: reduce-scatter then all-gather, `2(n-1)` steps of `len/n` elements each, so
/// each member sends about twice its buffer whatever `n` is. Each chunk is summed in one fixed
/// order, so every member ends with identical bits.
fn ring_sum<T: Transport + ?Sized, E: Summable>(
    t: &mut T,
    ring: &Ring,
    mut v: Vec<E>,
) -> Result<Vec<E>> {
    let (n, me, len) = (ring.n, ring.me, v.len());
    let bounds = |i: usize| (i * len / n)..((i + 1) * len / n);
    for s in 0..n - 1 {
        let out = bounds((me + n - s) % n);
        let into = bounds((me + 2 * n - s - 1) % n);
        exchange(t, ring, E::wrap(v[out].to_vec()))?;
        let got = receive_chunk::<T, E>(t, ring, into.len())?;
        v[into].iter_mut().zip(got).for_each(|(a, b)| *a += b);
    }
    for s in 0..n - 1 {
        let out = bounds((me + 1 + n - s) % n);
        let into = bounds((me + n - s) % n);
        exchange(t, ring, E::wrap(v[out].to_vec()))?;
        let got = receive_chunk::<T, E>(t, ring, into.len())?;
        v[into].copy_from_slice(&got);
    }
    Ok(v)
}

fn exchange<T: Transport + ?Sized>(t: &mut T, ring: &Ring, chunk: Data) -> Result<()> {
    t.send(ring.next, ring.tag, Message::vector(chunk))
}

fn receive_chunk<T: Transport + ?Sized, E: Summable>(
    t: &mut T,
    ring: &Ring,
    len: usize,
) -> Result<Vec<E>> {
    let msg = t.recv(ring.prev, ring.tag)?;
    let received = msg.describe();
    match E::unwrap(msg.into_parts().1) {
        Some(v) if v.len() == len => Ok(v),
        _ => Err(CommError::ShapeMismatch {
            peer: ring.prev,
            tag: ring.tag,
            expected: format!("a chunk of {len} elements"),
            received,
        }),
    }
}

pub(crate) fn broadcast<T: Transport + ?Sized>(
    t: &mut T,
    group: &mut Group,
    root: usize,
    msg: Option<Message>,
) -> Result<Message> {
    let (_, tag) = group.enter(t, CollectiveOp::Broadcast)?;
    if group.position(root).is_none() {
        return Err(CommError::BadGroup {
            ranks: group.ranks.clone(),
            rank: t.rank(),
            reason: format!("broadcast root {root} is not a member"),
        });
    }
    let is_root = t.rank() == root;
    match (is_root, msg) {
        (true, Some(msg)) => {
            // Linear fan-out: fine for the small groups pipeline/data parallelism uses here.
            for &peer in group.ranks.iter().filter(|&&r| r != root) {
                t.send(peer, tag, msg.clone())?;
            }
            Ok(msg)
        }
        (false, None) => t.recv(root, tag),
        (true, None) => Err(CommError::InvalidArgument(format!(
            "broadcast root {root} must pass Some(message)"
        ))),
        (false, Some(_)) => Err(CommError::InvalidArgument(format!(
            "rank {} is not the broadcast root ({root}) and must pass None",
            t.rank()
        ))),
    }
}

pub(crate) fn barrier<T: Transport + ?Sized>(t: &mut T, group: &mut Group) -> Result<()> {
    let (me, tag) = group.enter(t, CollectiveOp::Barrier)?;
    let leader = group.ranks[0];
    let token = || Message::from_u8(vec![0], Vec::new());
    if me == 0 {
        let others: Vec<usize> = group.ranks[1..].to_vec();
        for &peer in &others {
            t.recv(peer, tag)?;
        }
        for &peer in &others {
            t.send(peer, tag, token()?)?;
        }
    } else {
        t.send(leader, tag, token()?)?;
        t.recv(leader, tag)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::DType;
    use crate::{CommOptions, LocalTransport};

    #[test]
    fn header_agreement_names_the_disagreeing_neighbour() {
        let ranks = LocalTransport::mesh(3, CommOptions::default()).unwrap();
        let outcomes: Vec<Result<()>> = std::thread::scope(|s| {
            let hs: Vec<_> = ranks
                .into_iter()
                .map(|mut t| {
                    s.spawn(move || {
                        let mut g = Group::world(3).unwrap();
                        let h = Header {
                            tag: Tag::from_raw(0),
                            dtype: DType::BF16,
                            shape: vec![4],
                        };
                        // Equal headers agree (ranks 0 and 1 only), and count as a collective.
                        let mut pair = Group::new(vec![0, 1]).unwrap();
                        if t.rank() < 2 {
                            let (tag, heard) = agree_on_header(&mut t, &mut pair, &h)?;
                            assert_eq!(pair.seq, 1);
                            assert_eq!(
                                (tag, heard),
                                (Tag::collective(CollectiveOp::AllReduce, 0), 1 - t.rank())
                            );
                        }
                        let len = if t.rank() == 2 { 5 } else { 4 };
                        agree_on_header(
                            &mut t,
                            &mut g,
                            &Header {
                                shape: vec![len],
                                ..h
                            },
                        )
                        .map(drop)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Ring 0 -> 1 -> 2 -> 0: rank 1 hears rank 0 (same), rank 2 hears rank 1, rank 0 hears 2.
        assert!(outcomes[1].is_ok(), "{:?}", outcomes[1]);
        let e2 = outcomes[2].as_ref().unwrap_err().to_string();
        assert_eq!(
            e2,
            "shape mismatch from rank 1 for all_reduce#0: expected bf16[5], received bf16[4]"
        );
        let e0 = outcomes[0].as_ref().unwrap_err().to_string();
        assert_eq!(
            e0,
            "shape mismatch from rank 2 for all_reduce#0: expected bf16[4], received bf16[5]"
        );
    }

    #[test]
    fn groups_are_sorted_and_checked() {
        let g = Group::new(vec![3, 1, 2]).unwrap();
        assert_eq!(g.ranks(), &[1, 2, 3]);
        assert_eq!(g.position(2), Some(1));
        assert_eq!(g.position(0), None);
        assert!(Group::new(vec![]).is_err());
        let err = Group::new(vec![1, 1]).unwrap_err();
        assert!(err.to_string().contains("no rank twice"), "{err}");
    }
}
