//! `validate()`: every rule a schedule must satisfy, as structured violations naming the stage,
//! the step (position in the stage's list) and the action, plus a text grid marking the cells.
//!
//! Rules, per stage: each unit has exactly one forward and one backward (a full `B`, or `I` then
//! `W`); the forward of slice `j` comes after the forwards of slices `< j`; the backward of slice
//! `j` after its own forward and after the backwards of slices `> j` of the same micro-batch; `W`
//! after `I`; memory ops between the unit's forward and backward. In a lowered schedule: every
//! cross-stage input arrives by a receive placed before its compute, every send follows the compute
//! that produced it, and sends and receives pair up one to one. Finally a dry run under the
//! execution model (unit durations) must finish: a deadlock is reported at each waiting stage.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{one_f_one_b, validate, Rule};
//! let mut schedule = one_f_one_b(2, 1).unwrap();
//! assert!(validate(&schedule).is_empty());
//! schedule.actions[1].swap(0, 1); // stage 1 now runs 1B0 before 1F0
//! let violations = validate(&schedule);
//! assert_eq!(violations.len(), 1);
//! assert_eq!(violations[0].rule, Rule::BackwardBeforeForward);
//! assert_eq!(violations[0].to_string(), "stage 1 step 0: 1B0: BackwardBeforeForward");
//! ```

mod comm;
pub(crate) mod exchange;
mod vocab;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::action::{Action, Op, Unit};
use crate::error::ScheduleError;
use crate::ids::{Chunk, Slice};
use crate::lower::insert_comm_mapped;
use crate::render::text::grid_with_marks;
use crate::schedule::{Schedule, UnitIndex};
use crate::simulate::{simulate, P2p};

/// Which rule a violation breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Rule {
    /// The action names a stage, chunk, micro-batch or slice outside the configuration.
    OutOfRange {
        /// The problem, with the valid range.
        detail: String,
    },
    /// A second forward of the same unit.
    DuplicateForward,
    /// A unit of the configuration never runs its forward on this stage.
    MissingForward,
    /// A second backward (or `I`, or `W`) of the same unit.
    DuplicateBackward,
    /// A unit never runs its backward (`B`, or `I`) on this stage.
    MissingBackward,
    /// A unit has `I` but no `W`.
    MissingWeight,
    /// A unit mixes a full backward with split `I`/`W`.
    MixedBackward,
    /// Forward of slice `j` before the forward of slice `missing` (< j).
    ForwardBeforeEarlierSlice {
        /// The earlier slice whose forward has not run yet.
        missing: Slice,
    },
    /// Backward of slice `j` before the backward of slice `missing` (> j).
    BackwardBeforeLaterSlice {
        /// The later slice whose backward has not run yet.
        missing: Slice,
    },
    /// Forward on chunk `c` before the same slice's forward on chunk `c−1` of the same device
    /// (`p = 1`, where neighbouring virtual stages share a device).
    ForwardBeforeUpstream,
    /// Backward on chunk `c` before the same slice's backward on chunk `c+1` of the same device.
    BackwardBeforeDownstream,
    /// Backward (or `I`) before the unit's forward.
    BackwardBeforeForward,
    /// `W` before the unit's `I`.
    WeightBeforeInput,
    /// Offload / reload / recompute outside the unit's forward..backward window (or a reload
    /// of a unit that is not offloaded, or a second offload before its reload).
    MemoryOpOutOfPlace,
    /// Backward (or `I`) of a unit whose activations are offloaded and not reloaded yet.
    BackwardOnHost,
    /// A compute whose input comes from another stage has no receive before it.
    ComputeBeforeRecv,
    /// A stage of a vocabulary-parallel schedule lacks a unit's `EMBED`, `HEAD` or `EMBED_B`
    /// (every stage runs each once per unit once any stage runs one).
    MissingVocabOp,
    /// A second vocabulary-parallel op of the same kind and unit on one stage, or one on a
    /// chunk other than 0.
    DuplicateVocabOp,
    /// A vocabulary-parallel op where its owner stage cannot use it: `EMBED` after virtual
    /// stage 0's forward, `HEAD` outside the last virtual stage's forward..backward window,
    /// `EMBED_B` before virtual stage 0's input-gradient backward.
    VocabOpOutOfPlace,
    /// An attention exchange on an action that cannot exchange (not a forward or an
    /// input-gradient backward), with itself or a stage outside the pipeline, or handing a
    /// prefix from a sequence's first slice, which has none.
    ExchangeOutOfPlace,
    /// An attention exchange its partner does not meet: the partner's exchange with this stage at
    /// the same count is missing, of the other direction, or not the other side (one heavy, one
    /// light).
    UnmatchedExchange,
    /// A send before the compute that produces its data.
    SendBeforeCompute,
    /// A send or receive towards a virtual stage that does not exist.
    CommOutsidePipeline,
    /// A send with no matching receive, or a receive with no matching send.
    Unmatched,
    /// The same data sent (or received) twice.
    DuplicateComm,
    /// Sends/receives in a schedule not marked lowered, or within one device (`p = 1`).
    UnexpectedComm,
    /// The stage waits forever at this step.
    Deadlock {
        /// The receive it waits in, as text.
        waiting_in: String,
        /// The stage it waits for.
        waits_for: Option<u32>,
    },
}

