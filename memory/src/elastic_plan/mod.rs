//! Elastic pipeline planning (InfiniPipe) end to end — chunking, pipelines, adaptive
//! recomputation, simulation — and the two fixed-shape baselines it is compared with, all
//! priced by one cost model and one memory model.
//!
//! A *unit* is what one stage processes in one forward: a list of document pieces
//! `(document length, start, end)`. Its time on a stage is the forward cost of its pieces (each
//! piece attends to its own document's prefix, i.e. document masking) divided over the `p`
//! stages, plus a fixed `β` per unit; backward = 2× forward; recomputing `c` of a stage's `L/p`
//! layers adds `c/(L/p)` of the unit's forward to its backward. Its memory per layer is
//! [`ActivationModel`]'s saved bytes per token; a checkpointed layer keeps its input, plus K and V
//! of pieces whose document continues in a later unit; the dK/dV accumulator of a split
//! document (sized by its prefix) is charged to the unit holding its last piece; logits sit on
//! the last stage. Budgets are device memory minus each stage's model states.
//!
//! - Elastic ([`plan_elastic`]): for each slice count `K`, chunk the batch (SPEC §2.3) with the
//!   token budget the stage-0 window (`p − 1 + K` chunks, no recomputation) allows, order groups
//!   longest first, split them into pipelines by the DP of SPEC §3 whose group cost is the
//!   simulated makespan under uniform recomputation (an upper bound of `T_ckpt`), then give each
//!   chosen pipeline the exact adaptive plan (MILP) and keep the faster of the two. Best `K` wins.
//! - Baselines ([`plan_packed`]): first-fit-decreasing packing into context-length buffers, one
//!   buffer per micro-batch, cut into `n` Seq1F1B slices at the balanced boundaries of a full
//!   buffer (`n = 1`: plain 1F1B), the least uniform recomputation that fits, best `n` wins.
//!   Slices past a short buffer's end cost only `β` (no padding is charged).
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{default_setup, pack, plan_elastic, plan_packed};
//! // First-fit-decreasing packing, as the baselines fill their context-length buffers.
//! assert_eq!(pack(&[5, 9, 3, 7, 1], 10), vec![vec![9, 1], vec![7, 3], vec![5]]);
//! let setup = default_setup(4, 48 * 1024).unwrap(); // Llama-7B, TP 4, 80 GiB per GPU, p = 4
//! let lengths = [40_000, 12_000, 6_000, 3_000, 1_500, 800];
//! let (elastic, chunking) = plan_elastic(&lengths, &setup, &[2, 4]).unwrap().unwrap();
//! assert_eq!(chunking.chunks.iter().map(|c| c.tokens()).sum::<u64>(), 63_300);
//! let packed = plan_packed(&lengths, &setup, &[1]).unwrap().unwrap();
//! assert_eq!((elastic.slices, elastic.pipelines.len()), (4, 1)); // K = 4, one pipeline
//! assert!(elastic.peaks.iter().all(|&bytes| bytes <= setup.device_bytes));
//! // Half the iteration time of context-length buffers under plain 1F1B.
//! let seconds = (elastic.iteration_time, packed.iteration_time);
//! assert_eq!(format!("{:.2} s, {:.2} s", seconds.0, seconds.1), "1.05 s, 2.13 s");
//! ```

use std::ops::Range;

use seqpipe_schedule::{elastic, longest_first, simulate_span, Op, P2p, Schedule, Span};
use seqpipe_slicing::{balanced, chunk, Chunking, CostModel, CostUnit};
use serde::Serialize;

use crate::activation::{ActivationModel, RecomputePolicy};
use crate::error::{MemoryError, Result};
use crate::pipeline::StageLayout;
use crate::recompute::{ChunkMem, RecomputeProblem};
use crate::states::{model_states, StateOptions};
use crate::window::{stage_peaks, uniform_checkpoints, window_problem, WindowInputs};

/// A document piece: `(document length, start, end)`.
pub type DocPiece = (u64, u64, u64);

mod packed;
mod price;

pub use packed::{pack, plan_packed};
use price::{split_into_pipelines, RowPrices};

/// Per unit `[mb][slice]`: memory per layer, and logits bytes on the last stage.
type UnitRows = (Vec<Vec<ChunkMem>>, Vec<Vec<f64>>);

/// One pipeline ready to plan: schedule, slice counts, and the pieces of every unit `[mb][slice]`.
type Pipeline = (Schedule, Vec<u32>, Vec<Vec<Vec<DocPiece>>>);

