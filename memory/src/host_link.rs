//! The trainer's host link on a simulated timeline: how long a schedule with `OFFLOAD`/`RELOAD`
//! actions takes when the copies go through one in-order link per stage of a given bandwidth,
//! joined where the trainer's executor joins them.
//!
//! - A copy starts when its action is reached and the link is free, and takes `bytes /
//!   bandwidth`.
//! - An offload is joined at the end of the first compute action after it, or at the first
//!   `RELOAD` after it if that comes first; a reload is joined when its unit's backward (or
//!   recomputation) starts. A join waits until the copy is done.
//!
//! The waits lengthen the actions they fall in, which moves everything after them — on this
//! stage, and on others through their messages — so [`simulate_with_host_link`] simulates,
//! charges the waits of that timeline, and simulates again until the waits settle.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::simulate_with_host_link;
//! use seqpipe_schedule::{lower, one_f_one_b, Op, P2p, UnitCosts};
//! let mut schedule = lower(&one_f_one_b(1, 1).unwrap()).unwrap(); // 0F0, 0B0
//! let f0 = schedule.actions[0][0];
//! schedule.actions[0].splice(1..1, [f0.with_op(Op::Offload), f0.with_op(Op::Reload)]);
//! let costs = UnitCosts::new(1.0, 2.0); // offload and reload actions cost no compute
//! // 4 bytes per unit over a link of 1 byte per time unit: each copy takes 4.
//! let free = P2p::free();
//! let (sim, waits) =
//!     simulate_with_host_link(&schedule, |a| costs.cost(a), |_, _| 4.0, 1.0, &free).unwrap();
//! // The reload waits for the offload (t = 1..5), the backward for the reload (5..9).
//! assert_eq!(waits[0], vec![0.0, 0.0, 4.0, 4.0]);
//! assert_eq!(sim.makespan, 11.0);
//! ```

use std::collections::HashMap;

use seqpipe_schedule::{simulate, Action, Op, P2p, Schedule, Simulation, Unit};

use crate::error::{MemoryError, Result};

/// Rounds of simulate-then-charge before giving up on the waits settling.
const MAX_ROUNDS: usize = 200;

/// `schedule` (lowered) simulated with `cost` per action, its offloads and reloads moving
/// `bytes(stage, unit)` each over a link of `bandwidth` bytes per time unit per stage; returns
/// the simulation and the wait charged to each action (per stage, in list order).
pub fn simulate_with_host_link(
    schedule: &Schedule,
    cost: impl Fn(&Action) -> f64,
    bytes: impl Fn(usize, &Unit) -> f64,
    bandwidth: f64,
    p2p: &P2p,
) -> Result<(Simulation, Vec<Vec<f64>>)> {
    if bandwidth.is_nan() || bandwidth <= 0.0 {
        return Err(MemoryError::OutOfRange {
            what: "host-link bandwidth",
            value: bandwidth,
            range: "(0, ∞]",
        });
    }
    let mut waits: HashMap<Action, f64> = HashMap::new();
    for _ in 0..MAX_ROUNDS {
        let charged = |a: &Action| cost(a) + waits.get(a).copied().unwrap_or(0.0);
        let sim = simulate(schedule, charged, p2p)?;
        let per_stage: Vec<Vec<f64>> = (0..sim.timeline.len())
            .map(|s| stage_waits(&sim, s, &cost, &bytes, bandwidth))
            .collect();
        let next: HashMap<Action, f64> = sim
            .timeline
            .iter()
            .zip(&per_stage)
            .flat_map(|(timed, w)| timed.iter().zip(w).map(|(t, &w)| (t.action, w)))
            .collect();
        let settled = next
            .iter()
            .all(|(a, w)| (w - waits.get(a).copied().unwrap_or(0.0)).abs() <= 1e-9 * (1.0 + w));
        if settled {
            return Ok((sim, per_stage));
        }
        waits = next;
    }
    Err(MemoryError::Unsettled {
        what: "host-link waits",
        rounds: MAX_ROUNDS,
    })
}

/// The waits of one stage's actions on `sim`'s timeline (see the module docs).
fn stage_waits(
    sim: &Simulation,
    stage: usize,
    cost: &impl Fn(&Action) -> f64,
    bytes: &impl Fn(usize, &Unit) -> f64,
    bandwidth: f64,
) -> Vec<f64> {
    let mut link_free: f64 = 0.0;
    let mut offloads: Vec<f64> = Vec::new();
    let mut reloads: HashMap<Unit, f64> = HashMap::new();
    let mut copy = |from: f64, unit: &Unit| {
        let done = from.max(link_free) + bytes(stage, unit) / bandwidth;
        link_free = done;
        done
    };
    let latest = |done: &mut Vec<f64>| done.drain(..).fold(f64::MIN, f64::max);
    let mut waits = Vec::with_capacity(sim.timeline[stage].len());
    for t in &sim.timeline[stage] {
        let (a, u) = (&t.action, t.action.unit());
        let wait = match a.op {
            Op::Offload => {
                offloads.push(copy(t.start, &u));
                0.0
            }
            Op::Reload => {
                let wait = (latest(&mut offloads) - t.start).max(0.0);
                reloads.insert(u, copy(t.start + wait, &u));
                wait
            }
            op if op.is_compute() || op == Op::Recompute => {
                let ready = reloads.remove(&u).unwrap_or(f64::MIN);
                let before = (ready - t.start).max(0.0);
                let end = t.start + before + cost(a);
                before + (latest(&mut offloads) - end).max(0.0)
            }
            _ => 0.0,
        };
        waits.push(wait);
    }
    waits
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqpipe_schedule::{lower, Stage};

    /// One stage: F0, OFFLOAD0, F1, RELOAD0, B1, B0 with forwards of 1 and backwards of 2.
    fn one_stage() -> Schedule {
        use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
        let config = ScheduleConfig::new(ScheduleKind::GPipe, 1, 2);
        let a = |mb, op| Action::new(Stage(0), Unit::new(mb, 0, 0), op);
        let list = vec![
            a(0, Op::Forward),
            a(0, Op::Offload),
            a(1, Op::Forward),
            a(0, Op::Reload),
            a(1, Op::Backward),
            a(0, Op::Backward),
        ];
        lower(&Schedule {
            config,
            lowered: false,
            actions: vec![list],
            slice_counts: None,
        })
        .unwrap()
    }

    fn cost(a: &Action) -> f64 {
        match a.op {
            Op::Forward => 1.0,
            Op::Backward => 2.0,
            _ => 0.0,
        }
    }

    #[test]
    fn a_fast_link_hides_and_a_slow_one_waits_where_the_executor_joins() {
        let s = one_stage();
        let bytes = |_: usize, _: &Unit| 1.0;
        // Each copy takes 0.5: the offload ends inside F1, the reload inside B1.
        let (fast, waits) = simulate_with_host_link(&s, cost, bytes, 2.0, &P2p::free()).unwrap();
        assert_eq!(fast.makespan, 6.0);
        assert!(waits[0].iter().all(|&w| w == 0.0), "{waits:?}");
        // Each copy takes 3: the offload (t 1..4) is joined at F1's end (t 2): wait 2; the
        // reload starts at t 4 and ends at 7, so B0 (reached at 6) waits 1.
        let (slow, waits) =
            simulate_with_host_link(&s, cost, bytes, 1.0 / 3.0, &P2p::free()).unwrap();
        assert_eq!(waits[0], vec![0.0, 0.0, 2.0, 0.0, 0.0, 1.0]);
        assert_eq!(slow.makespan, 9.0);
    }
}