/// One broken rule at one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Stage whose list holds the offending action.
    pub stage: u32,
    /// Position in that list (`None` for a missing action: the end of the list is marked).
    pub position: Option<usize>,
    /// The offending (or missing) action as text.
    pub action: String,
    /// The rule.
    pub rule: Rule,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(
                f,
                "stage {} step {p}: {}: {:?}",
                self.stage, self.action, self.rule
            ),
            None => write!(
                f,
                "stage {} (end): {}: {:?}",
                self.stage, self.action, self.rule
            ),
        }
    }
}

/// Checks every rule (see the module docs); an empty list means the schedule is valid.
pub fn validate(schedule: &Schedule) -> Vec<Violation> {
    validate_ragged(schedule, &schedule.slice_counts())
}

/// [`validate`] for heterogeneous micro-batches: micro-batch `mb` has `counts[mb]` slices
/// (elastic pipelines, [`crate::gen::elastic`]). `counts` must have one entry per micro-batch,
/// each in `1..=n` of the configuration; otherwise that is the one violation reported.
pub fn validate_ragged(schedule: &Schedule, counts: &[u32]) -> Vec<Violation> {
    let mut out = Vec::new();
    count_violations(schedule, counts, &mut out);
    if out.is_empty() {
        range_violations(schedule, counts, &mut out);
    }
    if !out.is_empty() {
        return out; // indices are unsafe beyond this point
    }
    for r in 0..schedule.actions.len() {
        stage_violations(schedule, counts, r, &mut out);
    }
    vocab::vocab_violations(schedule, counts, &mut out);
    exchange::exchange_violations(schedule, &mut out);
    if schedule.lowered {
        comm::comm_violations(schedule, &mut out);
    } else {
        unexpected_comm(schedule, &mut out);
    }
    if out.is_empty() {
        deadlock_violations(schedule, &mut out);
    }
    out.sort_by_key(|v| (v.stage, v.position.unwrap_or(usize::MAX)));
    out
}

/// The stage × step grid of `schedule` with every violation's cell marked, followed by the list.
pub fn render_violations(schedule: &Schedule, violations: &[Violation]) -> String {
    let marks: Vec<(usize, Option<usize>)> = violations
        .iter()
        .map(|v| (v.stage as usize, v.position))
        .collect();
    let mut text = grid_with_marks(schedule, &marks);
    for v in violations {
        text.push_str(&v.to_string());
        text.push('\n');
    }
    text
}

pub(crate) fn push(
    out: &mut Vec<Violation>,
    s: &Schedule,
    a: &Action,
    position: Option<usize>,
    rule: Rule,
) {
    out.push(Violation {
        stage: a.stage.0,
        position,
        action: s.text(a),
        rule,
    });
}

