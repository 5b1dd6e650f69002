//! Vocabulary parallelism as a lowering pass: every stage holds `V/p` rows of the embedding and
//! the LM head, so every stage takes part in each unit's embedding lookup, LM head and loss, and
//! embedding gradient. [`insert_vocab_parallel`] puts those parts into the program as actions
//! (`EMBED`, `HEAD`, `EMBED_B`, see [`Op`]), so the validator, the simulator, the memory ledger
//! and the renderers see them like any other op.
//!
//! Where they go. A unit's owner runs its op where the data is: stage 0's `EMBED` right before
//! virtual stage 0's forward, the last stage's `HEAD` right after the last virtual stage's
//! forward, stage 0's `EMBED_B` right after virtual stage 0's input-gradient backward. Every
//! other stage runs its share at the same instant of the schedule's simulated timeline (under the
//! caller's cost): before its first action that ends after that instant. Each such instant cuts
//! every stage's program into a part that ends before it and a part after; a receive that ends
//! before the cut has its send before the cut too, so every stage reaches every meeting and the
//! pass adds no deadlock (the dry run of [`crate::validate`] checks the result).
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{insert_vocab_parallel, lower, one_f_one_b, validate, UnitCosts};
//! let lowered = lower(&one_f_one_b(2, 2).unwrap()).unwrap();
//! let costs = UnitCosts::new(1.0, 2.0);
//! let vp = insert_vocab_parallel(&lowered, |a| costs.cost(a)).unwrap();
//! assert!(validate(&vp).is_empty());
//! assert_eq!(
//!     vp.to_texts()[1],
//!     ["1EMBED0", "1RECV_F0", "1EMBED1", "1F0", "1HEAD0", "1B0", "1SEND_B0", "1RECV_F1",
//!      "1F1", "1HEAD1", "1EMBED_B0", "1B1", "1SEND_B1", "1EMBED_B1"]
//! );
//! ```

use crate::action::{Action, Op, Unit};
use crate::error::{Result, ScheduleError};
use crate::ids::Stage;
use crate::lower::lower;
use crate::schedule::Schedule;
use crate::simulate::{simulate, P2p, Timed};

/// Removes every vocabulary-parallel op (the inverse of [`insert_vocab_parallel`]).
pub fn strip_vocab(schedule: &Schedule) -> Schedule {
    Schedule {
        config: schedule.config,
        lowered: schedule.lowered,
        actions: schedule
            .actions
            .iter()
            .map(|list| list.iter().filter(|a| !a.op.is_vocab()).copied().collect())
            .collect(),
    }
}

/// One meeting of the stages: the instant of the simulated timeline it is placed at, and the op
/// and unit it serves.
#[derive(Clone, Copy)]
struct Meeting {
    at: f64,
    op: Op,
    mb: u32,
    slice: u32,
}

/// The lowered schedule (lowered first if it is not) with each unit's `EMBED`, `HEAD` and
/// `EMBED_B` on every stage (see the module docs); existing vocabulary ops are replaced. `cost`
/// gives the durations the meetings are placed by; every compute must take a positive time.
pub fn insert_vocab_parallel<F: Fn(&Action) -> f64>(
    schedule: &Schedule,
    cost: F,
) -> Result<Schedule> {
    let base = strip_vocab(schedule);
    let lowered = if base.lowered { base } else { lower(&base)? };
    if let Some(a) = lowered.iter().find(|a| a.pair.is_some()) {
        // Partners meet; a cut between them would leave each waiting for the other.
        return Err(ScheduleError::NotLowered {
            reason: format!(
                "{} takes part in an attention exchange: insert the vocabulary-parallel ops \
                 first, then the exchange (`insert_exchange` pairs around them)",
                lowered.text(a)
            ),
        });
    }
    for a in lowered
        .actions
        .iter()
        .flatten()
        .filter(|a| a.op.is_compute())
    {
        let value = cost(a);
        if !(value > 0.0 && value.is_finite()) {
            return Err(ScheduleError::BadCost {
                what: "compute duration (vocabulary parallelism places its ops by it; must be > 0)",
                action: lowered.text(a),
                value,
            });
        }
    }
    let sim = simulate(&lowered, &cost, &P2p::free())?;
    let meetings = meetings(&lowered, &sim.timeline);
    let actions = sim
        .timeline
        .iter()
        .enumerate()
        .map(|(r, timed)| with_meetings(r, timed, &meetings))
        .collect();
    Ok(Schedule {
        config: lowered.config,
        lowered: true,
        actions,
    })
}

/// Every unit's three meetings, in the order every stage meets them.
fn meetings(s: &Schedule, timeline: &[Vec<Timed>]) -> Vec<Meeting> {
    let (p, last) = (s.config.stages, s.config.virtual_stages() - 1);
    // Each owner's computes with their ends.
    let owned = |stage: usize, vstage: u32| {
        timeline[stage]
            .iter()
            .map(|t| (t, t.end))
            .filter(move |(t, _)| t.action.virtual_stage(p).0 == vstage)
    };
    let meet = |at: f64, op: Op, a: &Action| Meeting {
        at,
        op,
        mb: a.mb.0,
        slice: a.slice.0,
    };
    let mut out = Vec::new();
    for (t, end) in owned(0, 0) {
        match t.action.op {
            Op::Forward => out.push(meet(t.start, Op::VocabEmbed, &t.action)),
            op if op.makes_input_grad() => out.push(meet(end, Op::VocabEmbedGrad, &t.action)),
            _ => {}
        }
    }
    for (t, end) in owned(p as usize - 1, last).filter(|(t, _)| t.action.op == Op::Forward) {
        out.push(meet(end, Op::VocabHead, &t.action));
    }
    out.sort_by(|a, b| {
        a.at.total_cmp(&b.at)
            .then((a.op, a.mb, a.slice).cmp(&(b.op, b.mb, b.slice)))
    });
    out
}

/// Stage `r`'s program with each meeting before its first action that ends after the meeting's
/// instant.
fn with_meetings(r: usize, timed: &[Timed], meetings: &[Meeting]) -> Vec<Action> {
    let mut out = Vec::with_capacity(timed.len() + meetings.len());
    let mut next = meetings.iter().peekable();
    let action = |m: &Meeting| Action::new(Stage(r as u32), Unit::new(m.mb, m.slice, 0), m.op);
    for t in timed {
        while let Some(m) = next.next_if(|m| m.at < t.end) {
            out.push(action(m));
        }
        out.push(t.action);
    }
    out.extend(next.map(action));
    out
}
