//! Lowering: pure passes `Schedule -> Schedule` that turn a compute-only schedule into the exact
//! program each stage executes.
//!
//! [`insert_comm`] puts every receive immediately before the compute that consumes it and every
//! send immediately after the compute that produces it. Because sends never block (buffered, like
//! `isend`) and a receive blocks only its own stage, the lowered program deadlocks exactly when the
//! compute order itself is infeasible — lowering adds no waiting of its own. With `p = 1` all
//! virtual stages share one device: data stays local and no send/receive is emitted.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{lower, one_f_one_b, strip_comm};
//! let planned = one_f_one_b(2, 1).unwrap();
//! let lowered = lower(&planned).unwrap();
//! assert_eq!(
//!     lowered.to_texts(),
//!     [["0F0", "0SEND_F0", "0RECV_B0", "0B0"], ["1RECV_F0", "1F0", "1B0", "1SEND_B0"]]
//! );
//! assert_eq!(strip_comm(&lowered), planned);
//! ```

use crate::action::{Action, Op};
use crate::error::Result;
use crate::schedule::Schedule;

/// The ordered lowering passes: drop any existing sends/receives, then insert matched ones.
pub fn lower(schedule: &Schedule) -> Result<Schedule> {
    insert_comm(&strip_comm(schedule))
}

/// Removes every send and receive (the inverse of [`insert_comm`]).
pub fn strip_comm(schedule: &Schedule) -> Schedule {
    Schedule {
        config: schedule.config,
        lowered: false,
        slice_counts: schedule.slice_counts.clone(),
        actions: schedule
            .actions
            .iter()
            .map(|list| list.iter().filter(|a| !a.op.is_comm()).copied().collect())
            .collect(),
    }
}

/// Inserts a matched send/receive pair for every cross-stage dependency (see the module docs).
pub fn insert_comm(schedule: &Schedule) -> Result<Schedule> {
    Ok(insert_comm_mapped(schedule)?.0)
}

/// [`insert_comm`], also returning for every lowered action the position, in the input list, of
/// the action it came from (a send/receive maps to the compute it serves).
pub(crate) fn insert_comm_mapped(schedule: &Schedule) -> Result<(Schedule, Vec<Vec<usize>>)> {
    schedule.check_ranges()?;
    let c = &schedule.config;
    let (p, last) = (c.stages, c.virtual_stages().saturating_sub(1));
    let mut actions = Vec::with_capacity(schedule.actions.len());
    let mut origins = Vec::with_capacity(schedule.actions.len());
    for list in &schedule.actions {
        let mut out: Vec<Action> = Vec::with_capacity(list.len() * 2);
        let mut origin = Vec::with_capacity(list.len() * 2);
        for (i, a) in list.iter().enumerate() {
            let k = a.virtual_stage(p).0;
            let (before, after) = match a.op {
                Op::Forward => (
                    (k > 0).then_some(Op::RecvAct),
                    (k < last).then_some(Op::SendAct),
                ),
                Op::Backward | Op::BackwardInput => (
                    (k < last).then_some(Op::RecvGrad),
                    (k > 0).then_some(Op::SendGrad),
                ),
                _ => (None, None),
            };
            // Neighbouring virtual stages share the device only when p = 1.
            let cross = p > 1 && !a.op.is_comm();
            if let Some(op) = before.filter(|_| cross) {
                out.push(a.with_op(op));
                origin.push(i);
            }
            out.push(*a);
            origin.push(i);
            if let Some(op) = after.filter(|_| cross) {
                out.push(a.with_op(op));
                origin.push(i);
            }
        }
        actions.push(out);
        origins.push(origin);
    }
    let lowered = Schedule {
        config: schedule.config,
        lowered: true,
        actions,
        slice_counts: schedule.slice_counts.clone(),
    };
    Ok((lowered, origins))
}

/// Inserts `RECOMPUTE` immediately before the input-gradient backward (`B` or `I`) of every unit
/// `checkpointed(action)` selects (called with that backward), the latest point its recomputed
/// records can be made: they then live only through the backward that uses them. A pass on any
/// schedule, lowered or not; existing `RECOMPUTE` actions are kept and not doubled.
pub fn insert_recompute(schedule: &Schedule, checkpointed: impl Fn(&Action) -> bool) -> Schedule {
    let actions = schedule
        .actions
        .iter()
        .map(|list| {
            let mut out = Vec::with_capacity(list.len() * 2);
            for a in list {
                let already = out
                    .last()
                    .is_some_and(|b: &Action| b.op == Op::Recompute && b.unit() == a.unit());
                if a.op.makes_input_grad() && !already && checkpointed(a) {
                    out.push(a.with_op(Op::Recompute));
                }
                out.push(*a);
            }
            out
        })
        .collect();
    Schedule {
        config: schedule.config,
        lowered: schedule.lowered,
        actions,
        slice_counts: schedule.slice_counts.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate, validate, ScheduleConfig, ScheduleKind};

    #[test]
    fn recompute_goes_right_before_each_selected_backward_and_validates() {
        let config = ScheduleConfig::new(ScheduleKind::ZbH1, 3, 6);
        let lowered = lower(&generate(&config).unwrap()).unwrap();
        let even = |a: &Action| a.mb.0 % 2 == 0;
        let out = insert_recompute(&lowered, even);
        assert!(validate(&out).is_empty(), "{:?}", validate(&out));
        for list in &out.actions {
            let recomputes: Vec<usize> = (0..list.len())
                .filter(|&i| list[i].op == Op::Recompute)
                .collect();
            assert_eq!(recomputes.len(), 3, "three even micro-batches per stage");
            for i in recomputes {
                let next = list[i + 1];
                assert!(next.op == Op::BackwardInput && next.unit() == list[i].unit());
                assert!(even(&next));
            }
        }
        assert_eq!(
            insert_recompute(&out, even),
            out,
            "a second pass adds nothing"
        );
    }
}