/// Slice counts that do not fit the configuration (one violation, at stage 0's end).
fn count_violations(s: &Schedule, counts: &[u32], out: &mut Vec<Violation>) {
    let (m, n) = (s.config.microbatches, s.config.slices);
    let detail = if counts.len() != m as usize {
        Some(format!(
            "{} slice counts for m = {m} micro-batches",
            counts.len()
        ))
    } else {
        counts.iter().position(|&c| c == 0 || c > n).map(|mb| {
            format!(
                "micro-batch {mb} has {} slices, outside 1..={n}",
                counts[mb]
            )
        })
    };
    if let Some(detail) = detail {
        out.push(Violation {
            stage: 0,
            position: None,
            action: String::new(),
            rule: Rule::OutOfRange { detail },
        });
    }
}

fn range_violations(s: &Schedule, counts: &[u32], out: &mut Vec<Violation>) {
    if let Err(ScheduleError::OutOfRange {
        stage,
        position,
        action,
        what,
        value,
        limit,
    }) = s.check_ranges_with(counts)
    {
        out.push(Violation {
            stage,
            position: Some(position),
            action,
            rule: Rule::OutOfRange {
                detail: format!("{what} {value} outside 0..{limit}"),
            },
        });
    }
    if s.actions.len() != s.config.stages as usize {
        out.push(Violation {
            stage: s.actions.len() as u32,
            position: None,
            action: String::new(),
            rule: Rule::OutOfRange {
                detail: format!(
                    "{} stage lists for p = {}",
                    s.actions.len(),
                    s.config.stages
                ),
            },
        });
    }
}

/// Per-unit progress on one stage.
#[derive(Clone, Copy, Default)]
struct Seen {
    forward: bool,
    backward: bool,
    input: bool,
    weight: bool,
    /// Offloaded and not yet reloaded.
    on_host: bool,
}

impl Seen {
    fn grad_done(&self) -> bool {
        self.backward || self.input
    }
}

fn stage_violations(s: &Schedule, counts: &[u32], r: usize, out: &mut Vec<Violation>) {
    let index = UnitIndex::from_counts(counts, s.config.chunks);
    let mut seen = vec![Seen::default(); index.len()];
    let n_of = |u: &Unit| counts[u.mb.index()];
    // Neighbouring virtual stages share the device only when p = 1; otherwise data moves by
    // send/receive and ordering across devices is the dry run's business.
    let local = s.config.stages == 1;
    for (i, a) in s.actions[r].iter().enumerate() {
        let u = a.unit();
        let at = Some(i);
        let neighbour = |slice: u32| {
            index.of(&Unit {
                slice: Slice(slice),
                ..u
            })
        };
        let chunk_of = |chunk: u32| {
            index.of(&Unit {
                chunk: Chunk(chunk),
                ..u
            })
        };
        let me = seen[index.of(&u)];
        let rule = match a.op {
            Op::Forward if me.forward => Some(Rule::DuplicateForward),
            Op::Forward if u.slice.0 > 0 && !seen[neighbour(u.slice.0 - 1)].forward => {
                Some(Rule::ForwardBeforeEarlierSlice {
                    missing: Slice(u.slice.0 - 1),
                })
            }
            Op::Backward | Op::BackwardInput if me.grad_done() => Some(Rule::DuplicateBackward),
            Op::Backward | Op::BackwardInput if !me.forward => Some(Rule::BackwardBeforeForward),
            Op::Backward | Op::BackwardInput
                if u.slice.0 + 1 < n_of(&u) && !seen[neighbour(u.slice.0 + 1)].grad_done() =>
            {
                Some(Rule::BackwardBeforeLaterSlice {
                    missing: Slice(u.slice.0 + 1),
                })
            }
            Op::Forward if local && u.chunk.0 > 0 && !seen[chunk_of(u.chunk.0 - 1)].forward => {
                Some(Rule::ForwardBeforeUpstream)
            }
            Op::Backward | Op::BackwardInput
                if local
                    && u.chunk.0 + 1 < s.config.chunks
                    && !seen[chunk_of(u.chunk.0 + 1)].grad_done() =>
            {
                Some(Rule::BackwardBeforeDownstream)
            }
            Op::Backward if me.weight => Some(Rule::MixedBackward),
            Op::BackwardInput if me.weight => Some(Rule::WeightBeforeInput),
            Op::BackwardWeight if me.weight => Some(Rule::DuplicateBackward),
            Op::BackwardWeight if me.backward => Some(Rule::MixedBackward),
            Op::BackwardWeight if !me.input => Some(Rule::WeightBeforeInput),
            Op::Offload | Op::Recompute if !me.forward || me.grad_done() => {
                Some(Rule::MemoryOpOutOfPlace)
            }
            // Recomputation reads the unit's kept records, which must be on the device.
            Op::Offload | Op::Recompute if me.on_host => Some(Rule::MemoryOpOutOfPlace),
            Op::Reload if !me.on_host || me.grad_done() => Some(Rule::MemoryOpOutOfPlace),
            Op::Backward | Op::BackwardInput if me.on_host => Some(Rule::BackwardOnHost),
            _ => None,
        };
        if let Some(rule) = rule {
            push(out, s, a, at, rule);
        }
        let me = &mut seen[index.of(&u)];
        match a.op {
            Op::Forward => me.forward = true,
            Op::Backward => me.backward = true,
            Op::BackwardInput => me.input = true,
            Op::BackwardWeight => me.weight = true,
            Op::Offload => me.on_host = true,
            Op::Reload => me.on_host = false,
            _ => {}
        }
    }
    missing_violations(s, counts, r, &index, &seen, out);
}

