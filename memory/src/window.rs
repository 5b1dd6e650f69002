//! The window model of elastic pipelines (InfiniPipe, SPEC §5.2) and the recomputation program
//! of any single-chunk sliced schedule built from its actual action order.
//!
//! Stage `r` of an elastic 1F1B pipeline holds at most `p − r − 1 + N_split` chunks (SPEC's
//! `d_p − p + N_split`, 1-based `p`), `N_split` the chunk count of the pipeline's longest
//! sequence. Rather than re-deriving which chunks those are, [`alive_after_forwards`] replays
//! the schedule: a unit becomes alive at its forward and dies at the backward that frees it. The
//! program then has one constraint per (stage, forward) — `Σ_alive (full − saved·ckpt) ≤ budget` —
//! and ties `ckpt(r, k)` to anti-diagonal `f2b[k] + d − 1 − r` as [`crate::recompute`] does, so
//! the same solver (exact MILP) and oracle (brute force) apply. Uniform recomputation (one
//! checkpoint count for every unit, the baselines' policy) is the feasibility scan
//! [`uniform_checkpoints`] over the same constraints, so all methods share one memory model.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{alive_after_forwards, window};
//! use seqpipe_schedule::elastic;
//! let pipeline = elastic(2, &[3, 1]).unwrap(); // a 3-chunk sequence and a 1-chunk one
//! let alive = alive_after_forwards(&pipeline.schedule);
//! let most: Vec<usize> = alive.iter().map(|s| s.iter().map(Vec::len).max().unwrap()).collect();
//! // Stage r holds at most p − r − 1 + N_split chunks.
//! assert_eq!(most, vec![window(2, 0, 3), window(2, 1, 3)]);
//! assert_eq!(most, vec![4, 3]);
//! ```

use seqpipe_schedule::{Op, Schedule, Unit};

use crate::error::{MemoryError, Result};
use crate::recompute::{ChunkMem, RecomputeProblem, StepConstraint};

/// SPEC §5.2: chunks alive on stage `stage` (0-based) of `stages` with `n_split` chunks in the
/// longest sequence: `stages − stage − 1 + n_split`.
pub fn window(stages: usize, stage: usize, n_split: usize) -> usize {
    stages.saturating_sub(stage + 1) + n_split
}

/// Units alive on each stage after each of its forwards, in forward order: `[stage][step]`.
pub fn alive_after_forwards(schedule: &Schedule) -> Vec<Vec<Vec<Unit>>> {
    schedule
        .actions
        .iter()
        .map(|list| {
            let mut alive: Vec<Unit> = Vec::new();
            let mut sets = Vec::new();
            for a in list {
                if a.op == Op::Forward {
                    alive.push(a.unit());
                    sets.push(alive.clone());
                } else if a.op.ends_unit() {
                    let u = a.unit();
                    alive.retain(|x| *x != u);
                }
            }
            sets
        })
        .collect()
}

/// Memory inputs of [`window_problem`], per unit `[mb][slice]` of a one-chunk schedule.
pub struct WindowInputs<'a> {
    /// Slices of each micro-batch.
    pub counts: &'a [u32],
    /// Memory of each unit per layer (see [`ChunkMem`]).
    pub mem: &'a [Vec<ChunkMem>],
    /// Layers on each stage (`L/d`), the upper bound of every checkpoint count.
    pub layers_per_stage: u64,
    /// Activation budget of each stage (memory minus model states).
    pub budgets: &'a [f64],
    /// Extra bytes a unit holds on the last stage only (logits), `[mb][slice]`.
    pub last_stage_fixed: &'a [Vec<f64>],
}

/// The stage count of `schedule`, once `inputs` has a budget per stage and a memory row per
/// micro-batch.
fn check_inputs(schedule: &Schedule, inputs: &WindowInputs<'_>) -> Result<usize> {
    let d = schedule.actions.len();
    crate::error::positive("stages", d as u64)?;
    if inputs.budgets.len() != d || inputs.mem.len() != inputs.counts.len() {
        return Err(MemoryError::BadSchedule {
            kind: "elastic",
            requirement: "one budget per stage and one memory row per micro-batch",
            got: format!(
                "{} budgets for {d} stages, {} rows for {} micro-batches",
                inputs.budgets.len(),
                inputs.mem.len(),
                inputs.counts.len()
            ),
        });
    }
    Ok(d)
}

/// Unit `u`'s term on stage `r`: the bytes it holds without recomputation (the last stage's
/// extra included) and what each checkpointed layer saves.
fn unit_term(inputs: &WindowInputs<'_>, r: usize, u: &Unit) -> Result<(f64, f64)> {
    let c = inputs
        .mem
        .get(u.mb.index())
        .and_then(|row| row.get(u.slice.index()))
        .ok_or_else(|| MemoryError::BadSchedule {
            kind: "elastic",
            requirement: "a memory entry for every unit",
            got: format!("none for micro-batch {} slice {}", u.mb.0, u.slice.0),
        })?;
    let mut full = c.per_layer * inputs.layers_per_stage as f64 + c.fixed;
    if r + 1 == inputs.budgets.len() {
        full += inputs.last_stage_fixed[u.mb.index()][u.slice.index()];
    }
    Ok((full, c.per_layer - c.kept_per_layer))
}