/// Hardware, model and pipeline shared by every method.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSetup {
    /// Model and parallelism (TP/CP divide activations).
    pub activation: ActivationModel,
    /// Pipeline stages `p`.
    pub stages: usize,
    /// Context length (packing capacity of the baselines).
    pub context: u64,
    /// Device memory in bytes.
    pub device_bytes: f64,
    /// Achieved FLOP/s of one GPU.
    pub flops_per_second: f64,
    /// Fixed time per unit per stage (kernel launches, p2p latency), seconds.
    pub per_unit_seconds: f64,
    /// Weights, gradients, optimizer.
    pub states: StateOptions,
}

/// What one pipeline run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineRun {
    /// Simulated makespan (seconds).
    pub makespan: f64,
    /// Busy time summed over stages.
    pub busy: f64,
    /// Peak activation bytes per stage (excluding model states).
    pub peaks: Vec<f64>,
    /// Recomputed layer-forwards over all (stage, unit).
    pub recomputed_layers: u64,
    /// Checkpointed layers summed over the units of each stage (the recomputation plan).
    pub checkpointed: Vec<u64>,
    /// Whether the adaptive (MILP) plan was used; `false`: uniform.
    pub adaptive: bool,
}

/// A method's result for one batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodResult {
    /// Slice count `K` (elastic) or `n` (baselines).
    pub slices: usize,
    /// Pipelines run one after another (baselines: 1).
    pub pipelines: Vec<PipelineRun>,
    /// Units (chunks or slices) per pipeline.
    pub units: Vec<usize>,
    /// `Σ makespan`.
    pub iteration_time: f64,
    /// Idle share of `p × iteration time`.
    pub bubble_ratio: f64,
    /// Peak bytes per stage including model states.
    pub peaks: Vec<f64>,
    /// Uniform checkpointed layers (baselines; elastic: the uniform fallback's, if used).
    pub checkpoint_layers: Option<u64>,
}

impl PlanSetup {
    /// Layers per stage `L/p` (must divide).
    pub fn layers_per_stage(&self) -> Result<u64> {
        StageLayout::new(self.stages as u64, 1)?.layers_per_stage(&self.activation.shape)
    }

    /// Per-stage time model: the model's FLOPs over `p` stages, TP ranks and achieved FLOP/s.
    pub fn cost(&self) -> Result<CostModel> {
        let flops = CostModel::flops(&self.activation.shape)?;
        let scale =
            1.0 / (self.stages as f64 * self.activation.parallel.tp as f64 * self.flops_per_second);
        Ok(CostModel {
            per_pair: flops.per_pair * scale,
            per_token: flops.per_token * scale,
            per_slice: self.per_unit_seconds,
            backward_factor: 2.0,
            unit: CostUnit::Seconds,
        }
        .validated()?)
    }

    /// Activation budget per stage: device memory minus model states.
    pub fn budgets(&self) -> Result<Vec<f64>> {
        let layout = StageLayout::new(self.stages as u64, 1)?;
        let states = model_states(
            &self.activation.shape,
            &layout,
            &self.activation.parallel,
            &self.states,
        )?;
        Ok(states
            .iter()
            .map(|s| self.device_bytes - s.total())
            .collect())
    }

    /// Memory of a unit per layer, and its logits bytes on the last stage.
    pub fn unit_mem(&self, pieces: &[DocPiece]) -> Result<(ChunkMem, f64)> {
        let act = &self.activation.with_recompute(RecomputePolicy::None);
        let full = self.activation.with_recompute(RecomputePolicy::Full);
        let layers = self.layers_per_stage()? as f64;
        let tokens: u64 = pieces.iter().map(|p| p.2 - p.1).sum();
        let continuing: u64 = pieces.iter().filter(|p| p.2 < p.0).map(|p| p.2 - p.1).sum();
        let fixed: f64 = pieces
            .iter()
            .filter(|p| p.1 > 0 && p.2 == p.0)
            .map(|p| act.dkv_accumulator_bytes_per_layer(p.1) * layers)
            .sum();
        let mem = ChunkMem {
            sequence: 0,
            per_layer: act.bytes_per_token_layer() * tokens as f64,
            kept_per_layer: full.bytes_per_token_layer() * tokens as f64
                + full.kv_prefix_bytes_per_layer(continuing, true),
            fixed,
        };
        Ok((mem, act.logits_bytes(tokens, self.stages as u64)))
    }

    /// Forward time of a unit on one stage.
    pub fn unit_time(&self, cost: &CostModel, pieces: &[DocPiece]) -> f64 {
        let work: f64 = pieces
            .iter()
            .map(|&(_, s, e)| cost.forward(s, e) - cost.per_slice)
            .sum();
        work + cost.per_slice
    }