fn missing_violations(
    s: &Schedule,
    counts: &[u32],
    r: usize,
    index: &UnitIndex,
    seen: &[Seen],
    out: &mut Vec<Violation>,
) {
    let stage = crate::ids::Stage(r as u32);
    for u in s.units_with(counts) {
        let me = seen[index.of(&u)];
        let missing = if !me.forward {
            Some((Op::Forward, Rule::MissingForward))
        } else if !me.grad_done() {
            Some((Op::Backward, Rule::MissingBackward))
        } else if me.input && !me.weight {
            Some((Op::BackwardWeight, Rule::MissingWeight))
        } else {
            None
        };
        if let Some((op, rule)) = missing {
            push(out, s, &Action::new(stage, u, op), None, rule);
        }
    }
}

fn unexpected_comm(s: &Schedule, out: &mut Vec<Violation>) {
    for list in &s.actions {
        for (i, a) in list.iter().enumerate().filter(|(_, a)| a.op.is_comm()) {
            push(out, s, a, Some(i), Rule::UnexpectedComm);
        }
    }
}

/// Dry run with unit durations; a deadlock becomes one violation per waiting stage, at the
/// waiting step of the schedule as given (for an unlowered schedule: the compute the missing
/// receive serves).
fn deadlock_violations(s: &Schedule, out: &mut Vec<Violation>) {
    let (lowered, origins) = if s.lowered {
        (
            s.clone(),
            s.actions.iter().map(|l| (0..l.len()).collect()).collect(),
        )
    } else {
        match insert_comm_mapped(s) {
            Ok(x) => x,
            Err(_) => return, // ranges were checked; nothing else can fail
        }
    };
    let unit = |a: &Action| {
        if a.op.is_compute() || a.op.is_memory() || a.op.is_vocab() {
            1.0
        } else {
            0.0
        }
    };
    if let Err(ScheduleError::Deadlock { blocked }) = simulate(&lowered, unit, &P2p::free()) {
        for b in blocked {
            let r = b.stage as usize;
            let pos = origins[r][b.position];
            let a = s.actions[r][pos];
            let rule = Rule::Deadlock {
                waiting_in: b.action.clone(),
                waits_for: b.waits_for,
            };
            push(out, s, &a, Some(pos), rule);
        }
    }
}
