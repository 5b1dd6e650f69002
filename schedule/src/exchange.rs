//! SlimPipe's attention context exchange as a pass (SPEC §4): the causal attention of a
//! slice grows with the slices before it, so with uniform slices the ranks of a pipeline step
//! carry unequal work. At each steady step the ranks are paired by the cache lengths `L` (slices
//! before theirs) of the units they run, the j-th smallest with the j-th largest, and the heavy
//! one hands the oldest `⌊(L_heavy − L_light)/2⌋` slices of its prefix to the light one, which
//! attends to them for it. [`insert_exchange`] marks both computes with a [`Pair`].
//!
//! Steady forwards come after the stage's first backward, steady backwards before its last
//! forward: no rank in warm-up or cool-down is paired, as in the paper (see [`insert_exchange`]
//! for the steps). The backward pieces paired are those that make the input gradient (`B` or
//! `I`).
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
use crate::validate::validate;

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

/// `schedule` (lowered) with its pairs marked (existing marks are replaced). Forward steps are
/// logical: the k-th steady forward of every stage. Backward steps are instants of the timeline
/// simulated under `cost`: the stages running a steady backward at the start of one (unpaired
/// yet) form a step; the k-th backwards cannot pair, as a stage's backward waits for the next
/// stage's backward of the same unit. A step whose pairs would make the program deadlock (the
/// partners meet, so each waits for the other) or meet two partners in different orders is left
/// unpaired, so the result always runs.
/// One stage, or one slice per sequence, leaves nothing to move.
pub fn insert_exchange<F: Fn(&Action) -> f64>(schedule: &Schedule, cost: F) -> Result<Schedule> {
    let mut out = strip_exchange(schedule);
    // A step is kept only if every rule still holds: partners meet in the same order on both
    // sides, and the dry run finishes.
    let runs = |s: &Schedule| validate(s).is_empty() && simulate(s, &cost, &P2p::free()).is_ok();
    let positions: Vec<Vec<usize>> = out
        .actions
        .iter()
        .map(|list| {
            (0..list.len())
                .filter(|&i| steady(list, i, false))
                .collect()
        })
        .collect();
    let steps = positions.iter().map(Vec::len).min().unwrap_or(0);
    let mut chosen: Vec<Vec<(usize, usize)>> = (0..steps)
        .map(|k| positions.iter().map(|p| p[k]).enumerate().collect())
        .collect();
    chosen.extend(backward_steps(&out, &cost)?);
    for at in chosen {
        let before = out.clone();
        if pair_step(&mut out, &at) && !runs(&out) {
            out = before;
        }
    }
    Ok(out)
}

/// The backward steps: at the start of each steady backward in the simulated timeline, the
/// stages running an unclaimed steady backward then.
fn backward_steps<F: Fn(&Action) -> f64>(
    s: &Schedule,
    cost: &F,
) -> Result<Vec<Vec<(usize, usize)>>> {
    let sim = simulate(s, cost, &P2p::free())?;
    let mut spans = Vec::new();
    for (r, timed) in sim.timeline.iter().enumerate() {
        for (i, t) in timed.iter().enumerate() {
            if steady(&s.actions[r], i, true) {
                spans.push((t.start, t.end, r, i));
            }
        }
    }
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut used = vec![false; spans.len()];
    let mut steps = Vec::new();
    for &(t, ..) in &spans {
        let mut step: Vec<(usize, usize)> = Vec::new();
        for (j, &(start, end, r, i)) in spans.iter().enumerate() {
            if start <= t && t < end && !used[j] && step.iter().all(|&(q, _)| q != r) {
                step.push((r, i));
                used[j] = true;
            }
        }
        if step.len() > 1 {
            steps.push(step);
        }
    }
    Ok(steps)
}

/// Pairs one step's computes `(stage, position)` by their units' cache lengths; whether any
/// pair was made.
fn pair_step(s: &mut Schedule, at: &[(usize, usize)]) -> bool {
    let mut by_length: Vec<(u32, usize, usize)> = at
        .iter()
        .map(|&(r, i)| (s.actions[r][i].slice.0, r, i))
        .collect();
    by_length.sort_unstable();
    let p = by_length.len();
    let mut paired = false;
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
        paired = true;
    }
    paired
}

/// `schedule` with no exchange marks.
pub fn strip_exchange(schedule: &Schedule) -> Schedule {
    let mut out = schedule.clone();
    for a in out.actions.iter_mut().flatten() {
        a.pair = None;
    }
    out
}
