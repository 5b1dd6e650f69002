//! The action IR: a closed [`Op`] enum, the [`Unit`] of work it applies to, and the compact text
//! form shared with PyTorch's pipelining schedules.
//!
//! Text form: `{virtual stage}{OP}{micro-batch}` (`2F0`, `1B3`, `0W1`, `3I2`, `0SEND_F1`,
//! `1RECV_B0`), exactly PyTorch's `_Action` syntax, plus `.{slice}` when the schedule slices its
//! sequences (`2F0.1` = virtual stage 2, forward, micro-batch 0, slice 1). PyTorch does not know
//! slices or memory ops; a sliced schedule is only meaningful to seqpipe. The stage in the text is
//! the *virtual* stage, so turning text into an [`Action`] needs `p` ([`Compact::resolve`]).
//!
//! Send/receive semantics (also PyTorch's): `kSEND_F` sends the output of virtual stage `k` to
//! `k+1`; `kRECV_F` receives the input of `k` from `k−1`; `kSEND_B` sends the input gradient of
//! `k` to `k−1`; `kRECV_B` receives the output gradient of `k` from `k+1`.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{Compact, Op};
//! // Virtual stage 3, backward, micro-batch 1, slice 2.
//! let text: Compact = "3B1.2".parse().unwrap();
//! assert_eq!((text.op, text.mb.0, text.slice.map(|s| s.0)), (Op::Backward, 1, Some(2)));
//! let action = text.resolve(2); // with p = 2, virtual stage 3 is stage 1's chunk 1
//! assert_eq!((action.stage.0, action.chunk.0), (1, 1));
//! assert_eq!(action.text(2, true), "3B1.2");
//! assert_eq!(Op::from_code("SEND_F"), Some(Op::SendAct));
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ScheduleError};
use crate::ids::{placement, virtual_stage, Chunk, MicroBatch, Slice, Stage, VirtualStage};

/// What an action does. Closed: the one executor matches on every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Forward of one unit (`F`).
    Forward,
    /// Full backward: input and weight gradients together (`B`).
    Backward,
    /// Input-gradient half of a split backward, zero-bubble's "B" (`I`).
    BackwardInput,
    /// Weight-gradient half of a split backward, zero-bubble's "W" (`W`).
    BackwardWeight,
    /// Send this virtual stage's output activation to the next virtual stage (`SEND_F`).
    SendAct,
    /// Receive this virtual stage's input activation from the previous one (`RECV_F`).
    RecvAct,
    /// Send this virtual stage's input gradient to the previous virtual stage (`SEND_B`).
    SendGrad,
    /// Receive this virtual stage's output gradient from the next one (`RECV_B`).
    RecvGrad,
    /// Move the unit's saved activations to host memory (`OFFLOAD`).
    Offload,
    /// Bring the unit's saved activations back from host memory (`RELOAD`).
    Reload,
    /// Recompute the unit's dropped activations before its backward (`RECOMPUTE`).
    Recompute,
    /// Vocabulary parallelism: this stage's share of the unit's embedding lookup, summed on
    /// stage 0 before its first forward (`EMBED`).
    VocabEmbed,
    /// Vocabulary parallelism: this stage's share of the unit's LM head and loss, run by every
    /// stage together right after the last virtual stage's forward (`HEAD`).
    VocabHead,
    /// Vocabulary parallelism: this stage's share of the unit's embedding gradient, after stage
    /// 0's input-gradient backward of virtual stage 0 (`EMBED_B`).
    VocabEmbedGrad,
}

impl Op {
    /// Every op, in declaration order.
    pub const ALL: [Op; 14] = [
        Op::Forward,
        Op::Backward,
        Op::BackwardInput,
        Op::BackwardWeight,
        Op::SendAct,
        Op::RecvAct,
        Op::SendGrad,
        Op::RecvGrad,
        Op::Offload,
        Op::Reload,
        Op::Recompute,
        Op::VocabEmbed,
        Op::VocabHead,
        Op::VocabEmbedGrad,
    ];