    /// Per unit `[mb][slice]`: its memory per layer, and its logits bytes on the last stage.
    fn unit_rows(&self, units: &[Vec<Vec<DocPiece>>]) -> Result<UnitRows> {
        let mut mem = Vec::with_capacity(units.len());
        let mut logits = Vec::with_capacity(units.len());
        for row in units {
            let (m, l): (Vec<ChunkMem>, Vec<f64>) = row
                .iter()
                .map(|u| self.unit_mem(u))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip();
            mem.push(m);
            logits.push(l);
        }
        Ok((mem, logits))
    }

    /// Recomputation program of `schedule` over `units[mb][slice]`.
    fn problem(
        &self,
        schedule: &Schedule,
        counts: &[u32],
        units: &[Vec<Vec<DocPiece>>],
    ) -> Result<RecomputeProblem> {
        let (mem, logits) = self.unit_rows(units)?;
        let budgets = self.budgets()?;
        window_problem(
            schedule,
            &WindowInputs {
                counts,
                mem: &mem,
                layers_per_stage: self.layers_per_stage()?,
                budgets: &budgets,
                last_stage_fixed: &logits,
            },
        )
    }

    /// Simulates `schedule` with forward times `times[mb][slice]` and `checkpoints(stage, unit)`
    /// layers checkpointed per unit (units numbered micro-batch-major, slices ascending).
    fn simulate_with(
        &self,
        schedule: &Schedule,
        counts: &[u32],
        times: &[&[f64]],
        checkpoints: impl Fn(usize, usize) -> u64,
    ) -> Result<Span> {
        let cost = self.cost()?;
        let l = self.layers_per_stage()? as f64;
        let mut offset = vec![0usize; counts.len()];
        for mb in 1..counts.len() {
            offset[mb] = offset[mb - 1] + counts[mb - 1] as usize;
        }
        let duration = |a: &seqpipe_schedule::Action| {
            let f = times[a.mb.index()][a.slice.index()];
            match a.op {
                Op::Forward => f,
                Op::Backward => {
                    let k = offset[a.mb.index()] + a.slice.index();
                    let c = checkpoints(a.stage.index(), k) as f64;
                    cost.backward_factor * f + f * c / l
                }
                _ => 0.0,
            }
        };
        simulate_span(schedule, duration, &P2p::free()).map_err(|e| schedule_error(e.to_string()))
    }

    /// Simulates `schedule` with checkpoint counts `diagonal` (one per program variable).
    fn run(
        &self,
        schedule: &Schedule,
        counts: &[u32],
        units: &[Vec<Vec<DocPiece>>],
        problem: &RecomputeProblem,
        diagonal: &[u64],
        adaptive: bool,
    ) -> Result<PipelineRun> {
        let cost = self.cost()?;
        let times: Vec<Vec<f64>> = units
            .iter()
            .map(|row| row.iter().map(|u| self.unit_time(&cost, u)).collect())
            .collect();
        let times: Vec<&[f64]> = times.iter().map(Vec::as_slice).collect();
        let span =
            self.simulate_with(schedule, counts, &times, |r, k| diagonal[problem.var[r][k]])?;
        let recomputed_layers = diagonal
            .iter()
            .zip(&problem.weights)
            .map(|(c, w)| c * w)
            .sum();
        let checkpointed = problem
            .var
            .iter()
            .map(|row| row.iter().map(|&v| diagonal[v]).sum())
            .collect();
        Ok(PipelineRun {
            checkpointed,
            makespan: span.makespan,
            busy: span.busy.iter().sum(),
            peaks: stage_peaks(problem, diagonal, self.stages),
            recomputed_layers,
            adaptive,
        })
    }

    /// Uniform-recomputation run of a pipeline, `None` if even full recomputation does not fit.
    fn run_uniform(
        &self,
        schedule: &Schedule,
        counts: &[u32],
        units: &[Vec<Vec<DocPiece>>],
    ) -> Result<Option<(PipelineRun, u64, RecomputeProblem)>> {
        let problem = self.problem(schedule, counts, units)?;
        let Some(c) = uniform_checkpoints(&problem) else {
            return Ok(None);
        };
        let diagonal = vec![c; problem.weights.len()];
        let run = self.run(schedule, counts, units, &problem, &diagonal, false)?;
        Ok(Some((run, c, problem)))
    }

