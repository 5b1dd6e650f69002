//! SlimPipe's attention context exchange as a pass (SPEC §4): the causal attention of a
//! slice grows with the slices before it, so with uniform slices the ranks of a pipeline step
//! carry unequal work. At each steady step the ranks are paired by the cache lengths `L` (slices
//! before theirs) of the units they run, the j-th smallest with the j-th largest, and the heavy
//! one hands the oldest `⌊(L_heavy − L_light)/2⌋` slices of its prefix to the light one, which
//! attends to them for it. [`insert_exchange`] marks both computes with a [`Pair`].
//!
//! A step is an instant of the schedule's simulated timeline: the stages running a steady
//! forward then (after the stage's first backward; or a steady backward, before its last
//! forward) are paired among themselves, so no rank in warm-up or cool-down is paired, as in the
//! paper. The backward pieces paired are those that make the input gradient (`B` or `I`).
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::*;
//! let config = ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 2).with_slices(8);
//! let costs = UnitCosts::new(1.0, 2.0);
//! let lowered = lower(&generate(&config).unwrap()).unwrap();
//! let s = insert_exchange(&lowered, |a| costs.cost(a)).unwrap();
//! assert!(validate(&s).is_empty());
//! let heavy = s.actions.iter().flatten().filter(|a| a.pair.is_some_and(|p| p.head > 0));
//! assert!(heavy.count() > 0);
//! ```

use crate::action::{Action, Op, Pair};
use crate::error::Result;
use crate::ids::Stage;
use crate::schedule::Schedule;
use crate::simulate::{simulate, P2p};

/// Whether position `i` of `list` is a steady forward (after the stage's first backward) or,
/// for `backward`, a steady input-gradient backward (before the stage's last forward).
fn steady(list: &[Action], i: usize, backward: bool) -> bool {
    let first_backward = list.iter().position(|a| a.op.makes_input_grad());
    let last_forward = list.iter().rposition(|a| a.op == Op::Forward);
    match backward {
        false => list[i].op == Op::Forward && first_backward.is_some_and(|b| b < i),
        true => list[i].op.makes_input_grad() && last_forward.is_some_and(|f| i < f),
    }
}

/// `schedule` (lowered) with its pairs marked (existing marks are replaced): at the start of
/// every steady compute in the timeline simulated under `cost`, the stages running a steady
/// compute of the same direction at that instant, not yet paired, are paired by cache length.
/// Partners run at the same time in that timeline, so meeting adds no deadlock (the validator's
/// dry run checks). One stage, or one slice per sequence, leaves nothing to move.
pub fn insert_exchange<F: Fn(&Action) -> f64>(schedule: &Schedule, cost: F) -> Result<Schedule> {
    let mut out = strip_exchange(schedule);
    let sim = simulate(&out, &cost, &P2p::free())?;
    for backward in [false, true] {
        // Every steady compute: (start, end, stage, position).
        let mut spans = Vec::new();
        for (r, timed) in sim.timeline.iter().enumerate() {
            for (i, t) in timed.iter().enumerate() {
                if steady(&out.actions[r], i, backward) {
                    spans.push((t.start, t.end, r, i));
                }
            }
        }
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut used = vec![false; spans.len()];
        for &(t, ..) in &spans {
            let mut step: Vec<(usize, usize)> = Vec::new();
            for (j, &(start, end, r, i)) in spans.iter().enumerate() {
                let running = start <= t && t < end && !used[j];
                if running && step.iter().all(|&(q, _)| q != r) {
                    step.push((r, i));
                    used[j] = true;
                }
            }
            pair_step(&mut out, &step);
        }
    }
    Ok(out)
}

/// Pairs one step's computes `(stage, position)` by their units' cache lengths.
fn pair_step(s: &mut Schedule, at: &[(usize, usize)]) {
    let mut by_length: Vec<(u32, usize, usize)> = at
        .iter()
        .map(|&(r, i)| (s.actions[r][i].slice.0, r, i))
        .collect();
    by_length.sort_unstable();
    let p = by_length.len();
    for j in 0..p / 2 {
        let (light, heavy) = (by_length[j], by_length[p - 1 - j]);
        let head = (heavy.0 - light.0) / 2;
        if head == 0 {
            continue;
        }
        s.actions[heavy.1][heavy.2].pair = Some(Pair {
            peer: Stage(light.1 as u32),
            head,
        });
        s.actions[light.1][light.2].pair = Some(Pair {
            peer: Stage(heavy.1 as u32),
            head: 0,
        });
    }
}

/// `schedule` with no exchange marks.
pub fn strip_exchange(schedule: &Schedule) -> Schedule {
    let mut out = schedule.clone();
    for a in out.actions.iter_mut().flatten() {
        a.pair = None;
    }
    out
}
