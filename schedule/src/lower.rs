//! Lowering: pure passes `Schedule -> Schedule` that turn a compute-only schedule into the exact
//! program each stage executes.
//!
//! [`insert_comm`] puts every receive immediately before the compute that consumes it and every
//! send immediately after the compute that produces it. Because sends never block (buffered, like
//! `isend`) and a receive blocks only its own stage, the lowered program deadlocks exactly when the
//! compute order itself is infeasible — lowering adds no waiting of its own. With `p = 1` all
//! virtual stages share one device: data stays local and no send/receive is emitted.

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
    };
    Ok((lowered, origins))
}