    fn result(
        &self,
        slices: usize,
        runs: Vec<PipelineRun>,
        units: Vec<usize>,
        ckpt: Option<u64>,
    ) -> Result<MethodResult> {
        let iteration_time: f64 = runs.iter().map(|r| r.makespan).sum();
        let busy: f64 = runs.iter().map(|r| r.busy).sum();
        let states = self.budgets()?;
        let peaks = (0..self.stages)
            .map(|s| {
                let act = runs.iter().map(|r| r.peaks[s]).fold(0.0, f64::max);
                act + self.device_bytes - states[s]
            })
            .collect();
        Ok(MethodResult {
            slices,
            units,
            bubble_ratio: 1.0 - busy / (self.stages as f64 * iteration_time),
            iteration_time,
            pipelines: runs,
            peaks,
            checkpoint_layers: ckpt,
        })
    }
}

fn schedule_error(got: String) -> MemoryError {
    MemoryError::BadSchedule {
        kind: "elastic",
        requirement: "a schedule that generates and simulates",
        got,
    }
}

/// Elastic planning of one batch: the best `K` of `slice_candidates` (see the module docs).
/// `Ok(None)` when no candidate fits memory.
pub fn plan_elastic(
    lengths: &[u64],
    setup: &PlanSetup,
    slice_candidates: &[usize],
) -> Result<Option<(MethodResult, Chunking)>> {
    let mut best: Option<(MethodResult, Chunking)> = None;
    for &k in slice_candidates {
        if let Some(found) = elastic_with_slices(lengths, setup, k)? {
            if best
                .as_ref()
                .is_none_or(|b| found.0.iteration_time < b.0.iteration_time)
            {
                best = Some(found);
            }
        }
    }
    Ok(best)
}

/// The token budget `T_m`: the most tokens per chunk for which the stage-0 window of
/// `p − 1 + K` chunks fits without recomputation (at least one token).
pub fn token_budget(setup: &PlanSetup, k: usize) -> Result<u64> {
    let per_token = setup
        .activation
        .with_recompute(RecomputePolicy::None)
        .bytes_per_token_layer()
        * setup.layers_per_stage()? as f64;
    let window = (setup.stages - 1 + k) as f64;
    let budget = setup.budgets()?[0];
    Ok(((budget / (window * per_token)).floor() as u64).max(1))
}

/// Elastic planning with a fixed `K`, trying two token budgets: the memory-derived one
/// ([`token_budget`]) and the largest mesh slice. The SPEC's packing rule raises `T_t` rather
/// than open a bucket while any bucket has token room, so a generous `T_m` trades balance for
/// fewer chunks; the tighter budget keeps chunks near `T_t`. The faster plan wins.
pub fn elastic_with_slices(
    lengths: &[u64],
    setup: &PlanSetup,
    k: usize,
) -> Result<Option<(MethodResult, Chunking)>> {
    let cost = setup.cost()?;
    let longest = lengths.iter().copied().max().unwrap_or(0);
    if k == 0 || k as u64 > longest {
        return Ok(None);
    }
    let first = balanced(longest, k, 1, &cost)?.lengths()[0];
    let roomy = token_budget(setup, k)?.max(first);
    let mut best: Option<(MethodResult, Chunking)> = None;
    for t_m in if roomy > first {
        vec![roomy, first]
    } else {
        vec![first]
    } {
        if let Some(found) = elastic_with_budget(lengths, setup, k, t_m)? {
            if best
                .as_ref()
                .is_none_or(|b| found.0.iteration_time < b.0.iteration_time)
            {
                best = Some(found);
            }
        }
    }
    Ok(best)
}

