//! SlimPipe's attention context exchange as a pass (SPEC §4): the causal attention of a
//! slice grows with the slices before it, so with uniform slices the ranks of a pipeline step
//! carry unequal work. At each step the ranks are paired by attention load (the cache length
//! `L`, slices before theirs, twice as heavy in a backward), the j-th lightest with the j-th
//! heaviest, and the heavy one hands the oldest slices of its prefix, half the difference, to
//! the light one, which attends to them for it. [`insert_exchange`] marks both computes with a
//! [`Pair`].
//!
//! Steady forwards come after the stage's first backward, steady backwards before its last
//! forward: no rank in warm-up or cool-down is paired, as in the paper. The backward pieces
//! paired are those that make the input gradient (`B` or `I`). Unlike the paper's lock-step
//! steps, a step here is an instant of the simulated timeline, so a forward may pair with a
//! backward: partners that run together wait for nothing.
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

/// Whether position `i` of `list` is a steady compute: a forward after the stage's first
/// backward, or an input-gradient backward before its last forward.
fn steady(list: &[Action], i: usize) -> bool {
    let first_backward = list.iter().position(|a| a.op.makes_input_grad());
    let last_forward = list.iter().rposition(|a| a.op == Op::Forward);
    match list[i].op {
        Op::Forward => first_backward.is_some_and(|b| b < i),
        op if op.makes_input_grad() => last_forward.is_some_and(|f| i < f),
        _ => false,
    }
}

/// `schedule` (lowered) with its pairs marked (existing marks are replaced). A step is an
/// instant of the timeline simulated under `cost`: the start of a steady compute. The stages
/// running an unpaired steady compute then (a forward or a backward: a light side serves
/// whatever it runs itself) are paired by attention load, and each pair is kept only if the
/// schedule still validates (partners meet in the same order on both sides, the dry run
/// finishes). Partners then run at the same time, so meeting costs no wait where the timeline
/// holds. One stage, or one slice per sequence, leaves nothing to move.
pub fn insert_exchange<F: Fn(&Action) -> f64>(schedule: &Schedule, cost: F) -> Result<Schedule> {
    let mut out = strip_exchange(schedule);
    let sim = simulate(&out, &cost, &P2p::free())?;
    let mut spans = Vec::new();
    for (r, timed) in sim.timeline.iter().enumerate() {
        for (i, t) in timed.iter().enumerate() {
            if steady(&out.actions[r], i) {
                spans.push((t.start, t.end, r, i));
            }
        }
    }
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    let starts: Vec<f64> = spans.iter().map(|s| s.0).collect();
    for t in starts {
        let mut step: Vec<(usize, usize)> = Vec::new();
        for &(start, end, r, i) in &spans {
            let free = out.actions[r][i].pair.is_none();
            if start <= t && t < end && free && step.iter().all(|&(q, _)| q != r) {
                step.push((r, i));
            }
        }
        pair_step(&mut out, &step, &cost);
    }
    Ok(out)
}

/// The attention load of a compute: its slice's cache length plus half a slice, twice that for
/// a backward (which computes the scores again and their gradients).
fn load(a: &Action) -> f64 {
    let per_slice = if a.op == Op::Forward { 1.0 } else { 2.0 };
    per_slice * (f64::from(a.slice.0) + 0.5)
}

/// Pairs one step's computes `(stage, position)`, the heaviest with the lightest, the heavy
/// side handing half the difference (in its slices, at most its cache length); a pair that
/// breaks a rule is undone.
fn pair_step<F: Fn(&Action) -> f64>(s: &mut Schedule, at: &[(usize, usize)], cost: &F) {
    let mut by_load: Vec<(f64, usize, usize)> = at
        .iter()
        .map(|&(r, i)| (load(&s.actions[r][i]), r, i))
        .collect();
    by_load.sort_by(|a, b| a.0.total_cmp(&b.0));
    let p = by_load.len();
    for j in 0..p / 2 {
        let (light, heavy) = (by_load[j], by_load[p - 1 - j]);
        let h = &s.actions[heavy.1][heavy.2];
        let per_slice = load(h) / (f64::from(h.slice.0) + 0.5);
        let head = (((heavy.0 - light.0) / (2.0 * per_slice)) as u32).min(h.slice.0);
        if head == 0 {
            continue;
        }
        let backward = h.op != Op::Forward;
        s.actions[heavy.1][heavy.2].pair = Some(Pair {
            peer: Stage(light.1 as u32),
            head,
            backward,
        });
        s.actions[light.1][light.2].pair = Some(Pair {
            peer: Stage(heavy.1 as u32),
            head: 0,
            backward,
        });
        if !(validate(s).is_empty() && simulate(s, cost, &P2p::free()).is_ok()) {
            s.actions[heavy.1][heavy.2].pair = None;
            s.actions[light.1][light.2].pair = None;
        }
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