    /// The op's code in the text form (`F`, `SEND_F`, …).
    pub fn code(self) -> &'static str {
        match self {
            Op::Forward => "F",
            Op::Backward => "B",
            Op::BackwardInput => "I",
            Op::BackwardWeight => "W",
            Op::SendAct => "SEND_F",
            Op::RecvAct => "RECV_F",
            Op::SendGrad => "SEND_B",
            Op::RecvGrad => "RECV_B",
            Op::Offload => "OFFLOAD",
            Op::Reload => "RELOAD",
            Op::Recompute => "RECOMPUTE",
            Op::VocabEmbed => "EMBED",
            Op::VocabHead => "HEAD",
            Op::VocabEmbedGrad => "EMBED_B",
        }
    }

    /// Parses an op code; `None` if unknown.
    pub fn from_code(code: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.code() == code)
    }

    /// Model compute: forward or any backward.
    pub fn is_compute(self) -> bool {
        matches!(
            self,
            Op::Forward | Op::Backward | Op::BackwardInput | Op::BackwardWeight
        )
    }

    /// Any backward piece (full, input or weight).
    pub fn is_backward(self) -> bool {
        matches!(self, Op::Backward | Op::BackwardInput | Op::BackwardWeight)
    }

    /// The backward piece that produces the input gradient (full backward or `I`).
    pub fn makes_input_grad(self) -> bool {
        matches!(self, Op::Backward | Op::BackwardInput)
    }

    /// The backward piece after which the unit's saved activations are no longer needed
    /// (full backward or `W`).
    pub fn ends_unit(self) -> bool {
        matches!(self, Op::Backward | Op::BackwardWeight)
    }

    /// Point-to-point communication.
    pub fn is_comm(self) -> bool {
        matches!(
            self,
            Op::SendAct | Op::RecvAct | Op::SendGrad | Op::RecvGrad
        )
    }

    /// A send (never blocks in the execution model).
    pub fn is_send(self) -> bool {
        matches!(self, Op::SendAct | Op::SendGrad)
    }

    /// A receive (blocks until the matching send's data has arrived).
    pub fn is_recv(self) -> bool {
        matches!(self, Op::RecvAct | Op::RecvGrad)
    }

    /// Memory management inserted by planners (offload, reload, recompute).
    pub fn is_memory(self) -> bool {
        matches!(self, Op::Offload | Op::Reload | Op::Recompute)
    }

    /// A vocabulary-parallel op (`EMBED`, `HEAD`, `EMBED_B`): every stage runs one per unit,
    /// computing its vocabulary shard and exchanging with the unit's owner stage.
    pub fn is_vocab(self) -> bool {
        matches!(self, Op::VocabEmbed | Op::VocabHead | Op::VocabEmbedGrad)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A unit of work on one stage: one slice of one micro-batch through one model chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unit {
    /// Micro-batch.
    pub mb: MicroBatch,
    /// Slice of the micro-batch's sequence (0 when unsliced).
    pub slice: Slice,
    /// Model chunk on the stage (0 when not interleaved).
    pub chunk: Chunk,
}

impl Unit {
    /// A unit from raw indices.
    pub fn new(mb: u32, slice: u32, chunk: u32) -> Self {
        Unit {
            mb: MicroBatch(mb),
            slice: Slice(slice),
            chunk: Chunk(chunk),
        }
    }
}

/// SlimPipe's attention context exchange on a compute action (forward, or the backward piece
/// that makes the input gradient): every layer of it meets `peer`'s marked compute. The heavy
/// side (`head > 0`) hands the oldest `head` tokens of its unit's K/V prefix (with its queries)
/// to the light side, which attends to them and returns the result; the light side (`head = 0`)
/// serves, whatever compute it runs itself. `backward`: the exchanged attention is a backward
/// (the heavy side's compute is one). Text: `@peer` after the action, then `+head` on the heavy
/// side, or `b` on a light side serving a backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pair {
    /// The partner stage.
    pub peer: Stage,
    /// Tokens of this unit's prefix handed to the partner (0: this side serves).
    pub head: u32,
    /// The exchanged attention is a backward.
    #[serde(default)]
    pub backward: bool,
}

/// One step of one stage's program: `op` applied to a unit on `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Action {
    /// Physical stage that runs the action.
    pub stage: Stage,
    /// Model chunk on that stage (virtual stage `chunk·p + stage`).
    pub chunk: Chunk,
    /// Micro-batch.
    pub mb: MicroBatch,
    /// Slice of the micro-batch.
    pub slice: Slice,
    /// What to do.
    pub op: Op,
    /// The attention exchange this compute takes part in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<Pair>,
}

impl Action {
    /// `op` on `unit` at `stage`.
    pub fn new(stage: Stage, unit: Unit, op: Op) -> Self {
        Action {
            stage,
            chunk: unit.chunk,
            mb: unit.mb,
            slice: unit.slice,
            op,
            pair: None,
        }
    }

    /// The unit the action applies to.
    pub fn unit(&self) -> Unit {
        Unit {
            mb: self.mb,
            slice: self.slice,
            chunk: self.chunk,
        }
    }

    /// The same unit and stage with another op (and no exchange).
    pub fn with_op(&self, op: Op) -> Self {
        Action {
            op,
            pair: None,
            ..*self
        }
    }

    /// Virtual stage `chunk·p + stage`.
    pub fn virtual_stage(&self, p: u32) -> VirtualStage {
        virtual_stage(self.stage, self.chunk, p)
    }

    /// For a send or receive, the virtual stage at the other end (`k+1` for `SEND_F`/`RECV_B`,
    /// `k−1` for `RECV_F`/`SEND_B`); `None` for other ops or below virtual stage 0. The caller
    /// checks the upper end against `p·v` ([`crate::Schedule::peer`] does).
    pub fn peer_virtual_stage(&self, p: u32) -> Option<VirtualStage> {
        let k = self.virtual_stage(p).0;
        match self.op {
            Op::SendAct | Op::RecvGrad => Some(VirtualStage(k + 1)),
            Op::RecvAct | Op::SendGrad => k.checked_sub(1).map(VirtualStage),
            _ => None,
        }
    }