/// The recomputation program of `schedule` (one chunk per stage) under `inputs`.
pub fn window_problem(schedule: &Schedule, inputs: &WindowInputs<'_>) -> Result<RecomputeProblem> {
    let d = check_inputs(schedule, inputs)?;
    // Flat unit numbering in forward order (micro-batch-major, slices ascending) and its
    // position in the backward order (micro-batch-major, slices descending).
    let mut offset = Vec::with_capacity(inputs.counts.len());
    let mut n = 0usize;
    for &c in inputs.counts {
        offset.push(n);
        n += c as usize;
    }
    let flat = |u: &Unit| offset[u.mb.index()] + u.slice.index();
    let mut f2b = vec![0usize; n];
    let mut b = 0;
    for (mb, &c) in inputs.counts.iter().enumerate() {
        for s in (0..c as usize).rev() {
            f2b[offset[mb] + s] = b;
            b += 1;
        }
    }
    let var_of = |r: usize, k: usize| f2b[k] + d - 1 - r;
    let mut weights = vec![0u64; n + d - 1];
    let var: Vec<Vec<usize>> = (0..d)
        .map(|r| (0..n).map(|k| var_of(r, k)).collect())
        .collect();
    for row in &var {
        for &v in row {
            weights[v] += 1;
        }
    }
    let mut constraints = Vec::new();
    for (r, steps) in alive_after_forwards(schedule).into_iter().enumerate() {
        for (step, set) in steps.into_iter().enumerate() {
            let terms = set
                .iter()
                .map(|u| {
                    let (full, saved) = unit_term(inputs, r, u)?;
                    Ok((var_of(r, flat(u)), full, saved))
                })
                .collect::<Result<Vec<_>>>()?;
            constraints.push(StepConstraint {
                stage: r,
                step,
                terms,
                fixed: 0.0,
                budget: inputs.budgets[r],
            });
        }
    }
    Ok(RecomputeProblem {
        max_layers: inputs.layers_per_stage,
        weights,
        constraints,
        var,
    })
}

/// The least checkpoint count that, applied to every unit on every stage, fits (`None`: not even
/// full recomputation fits).
pub fn uniform_checkpoints(problem: &RecomputeProblem) -> Option<u64> {
    let fits = |c: u64| problem.feasible(&vec![c; problem.weights.len()]);
    if !fits(problem.max_layers) {
        return None;
    }
    // Memory only falls as `c` grows, so the least fitting count is a binary search away.
    let (mut lo, mut hi) = (0, problem.max_layers);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// [`uniform_checkpoints`] of [`window_problem`]'s program (the same count), found by replaying
/// the schedule without building the program: the pipeline-grouping DP prices thousands of
/// candidate pipelines. Each constraint sums its alive units in the program's order and is
/// checked with the same tolerance, and memory only falls as the count grows, so the least
/// count that fits them all is the largest any one of them needs.
pub fn uniform_checkpoints_replayed(
    schedule: &Schedule,
    inputs: &WindowInputs<'_>,
) -> Result<Option<u64>> {
    check_inputs(schedule, inputs)?;
    let mut count = 0u64;
    let mut alive: Vec<(Unit, f64, f64)> = Vec::new();
    for (r, list) in schedule.actions.iter().enumerate() {
        let budget = inputs.budgets[r];
        let fits = |alive: &[(Unit, f64, f64)], c: u64| {
            let terms: f64 = alive
                .iter()
                .map(|&(_, full, saved)| full - saved * c as f64)
                .sum();
            0.0 + terms <= budget + 1e-9 * budget.abs().max(1.0)
        };
        alive.clear();
        for a in list {
            if a.op == Op::Forward {
                let u = a.unit();
                let (full, saved) = unit_term(inputs, r, &u)?;
                alive.push((u, full, saved));
                while !fits(&alive, count) {
                    if count == inputs.layers_per_stage {
                        return Ok(None);
                    }
                    count += 1;
                }
            } else if a.op.ends_unit() {
                let u = a.unit();
                alive.retain(|x| x.0 != u);
            }
        }
    }
    Ok(Some(count))
}

/// Peak activation bytes of each stage under checkpoint counts `c` (per variable).
pub fn stage_peaks(problem: &RecomputeProblem, c: &[u64], stages: usize) -> Vec<f64> {
    let mut peaks = vec![0.0f64; stages];
    for k in &problem.constraints {
        peaks[k.stage] = peaks[k.stage].max(k.usage(c));
    }
    peaks
}