/// Elastic planning with a fixed `K` and token budget `T_m`.
pub fn elastic_with_budget(
    lengths: &[u64],
    setup: &PlanSetup,
    k: usize,
    t_m: u64,
) -> Result<Option<(MethodResult, Chunking)>> {
    let cost = setup.cost()?;
    let chunking = chunk(lengths, &cost, k, t_m)?;
    let groups = chunking.groups();
    let counts: Vec<u32> = groups.iter().map(|g| g.len() as u32).collect();
    let order = longest_first(&counts);
    let pieces_of = |g: &Vec<usize>| -> Vec<Vec<DocPiece>> {
        g.iter()
            .map(|&c| {
                chunking.chunks[c]
                    .pieces
                    .iter()
                    .map(|p| (lengths[p.seq], p.start, p.end))
                    .collect()
            })
            .collect()
    };
    let pipeline = |range: Range<usize>| -> Result<Pipeline> {
        let sub: Vec<u32> = order[range.clone()].iter().map(|&i| counts[i]).collect();
        let e = elastic(setup.stages as u32, &sub).map_err(|e| schedule_error(e.to_string()))?;
        let units = e
            .order
            .iter()
            .map(|&j| pieces_of(&groups[order[range.start + j]]))
            .collect();
        Ok((e.schedule, e.slice_counts, units))
    };
    let prices: Vec<RowPrices> = groups
        .iter()
        .map(|g| setup.row_prices(&cost, &pieces_of(g)))
        .collect::<Result<_>>()?;
    let Some(grouping) = split_into_pipelines(setup, &order, &counts, &prices)? else {
        return Ok(None); // some sequence fits no pipeline even with full recomputation
    };
    let mut runs = Vec::new();
    let mut units_per = Vec::new();
    let mut fallback = None;
    for range in grouping.groups {
        let (schedule, sub, units) = pipeline(range)?;
        let Some((uniform, c, problem)) = setup.run_uniform(&schedule, &sub, &units)? else {
            return Ok(None);
        };
        // Without recomputation there is nothing to adapt. Past MAX_MILP_VARIABLES the
        // branch-and-bound can take minutes (a 200-sequence batch did not finish in two), so
        // larger programs take the relaxation's polynomial plan.
        let adaptive = if c == 0 {
            None
        } else {
            let solved = if problem.weights.len() <= MAX_MILP_VARIABLES {
                problem.solve()
            } else {
                problem.solve_relaxed()
            };
            match solved {
                Ok(plan) => {
                    Some(setup.run(&schedule, &sub, &units, &problem, &plan.diagonal, true)?)
                }
                Err(_) => None,
            }
        };
        units_per.push(sub.iter().sum::<u32>() as usize);
        match adaptive {
            Some(a) if a.makespan <= uniform.makespan => runs.push(a),
            _ => {
                fallback = Some(fallback.map_or(c, |f: u64| f.max(c)));
                runs.push(uniform);
            }
        }
    }
    Ok(Some((
        setup.result(k, runs, units_per, fallback)?,
        chunking,
    )))
}

/// Largest recomputation program (anti-diagonal variables) solved exactly by the MILP; larger
/// ones are planned from the linear relaxation ([`crate::RecomputeProblem::solve_relaxed`]).
pub const MAX_MILP_VARIABLES: usize = 16;

/// Largest number of sequence groups the DP puts in one pipeline (bounds its `O(n²)` cost).
pub const MAX_GROUP: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elastic_compare::default_setup;

    /// The grouping DP's price of a pipeline is the uniform run's makespan, bit for bit, where
    /// the run needs no recomputation, some, and more than full recomputation can give.
    #[test]
    fn the_dps_price_is_the_uniform_runs_makespan() {
        let mut seen = (0, 0, 0);
        for device_gib in [80.0, 24.0, 16.0, 12.0, 10.0, 9.0, 8.0] {
            let setup = PlanSetup {
                device_bytes: device_gib * crate::peak::GIB,
                ..default_setup(4, 64 * 1024).unwrap()
            };
            for counts in [
                vec![1u32],
                vec![3, 1, 1],
                vec![4, 2, 2, 1, 1, 1],
                vec![2; 7],
            ] {
                let e = elastic(4, &counts).unwrap();
                // Micro-batch `mb`'s units: a document of 8K tokens per unit, cut evenly, and a
                // short whole one beside each.
                let units: Vec<Vec<Vec<DocPiece>>> = e
                    .slice_counts
                    .iter()
                    .enumerate()
                    .map(|(mb, &n)| {
                        let doc = u64::from(n) * 8192;
                        (0..u64::from(n))
                            .map(|s| {
                                vec![
                                    (doc, s * 8192, (s + 1) * 8192),
                                    (512 + mb as u64, 0, 512 + mb as u64),
                                ]
                            })
                            .collect()
                    })
                    .collect();
                let (s, c) = (&e.schedule, &e.slice_counts);
                let cost = setup.cost().unwrap();
                let rows: Vec<RowPrices> = units
                    .iter()
                    .map(|row| setup.row_prices(&cost, row).unwrap())
                    .collect();
                let rows: Vec<&RowPrices> = rows.iter().collect();
                let price = setup.uniform_makespan(s, c, &rows).unwrap();
                let run = setup.run_uniform(s, c, &units).unwrap();
                match (price, run) {
                    (Some(p), Some((run, checkpoints, _))) => {
                        assert_eq!(p.to_bits(), run.makespan.to_bits());
                        match checkpoints {
                            0 => seen.0 += 1,
                            _ => seen.1 += 1,
                        }
                    }
                    (None, None) => seen.2 += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert!(seen.0 > 0 && seen.1 > 0 && seen.2 > 0, "{seen:?}");
    }
}