    /// The compact text form (see the module docs); `sliced` adds the `.slice` suffix.
    pub fn compact(&self, p: u32, sliced: bool) -> Compact {
        Compact {
            vstage: self.virtual_stage(p),
            op: self.op,
            mb: self.mb,
            slice: sliced.then_some(self.slice),
            pair: self.pair,
        }
    }

    /// The compact text as a string.
    pub fn text(&self, p: u32, sliced: bool) -> String {
        self.compact(p, sliced).to_string()
    }
}

/// The compact text form of an action, as written in CSV cells and grids: virtual stage, op,
/// micro-batch and optional slice. `Display` and `FromStr` round-trip exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Compact {
    /// Virtual stage.
    pub vstage: VirtualStage,
    /// What to do.
    pub op: Op,
    /// Micro-batch.
    pub mb: MicroBatch,
    /// Slice, present only in sliced schedules.
    pub slice: Option<Slice>,
    /// The attention exchange, if any (`@peer`, `+head`).
    pub pair: Option<Pair>,
}

impl Compact {
    /// The action this text names, placed on a pipeline of `p` stages (Megatron placement).
    pub fn resolve(&self, p: u32) -> Action {
        let (stage, chunk) = placement(self.vstage, p);
        Action {
            stage,
            chunk,
            mb: self.mb,
            slice: self.slice.unwrap_or_default(),
            op: self.op,
            pair: self.pair,
        }
    }
}

impl fmt::Display for Compact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.vstage, self.op.code(), self.mb)?;
        if let Some(s) = self.slice {
            write!(f, ".{s}")?;
        }
        if let Some(pair) = self.pair {
            write!(f, "@{}", pair.peer.0)?;
            if pair.head > 0 {
                write!(f, "+{}", pair.head)?;
            } else if pair.backward {
                write!(f, "b")?;
            }
        }
        Ok(())
    }
}

/// Splits off a leading run of ASCII digits.
fn leading_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

fn parse_number(text: &str, digits: &str, what: &str) -> Result<u32> {
    digits.parse().map_err(|_| ScheduleError::BadActionText {
        text: text.to_string(),
        reason: format!(
            "{what} `{digits}` is not a number between 0 and {}",
            u32::MAX
        ),
    })
}

impl FromStr for Compact {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |reason: String| ScheduleError::BadActionText {
            text: text.to_string(),
            reason,
        };
        let (s, pair) = match text.trim().split_once('@') {
            Some((s, pair)) => (s, Some(parse_pair(text, pair)?)),
            None => (text.trim(), None),
        };

        let (stage, rest) = leading_digits(s);
        if stage.is_empty() {
            return Err(bad("expected a virtual stage number first".into()));
        }
        let code_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (code, rest) = rest.split_at(code_end);
        let op = Op::from_code(code).ok_or_else(|| {
            let known: Vec<&str> = Op::ALL.iter().map(|o| o.code()).collect();
            bad(format!(
                "unknown op `{code}`; known ops: {}",
                known.join(", ")
            ))
        })?;
        let (mb, rest) = leading_digits(rest);
        if mb.is_empty() {
            return Err(bad("expected a micro-batch number after the op".into()));
        }
        let slice = match rest.strip_prefix('.') {
            None if rest.is_empty() => None,
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                Some(Slice(parse_number(text, digits, "slice")?))
            }
            _ => {
                return Err(bad(format!(
                    "unexpected `{rest}` after the micro-batch; a slice is written `.N`"
                )))
            }
        };
        Ok(Compact {
            vstage: VirtualStage(parse_number(text, stage, "virtual stage")?),
            op,
            mb: MicroBatch(parse_number(text, mb, "micro-batch")?),
            slice,
            // A heavy side's direction is its own op's.
            pair: pair.map(|p| match p.head {
                0 => p,
                _ => Pair {
                    backward: op != Op::Forward,
                    ..p
                },
            }),
        })
    }
}

/// The `peer[+head]` or `peer[b]` after an action's `@`.
fn parse_pair(text: &str, pair: &str) -> Result<Pair> {
    let (pair, backward) = match pair.strip_suffix('b') {
        Some(p) => (p, true),
        None => (pair, false),
    };
    let (peer, head) = pair.split_once('+').unwrap_or((pair, "0"));
    let number = |digits: &str, what| match digits.bytes().all(|b| b.is_ascii_digit()) {
        true if !digits.is_empty() => parse_number(text, digits, what),
        _ => Err(ScheduleError::BadActionText {
            text: text.to_string(),
            reason: format!(
                "an exchange is written `@peer` or `@peer+slices`; `{digits}` is not a {what}"
            ),
        }),
    };
    Ok(Pair {
        peer: Stage(number(peer, "peer stage")?),
        head: number(head, "slice count")?,
        backward,
    })
}
