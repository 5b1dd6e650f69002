//! The light side of SlimPipe's attention exchange: a stage answers its partners' requests
//! whenever they have arrived, not at one point of its program.
//!
//! Each light mark of the program (a compute paired with `head == 0`) owes its heavy partner one
//! answer per layer. The stage answers every request whose parts are all in, between the layers
//! of whatever it computes, while it waits for any message, and at the end of the iteration. So a
//! heavy side waits at most for one of its partner's layers, whatever the partner is doing, and
//! partners need not run at the same time: the pairs of a step are the paper's lock-step ones
//! (`seqpipe_schedule::insert_exchange`), and no pair can add a wait the schedule lacks.
//!
//! An answer is counted (score entries) against the light mark it belongs to, the step of the
//! schedule the pass levelled, whenever it is computed.

use std::collections::HashMap;

use candle_core::Tensor;
use seqpipe_comm::{Tag, TagKind};
use seqpipe_kernels::{attention_backward_unrounded, attention_forward, AttentionOptions, Mask};
use seqpipe_schedule::Action;

use super::link::Link;
use crate::error::{Error, Result};

/// Parts the heavy side sends per layer: forward (q, K head, V head), backward (those plus out,
/// lse, dOut).
pub(super) const ASK_PARTS: [u32; 2] = [3, 6];
/// Parts the light side answers per layer: forward (out, lse), backward (dQ, dK, dV).
pub(super) const ANSWER_PARTS: [u32; 2] = [2, 3];

/// The tag of `part` of layer `call` of an exchange: `seq` numbers the exchanges of one heavy
/// stage with one light stage in one direction ([`exchange_seq`]).
pub(super) fn exchange_tag(kind: TagKind, seq: u32, call: u32, part: u32) -> Result<Tag> {
    Ok(Tag::new(kind, seq, call, part)?)
}

/// The tag number of the `n`-th exchange, forward or `backward`, of one heavy stage with one
/// light stage: both sides count their marks of that kind with that peer in program order.
pub(super) fn exchange_seq(n: u32, backward: bool) -> u32 {
    2 * n + u32::from(backward)
}

/// One light mark's answers.
#[derive(Debug)]
struct Owed {
    /// The heavy partner (stage of this replica).
    peer: usize,
    seq: u32,
    backward: bool,
    /// The light mark's position in the program.
    position: usize,
    answered: u32,
    /// Score entries computed for the partner.
    served: u64,
}

/// What a stage owes its exchange partners in one iteration.
#[derive(Debug)]
pub(super) struct Service {
    owed: Vec<Owed>,
    /// Requests per exchange: the layers of a chunk (every virtual stage has as many).
    layers: u32,
    opts: AttentionOptions,
}

impl Service {
    /// The answers `program`'s light marks owe, `layers` per mark.
    pub fn new(program: &[Action], layers: u32, opts: AttentionOptions) -> Self {
        let mut count: HashMap<(usize, bool), u32> = HashMap::new();
        let mut owed = Vec::new();
        for (position, a) in program.iter().enumerate() {
            let Some(pair) = a.pair.filter(|p| p.head == 0) else {
                continue;
            };
            let peer = pair.peer.index();
            let n = count.entry((peer, pair.backward)).or_default();
            owed.push(Owed {
                peer,
                seq: exchange_seq(*n, pair.backward),
                backward: pair.backward,
                position,
                answered: 0,
                served: 0,
            });
            *n += 1;
        }
        Service {
            owed,
            layers,
            opts: AttentionOptions {
                mask: Mask::None,
                ..opts
            },
        }
    }

    /// Whether an answer is still owed.
    pub fn owes(&self) -> bool {
        self.owed.iter().any(|o| o.answered < self.layers)
    }

    /// Whether stage `peer` has requests still to answer.
    pub fn asks_from(&self, peer: usize) -> bool {
        self.owed
            .iter()
            .any(|o| o.peer == peer && o.answered < self.layers)
    }

    /// The partner of the first answer still owed.
    pub fn waiting_on(&self) -> Option<usize> {
        self.owed
            .iter()
            .find(|o| o.answered < self.layers)
            .map(|o| o.peer)
    }

    /// Score entries served, by the program position of the light mark they belong to.
    pub fn served(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.owed.iter().map(|o| (o.position, o.served))
    }

    /// Answers every request whose parts have all arrived (filed in `link`'s inbox); whether
    /// it answered any.
    pub fn answer_arrived(&mut self, link: &mut Link) -> Result<bool> {
        let mut any = false;
        for i in 0..self.owed.len() {
            while self.owed[i].answered < self.layers {
                let o = &self.owed[i];
                let b = usize::from(o.backward);
                let tags = (0..ASK_PARTS[b])
                    .map(|part| exchange_tag(TagKind::ExchangeAsk, o.seq, o.answered, part))
                    .collect::<Result<Vec<_>>>()?;
                let Some(ask) = link.take_filed(o.peer, &tags) else {
                    break;
                };
                self.answer(link, i, &ask)?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Computes and sends the answer to `ask`, the parts of the next request of `owed[i]`.
    fn answer(&mut self, link: &mut Link, i: usize, ask: &[Tensor]) -> Result<()> {
        let opts = self.opts;
        let o = &mut self.owed[i];
        let answer = match (o.backward, ask) {
            (false, [q, k, v]) => {
                o.served += score_entries(q, k);
                let (out, lse) = attention_forward(q, k, v, &opts)?;
                vec![out, lse]
            }
            (true, [q, k, v, out, lse, d_out]) => {
                o.served += score_entries(q, k);
                let (dq, dk, dv) = attention_backward_unrounded(q, k, v, out, lse, d_out, &opts)?;
                vec![dq, dk, dv]
            }
            _ => {
                return Err(Error::Runtime(format!(
                    "an exchange request from stage {} has {} parts",
                    o.peer,
                    ask.len()
                )))
            }
        };
        for (part, t) in answer.iter().enumerate() {
            let tag = exchange_tag(TagKind::ExchangeAnswer, o.seq, o.answered, part as u32)?;
            link.send_tagged(o.peer, tag, t)?;
        }
        o.answered += 1;
        Ok(())
    }
}

/// Score entries of queries `q [b, h, sq, d]` against `k [b, hkv, sk, d]` with no mask.
pub(super) fn score_entries(q: &Tensor, k: &Tensor) -> u64 {
    let (qd, kd) = (q.dims(), k.dims());
    (qd[0] * qd[1] * qd[2] * kd[2]) as u64
}
