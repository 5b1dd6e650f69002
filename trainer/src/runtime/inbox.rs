//! Receiving in each peer's send order, and the message tags both ends agree on.
//!
//! A transport link is FIFO and checks tags, but a stage's program may want a peer's messages in
//! another order than the peer sent them (in interleaved schedules one link carries activations
//! and gradients of different chunks). Each stage knows, from the lowered schedule, the exact
//! order in which every peer sends to it; the inbox receives in that order and keeps messages that
//! arrive before they are wanted, as tensors (a GPU's stay on it). This never deadlocks where the
//! schedule does not: everything a peer sent before the wanted message has been sent already.

use crate::error::{fail, Result};
use std::collections::{HashMap, VecDeque};

use candle_core::Tensor;
use seqpipe_comm::{Tag, TagKind};
use seqpipe_schedule::{Action, Op, Schedule};

use super::worker::{exchange_sends, vocab_sends};

/// Per-peer expected send order plus messages received early.
#[derive(Debug, Default)]
pub struct Inbox {
    expected: HashMap<usize, VecDeque<Tag>>,
    early: HashMap<(usize, Tag), Tensor>,
}

impl Inbox {
    /// An inbox expecting `order[i] = (peer, tag)` in the order each peer sends them.
    pub fn new(order: impl IntoIterator<Item = (usize, Tag)>) -> Self {
        let mut expected: HashMap<usize, VecDeque<Tag>> = HashMap::new();
        for (peer, tag) in order {
            expected.entry(peer).or_default().push_back(tag);
        }
        Inbox {
            expected,
            early: HashMap::new(),
        }
    }

    /// The tensor `tag` from `peer`, receiving (with `receive(peer, tag)`) and keeping earlier
    /// ones from that peer; `rank` names this stage in errors.
    pub fn recv(
        &mut self,
        rank: usize,
        peer: usize,
        tag: Tag,
        mut receive: impl FnMut(usize, Tag) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let Some(msg) = self.early.remove(&(peer, tag)) {
            return Ok(msg);
        }
        loop {
            let Some(next) = self.expected.get_mut(&peer).and_then(VecDeque::pop_front) else {
                fail!(
                    Runtime,
                    "stage {rank} waits for {tag} from stage {peer}, which the schedule never sends"
                );
            };
            let msg = receive(peer, next)?;
            if next == tag {
                return Ok(msg);
            }
            self.early.insert((peer, next), msg);
        }
    }

    /// [`Inbox::recv`] without waiting: the tensor `tag` from `peer` if it, and everything the
    /// peer sent before it, has arrived (`try_receive` returns `None` for a message not there).
    pub fn try_recv(
        &mut self,
        peer: usize,
        tag: Tag,
        mut try_receive: impl FnMut(usize, Tag) -> Result<Option<Tensor>>,
    ) -> Result<Option<Tensor>> {
        if let Some(msg) = self.early.remove(&(peer, tag)) {
            return Ok(Some(msg));
        }
        loop {
            let Some(&next) = self.expected.get(&peer).and_then(VecDeque::front) else {
                return Ok(None);
            };
            let Some(msg) = try_receive(peer, next)? else {
                return Ok(None);
            };
            self.expected.get_mut(&peer).and_then(VecDeque::pop_front);
            if next == tag {
                return Ok(Some(msg));
            }
            self.early.insert((peer, next), msg);
        }
    }

    /// Keeps a received tensor until [`Inbox::recv`] asks for it.
    pub fn keep(&mut self, peer: usize, tag: Tag, t: Tensor) {
        self.early.insert((peer, tag), t);
    }

    /// Bytes of tensors received early and not yet used.
    pub fn held_bytes(&self) -> usize {
        self.early.values().map(crate::model::layer::bytes).sum()
    }
}

/// The tag of unit `a`'s message of `kind` to or from virtual stage `vstage`.
pub(crate) fn message_tag(kind: TagKind, a: &Action, vstage: usize) -> Result<Tag> {
    Ok(Tag::new(kind, a.mb.0, a.slice.0, vstage as u32)?)
}

/// For `stage`, the (peer, tag) of every message sent to it, in each sender's program order;
/// an attention exchange runs over `layers` layers (every chunk's count).
pub(crate) fn incoming_order(
    schedule: &Schedule,
    stage: usize,
    rank_offset: usize,
    layers: usize,
) -> Result<Vec<(usize, Tag)>> {
    let p = schedule.config.stages;
    let mut order = Vec::new();
    for (sender, program) in schedule.actions.iter().enumerate() {
        let mut exchanges = 0u32;
        for a in program.iter() {
            if a.pair.is_some_and(|pair| pair.peer.index() == stage) {
                for (kind, call, part) in exchange_sends(a, layers) {
                    order.push((sender + rank_offset, Tag::new(kind, exchanges, call, part)?));
                }
                exchanges += 1;
            }
            if !(a.op.is_send() || a.op.is_vocab()) {
                continue;
            }
            if a.op.is_vocab() {
                for (to, kind) in vocab_sends(a.op, sender, p as usize) {
                    if to == stage {
                        order.push((sender + rank_offset, message_tag(kind, a, 0)?));
                    }
                }
                continue;
            }
            if schedule.peer(a).map(|s| s.index()) != Some(stage) {
                continue;
            }
            let k = a.virtual_stage(p).index();
            let (kind, to) = if a.op == Op::SendAct {
                (TagKind::Act, k + 1)
            } else {
                (TagKind::Grad, k - 1)
            };
            order.push((sender + rank_offset, message_tag(kind, a, to)?));
        }
    }
    Ok(order)
}
