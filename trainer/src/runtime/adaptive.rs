//! `recompute = auto`: InfiniPipe's adaptive recomputation (SPEC §5.2) at run time.
//!
//! The memory crate's recomputation program of the schedule as the ranks run it
//! (`seqpipe_memory::schedule_program`) is built from the runtime's own ledger: what each stage
//! holds during each action with nothing recomputed (`predict`'s `held_in_action`, model
//! states added) and what each layer recomputed whole removes from each unit's record until
//! its `RECOMPUTE` (`predict::recompute_savings`). Held bytes are linear in the per-(stage,
//! unit) layer counts, so the program's constraints are the ledger's prediction itself, and its
//! optimum — the fewest recomputed layers whose predicted peak fits the budget on every stage —
//! is solved exactly by MILP up to [`EXACT_VARIABLES`] variables and from its linear relaxation
//! beyond (a feasible plan, at most the rounded relaxation's cost). [`fit`] then checks the
//! chosen plan against the ledger run with its `RECOMPUTE`s, the prediction the measurement is
//! checked against.

use std::fmt;
use std::ops::Range;

use seqpipe_memory::{
    schedule_program, MemoryError, ProgramInputs, RecomputeProblem, ScheduleProgram,
};
use seqpipe_schedule::{Lowered, Unit};

use super::budget::{predicted_stage_peaks, with_memory_actions};
use super::partition::Partition;
use super::recompute::Recompute;
use super::worker::{Granularity, StageRecompute};
use crate::config::TrainConfig;
use crate::error::{fail, Error, Result};
use crate::predict::{predict, recompute_savings, PredictInput};

/// Programs with at most this many variables are solved exactly (branch and bound); larger
/// ones from the relaxation, which takes polynomial time.
pub const EXACT_VARIABLES: usize = 16;

/// Layers recomputed whole per (stage, unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdaptivePlan {
    /// `(unit, layers recomputed whole)` per stage; units not listed keep their whole record.
    pub layers: Vec<Vec<(Unit, u32)>>,
    /// Layers recomputed per step, over every stage.
    pub recomputed_layers: u64,
    /// Whether the program was solved exactly (else from its relaxation).
    pub exact: bool,
}

impl AdaptivePlan {
    /// Stages planned for.
    pub fn stages(&self) -> usize {
        self.layers.len()
    }

    /// Units recomputed per step, over every stage.
    pub fn units(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }

    /// What stage `stage`'s units drop, checked against the fewest layers of its chunks.
    pub fn stage(&self, stage: usize, chunk_layers: usize) -> Result<StageRecompute> {
        let Some(units) = self.layers.get(stage) else {
            fail!(
                Config,
                "recompute = auto was planned for {} stages; stage {stage} is not one of them",
                self.stages()
            );
        };
        if let Some((u, n)) = units.iter().find(|(_, n)| *n as usize > chunk_layers) {
            fail!(
                Config,
                "recompute = auto recomputes {n} layers of {u:?} on stage {stage}, whose chunks \
                 have {chunk_layers}: at most {chunk_layers}"
            );
        }
        Ok(match units.is_empty() {
            true => StageRecompute::Nothing,
            false => StageRecompute::Units(
                units
                    .iter()
                    .map(|&(u, n)| (u, Granularity::Full { layers: n as usize }))
                    .collect(),
            ),
        })
    }

    /// The plan of `program` at variable values `values`.
    pub(crate) fn of(program: &ScheduleProgram, values: &[u64], exact: bool) -> Self {
        let layers = (0..program.units.len())
            .map(|r| {
                let cells = program.recomputed(r, values);
                cells.into_iter().map(|(u, n)| (u, n as u32)).collect()
            })
            .collect();
        let recomputed_layers = values
            .iter()
            .zip(&program.problem.weights)
            .map(|(c, w)| c * w);
        AdaptivePlan {
            layers,
            recomputed_layers: recomputed_layers.sum(),
            exact,
        }
    }
}

