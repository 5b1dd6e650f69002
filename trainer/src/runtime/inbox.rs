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

use super::worker::vocab_sends;

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

    /// Files a message received in arrival order (a run with attention exchanges): an
    /// exchange's message is kept by its tag, any other must be the next one `peer` sends in
    /// the schedule's order.
    pub fn file(&mut self, peer: usize, tag: Tag, t: Tensor) -> Result<()> {
        let exchange = matches!(
            tag.unit(),
            Some((TagKind::ExchangeAsk | TagKind::ExchangeAnswer, ..))
        );
        if !exchange {
            let next = self.expected.get_mut(&peer).and_then(VecDeque::pop_front);
            if next != Some(tag) {
                fail!(
                    Runtime,
                    "stage {peer} sent {tag} where the schedule has it send {}",
                    next.map_or("nothing more".to_string(), |t| t.to_string())
                );
            }
        }
        self.early.insert((peer, tag), t);
        Ok(())
    }

    /// Whether `peer` has messages still to send in the schedule's order.
    pub fn expects(&self, peer: usize) -> bool {
        self.expected.get(&peer).is_some_and(|q| !q.is_empty())
    }

    /// Whether `tag` from `peer` is filed.
    pub fn has(&self, peer: usize, tag: Tag) -> bool {
        self.early.contains_key(&(peer, tag))
    }

    /// The filed message `tag` from `peer`, if it is there.
    pub fn take(&mut self, peer: usize, tag: Tag) -> Option<Tensor> {
        self.early.remove(&(peer, tag))
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

/// For `stage`, the (peer, tag) of every message sent to it, in each sender's program order.
/// An attention exchange's messages have no order fixed in advance (a partner answers when a
/// request arrives) and are not listed: they are filed by tag ([`Inbox::file`]).
pub(crate) fn incoming_order(
    schedule: &Schedule,
    stage: usize,
    rank_offset: usize,
) -> Result<Vec<(usize, Tag)>> {
    let p = schedule.config.stages;
    let mut order = Vec::new();
    for (sender, program) in schedule.actions.iter().enumerate() {
        for a in program.iter() {
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
