//! Vocabulary parallelism as a lowering pass: every stage holds `V/p` rows of the embedding and
//! the LM head, so every stage takes part in each unit's embedding lookup, LM head and loss, and
//! embedding gradient. [`insert_vocab_parallel`] puts those parts into the program as actions
//! (`EMBED`, `HEAD`, `EMBED_B`, see [`Op`]), so the validator, the simulator, the memory ledger
//! and the renderers see them like any other op.
//!
//! Where they go. Each op needs every stage, so it waits for the last to arrive; the units of a
//! micro-batch therefore meet together, one after the other, so that only the first of them
//! waits. The owner runs them where its data is: stage 0's `EMBED`s right before virtual stage
//! 0's forward of the micro-batch's first slice, the last stage's `HEAD`s right after the last
//! virtual stage's forward of its last slice (the backward starts there), stage 0's `EMBED_B`s
//! right after virtual stage 0's input-gradient backward of its first slice (the last one). Every
//! other stage runs its shares at the same instant of the schedule's simulated timeline (under the
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
use crate::simulate::{simulate_timeline, P2p, Timed};

/// Removes every vocabulary-parallel op (the inverse of [`insert_vocab_parallel`]).
pub fn strip_vocab(schedule: &Schedule) -> Schedule {
    Schedule {
        config: schedule.config,
        lowered: schedule.lowered,
        slice_counts: schedule.slice_counts.clone(),
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
        // The exchange steps are counted among the computes; the vocabulary ops go in first.
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
    let timeline = simulate_timeline(&lowered, &cost, &P2p::free())?;
    let meetings = meetings(&lowered, &timeline);
    let actions = timeline
        .iter()
        .enumerate()
        .map(|(r, timed)| with_meetings(r, timed, &meetings))
        .collect();
    Ok(Schedule {
        config: lowered.config,
        lowered: true,
        actions,
        slice_counts: lowered.slice_counts.clone(),
    })
}

/// Every unit's three meetings, in the order every stage meets them. A micro-batch's units meet
/// together, one after the other: every `EMBED` where virtual stage 0's forward of its first
/// slice starts, every `HEAD` where the last virtual stage's forward of its last slice ends (its
/// backward starts from the last slice), every `EMBED_B` where virtual stage 0's input-gradient
/// backward of its first slice (the last it runs) ends. Each meeting waits for every stage it
/// needs, so a micro-batch's first one lines the stages up and the rest cost no wait: one wait
/// per micro-batch and op rather than per unit. The owner keeps what the others need (token ids,
/// the last forward's outputs, input gradients) until then.
fn meetings(s: &Schedule, timeline: &[Vec<Timed>]) -> Vec<Meeting> {
    let (p, last) = (s.config.stages, s.config.virtual_stages() - 1);
    let n = s.config.slices;
    // Each owner's computes with their ends.
    let owned = |stage: usize, vstage: u32| {
        timeline[stage]
            .iter()
            .map(|t| (t, t.end))
            .filter(move |(t, _)| t.action.virtual_stage(p).0 == vstage)
    };
    let every_slice = |at: f64, op: Op, a: &Action| {
        let mb = a.mb.0;
        (0..n).map(move |slice| Meeting { at, op, mb, slice })
    };
    let mut out = Vec::new();
    for (t, end) in owned(0, 0).filter(|(t, _)| t.action.slice.0 == 0) {
        match t.action.op {
            Op::Forward => out.extend(every_slice(t.start, Op::VocabEmbed, &t.action)),
            op if op.makes_input_grad() => {
                out.extend(every_slice(end, Op::VocabEmbedGrad, &t.action));
            }
            _ => {}
        }
    }
    let last_slices = owned(p as usize - 1, last)
        .filter(|(t, _)| t.action.op == Op::Forward && t.action.slice.0 + 1 == n);
    for (t, end) in last_slices {
        out.extend(every_slice(end, Op::VocabHead, &t.action));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate, simulate, ScheduleConfig, ScheduleKind, UnitCosts};

    /// A micro-batch's units meet one after the other on every stage, so the stages wait once
    /// per micro-batch and op: SlimPipe p=4, m=8, n=8 takes within 10 % of its plain makespan
    /// plus the vocabulary ops' own time (meeting every unit apart took 43 % more).
    #[test]
    fn a_micro_batchs_units_meet_together() {
        let config = ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 8).with_slices(8);
        let plain = lower(&generate(&config).unwrap()).unwrap();
        let costs = UnitCosts {
            vocab: 0.25,
            ..UnitCosts::new(1.0, 2.0)
        };
        let vp = insert_vocab_parallel(&plain, |a| costs.cost(a)).unwrap();
        for list in &vp.actions {
            let ops: Vec<&Action> = list.iter().filter(|a| a.op == Op::VocabHead).collect();
            for run in ops.chunks(8) {
                let at: Vec<usize> = run
                    .iter()
                    .map(|a| list.iter().position(|b| b == *a).unwrap())
                    .collect();
                assert!(at.windows(2).all(|w| w[1] == w[0] + 1), "{at:?}");
                assert!(run.iter().all(|a| a.mb == run[0].mb));
            }
        }
        let span = |s: &Schedule| {
            simulate(s, |a| costs.cost(a), &P2p::free())
                .unwrap()
                .makespan
        };
        let own = 3.0 * 8.0 * 8.0 * 0.25;
        let (with, without) = (span(&vp), span(&plain));
        assert!(with < 1.1 * (without + own), "{with} vs {without} + {own}");
    }
}