impl fmt::Display for AdaptivePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_stage: Vec<String> = self
            .layers
            .iter()
            .map(|units| units.iter().map(|(_, n)| n).sum::<u32>().to_string())
            .collect();
        write!(
            f,
            "{} layers of {} units recomputed per step (per stage {}; {})",
            self.recomputed_layers,
            self.units(),
            per_stage.join(", "),
            if self.exact {
                "exact MILP"
            } else {
                "rounded LP relaxation"
            }
        )
    }
}

/// The program of `input`'s schedule (which must hold no `RECOMPUTE` yet) under one budget per
/// stage for the activations the ledger predicts (model states left out), in bytes.
pub fn program(input: &PredictInput, budgets: &[f64]) -> Result<ScheduleProgram> {
    let unsupported = || {
        Error::Config(
            "recompute = auto needs the memory model, which covers f32 and bf16 runs with layers \
             split evenly over the virtual stages"
                .into(),
        )
    };
    let predicted = predict(input)?.ok_or_else(unsupported)?;
    let savings = recompute_savings(input)?.ok_or_else(unsupported)?;
    let held: Vec<Vec<f64>> = predicted.into_iter().map(|p| p.held_in_action).collect();
    let inputs = ProgramInputs {
        layers_per_chunk: input.partition.ranges[0].len() as u64,
        budgets,
        held: &held,
    };
    Ok(schedule_program(input.schedule, &inputs, |r, u| {
        savings.get(r).and_then(|p| p.get(u)).copied()
    })?)
}

/// The fewest layers recomputed per (stage, unit) whose predicted activation peak fits each
/// stage's budget.
pub fn plan(input: &PredictInput, budgets: &[f64]) -> Result<AdaptivePlan> {
    let program = program(input, budgets)?;
    let exact = program.problem.weights.len() <= EXACT_VARIABLES;
    let solved = solve(&program.problem, exact)?;
    Ok(AdaptivePlan::of(&program, &solved, exact))
}

fn solve(problem: &RecomputeProblem, exact: bool) -> Result<Vec<u64>> {
    let plan = match exact {
        true => problem.solve()?,
        false => problem.solve_relaxed()?,
    };
    Ok(plan.diagonal)
}

/// What [`fit`] tried: the configuration with its plan, the schedule with the plan's
/// `RECOMPUTE`s, and the predicted peak bytes per stage.
pub type Attempt = (TrainConfig, Lowered, Vec<f64>);

/// The adaptive plan under `budget` bytes per stage (model states `states` included), with its
/// schedule and predicted peaks; where not even recomputing every layer fits, that plan, for the
/// caller to report the shortfall.
pub fn fit(
    schedule: &Lowered,
    cfg: &TrainConfig,
    partition: &Partition,
    slices: &[Range<usize>],
    states: &[f64],
    budget: u64,
) -> Result<Attempt> {
    let mut plain = cfg.clone();
    plain.parallel.recompute = Recompute::None;
    let input = PredictInput::of(&plain, schedule, partition, slices);
    let budgets: Vec<f64> = states.iter().map(|s| budget as f64 - s).collect();
    let program = program(&input, &budgets)?;
    let exact = program.problem.weights.len() <= EXACT_VARIABLES;
    let plan = match solve(&program.problem, exact) {
        Ok(values) => AdaptivePlan::of(&program, &values, exact),
        Err(Error::Memory(MemoryError::Infeasible { .. })) => {
            let all = vec![program.problem.max_layers; program.problem.weights.len()];
            AdaptivePlan::of(&program, &all, exact)
        }
        Err(e) => return Err(e),
    };
    let mut tried = cfg.clone();
    tried.parallel.recompute = Recompute::Auto { plan: Some(plan) };
    let planned = with_memory_actions(schedule.clone(), &tried, partition, slices)?;
    let peaks = predicted_stage_peaks(&tried, &planned, partition, slices)?;
    Ok((tried, planned, peaks))
}
