//! Elastic iterations under a memory budget (InfiniPipe §3–4): the chunker's groups, longest
//! first, are split into pipelines run one after another by the grouping DP
//! (`seqpipe_schedule::group_pipelines`), and each pipeline recomputes what its budget needs.
//!
//! A candidate pipeline is priced as it would run: its elastic schedule, the runtime's own
//! memory model (`predict`, byte for byte the executor's bookkeeping) turned into InfiniPipe's
//! recomputation program (`adaptive::program`), the least uniform recomputation that fits, and
//! the makespan of the schedule with those `RECOMPUTE`s simulated with every action's FLOPs. A
//! candidate that does not fit even recomputing every layer is refused, and one whose every
//! stage's forward and backward FLOPs alone cannot beat the best split so far is not priced
//! (the split is the same). The chosen pipelines
//! then get the program's adaptive plan (layers per chunk and stage), kept where its simulated
//! makespan is no longer than the uniform plan's.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::DType;
use seqpipe_memory::uniform_checkpoints;
use seqpipe_schedule::{group_pipelines_bounded, Unit};
use seqpipe_slicing::CostModel;
use serde::{Deserialize, Serialize};

use super::adaptive::{self, AdaptivePlan};
use super::elastic::{chunk_documents, prepare, ElasticIteration, ElasticRun, GroupRows};
use super::elastic_step::{simulate_run, stage_work};
use super::partition::Partition;
use super::recompute::Recompute;
use crate::error::{Error, Result};
use crate::model::ModelConfig;
use crate::predict::PredictInput;

/// Largest number of sequence groups one pipeline may hold (bounds the DP's candidates).
pub const MAX_GROUPS_PER_PIPELINE: usize = 32;

/// What an elastic plan fits: the model, its dtype, the layer partition, and each stage's
/// bytes for activations (the memory budget less the stage's model states).
#[derive(Debug, Clone, Copy)]
pub struct Fit<'a> {
    /// Model sizes.
    pub model: &'a ModelConfig,
    /// Parameter and activation dtype.
    pub dtype: DType,
    /// Layers per stage.
    pub partition: &'a Partition,
    /// Activation bytes each stage may hold.
    pub budgets: &'a [f64],
}

/// A priced candidate: its simulated makespan and the recomputation that gives it.
struct Priced {
    makespan: f64,
    recompute: Recompute,
}

impl Fit<'_> {
    fn stages(&self) -> u32 {
        self.budgets.len() as u32
    }

    /// The memory model's input for `run` recomputing nothing.
    fn plain<'r>(&'r self, run: &'r ElasticRun) -> PredictInput<'r> {
        PredictInput {
            model: self.model,
            dtype: self.dtype,
            batch: 1,
            slices: &[],
            ragged: run.input.ragged.as_deref(),
            schedule: &run.schedule,
            partition: self.partition,
            recompute: &Recompute::None,
        }
    }

    /// The recomputation program of `run` (which recomputes nothing yet).
    fn program(&self, run: &ElasticRun) -> Result<seqpipe_memory::ScheduleProgram> {
        adaptive::program(&self.plain(run), self.budgets)
    }

    /// The simulated makespan of `run` recomputing as `recompute` says.
    fn makespan(&self, run: &ElasticRun, recompute: Recompute) -> Result<Priced> {
        let run = ElasticRun {
            recompute,
            ..run.clone()
        };
        let stages = self.budgets.len();
        let prepared = prepare(std::slice::from_ref(&run), self.partition, stages)?;
        let (schedule, plans) = &prepared[0];
        let sim = simulate_run(self.model, self.partition, schedule, plans, &run.input)?;
        Ok(Priced {
            makespan: sim.makespan,
            recompute: run.recompute,
        })
    }

    /// `run` under the least uniform recomputation that fits, `None` if none does.
    fn uniform(&self, run: &ElasticRun) -> Result<Option<Priced>> {
        let program = self.program(run)?;
        let Some(c) = uniform_checkpoints(&program.problem) else {
            return Ok(None);
        };
        let recompute = match c {
            0 => Recompute::None,
            c => {
                let values = vec![c; program.problem.weights.len()];
                let plan = AdaptivePlan::of(&program, &values, true);
                Recompute::Auto { plan: Some(plan) }
            }
        };
        self.makespan(run, recompute).map(Some)
    }

    /// The better of the uniform and the adaptive plan of a pipeline that fits.
    fn best(&self, run: &ElasticRun, uniform: Priced) -> Result<Recompute> {
        if uniform.recompute == Recompute::None {
            return Ok(uniform.recompute);
        }
        let adaptive = match adaptive::plan(&self.plain(run), self.budgets) {
            Ok(plan) => self.makespan(run, Recompute::Auto { plan: Some(plan) })?,
            Err(_) => return Ok(uniform.recompute),
        };
        Ok(match adaptive.makespan <= uniform.makespan {
            true => adaptive.recompute,
            false => uniform.recompute,
        })
    }
}

/// Plans one elastic iteration of `docs` that fits `fit`'s budgets: chunks as
/// [`super::elastic::plan_iteration`], pipelines by the grouping DP, recomputation per pipeline.
pub fn plan_iteration_within(
    docs: &[Vec<u32>],
    cost: &CostModel,
    slices: usize,
    fit: &Fit,
) -> Result<ElasticIteration> {
    let chunking = chunk_documents(docs, cost, slices)?;
    let rows = GroupRows::of(docs, &chunking)?;
    let order = seqpipe_schedule::longest_first(rows.counts());
    let members = |r: Range<usize>| order[r].to_vec();
    let failure: RefCell<Option<Error>> = RefCell::new(None);
    let price = |r: Range<usize>| -> Option<f64> {
        let priced = rows
            .pipeline(&members(r), fit.stages(), Recompute::None)
            .and_then(|run| fit.uniform(&run));
        match priced {
            Ok(p) => p.map(|p| p.makespan),
            Err(e) => {
                failure.borrow_mut().get_or_insert(e);
                None
            }
        }
    };
    // Every stage's forwards and backwards: no pipeline of the groups is shorter.
    let work = (0..order.len())
        .map(|g| {
            let run = rows.pipeline(&[g], fit.stages(), Recompute::None)?;
            stage_work(fit.model, fit.partition, &run.input)
        })
        .collect::<Result<Vec<_>>>()?;
    let bound = |r: Range<usize>| {
        let stage = |s: usize| order[r.clone()].iter().map(|&g| work[g][s]).sum::<f64>();
        let busiest = (0..fit.budgets.len()).map(stage).fold(0.0, f64::max);
        busiest * (1.0 - 1e-12)
    };
    let grouping =
        group_pipelines_bounded(order.len(), Some(MAX_GROUPS_PER_PIPELINE), price, bound);
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    let grouping = match grouping {
        Err(seqpipe_schedule::ScheduleError::NoFeasibleGrouping { item }) => {
            return Err(does_not_fit(&(item..item + 1), fit))
        }
        other => other?,
    };
    let mut runs = Vec::with_capacity(grouping.groups.len());
    for range in grouping.groups {
        let run = rows.pipeline(&members(range.clone()), fit.stages(), Recompute::None)?;
        let uniform = fit
            .uniform(&run)?
            .ok_or_else(|| does_not_fit(&range, fit))?;
        let recompute = fit.best(&run, uniform)?;
        runs.push(ElasticRun { recompute, ..run });
    }
    Ok(ElasticIteration { chunking, runs })
}

fn does_not_fit(range: &Range<usize>, fit: &Fit) -> Error {
    Error::Config(format!(
        "elastic pipeline of sequence groups {range:?} (longest first) does not fit the memory \
         budget even recomputing every layer ({:.0?} bytes per stage left for activations): \
         raise parallel.memory_budget, or lower data.seq_len",
        fit.budgets
    ))
}

/// What a budgeted plan chose, compact enough to send: each pipeline's chunker groups and its
/// recomputation. The ranks of a run plan once (rank 0) and rebuild the same iteration from
/// their own copy of the step's documents ([`PlanChoice::rebuild`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanChoice {
    pipelines: Vec<PipelineChoice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PipelineChoice {
    /// Chunker groups, in the pipeline's micro-batch order.
    groups: Vec<usize>,
    /// Per stage, `[mb, slice, chunk, layers]` of every recomputed unit (none: no recomputation).
    recompute: Option<Vec<Vec<[u32; 4]>>>,
    exact: bool,
}

impl PlanChoice {
    /// The choice `iteration` holds; a recomputation other than none or a per-unit plan is an
    /// error (budgeted plans make only those).
    pub fn of(iteration: &ElasticIteration) -> Result<Self> {
        let pipeline = |run: &ElasticRun| {
            let (recompute, exact) = match &run.recompute {
                Recompute::None => (None, true),
                Recompute::Auto { plan: Some(plan) } => {
                    let cells = |units: &Vec<(Unit, u32)>| {
                        units
                            .iter()
                            .map(|(u, n)| [u.mb.0, u.slice.0, u.chunk.0, *n])
                            .collect()
                    };
                    (Some(plan.layers.iter().map(cells).collect()), plan.exact)
                }
                other => {
                    return Err(Error::Runtime(format!(
                        "a budgeted elastic plan recomputes as none or auto, not {other}"
                    )))
                }
            };
            Ok(PipelineChoice {
                groups: run.groups.clone(),
                recompute,
                exact,
            })
        };
        Ok(PlanChoice {
            pipelines: iteration.runs.iter().map(pipeline).collect::<Result<_>>()?,
        })
    }

    /// The iteration this choice makes of `docs` (chunked as the planner chunked them).
    pub fn rebuild(
        &self,
        docs: &[Vec<u32>],
        cost: &CostModel,
        slices: usize,
        stages: u32,
    ) -> Result<ElasticIteration> {
        let chunking = chunk_documents(docs, cost, slices)?;
        let rows = GroupRows::of(docs, &chunking)?;
        let runs = self
            .pipelines
            .iter()
            .map(|p| {
                let recompute = match &p.recompute {
                    None => Recompute::None,
                    Some(stages) => Recompute::Auto {
                        plan: Some(plan_of(stages, p.exact)),
                    },
                };
                let run = rows.pipeline(&p.groups, stages, recompute)?;
                match run.groups == p.groups {
                    true => Ok(run),
                    false => Err(Error::Runtime(format!(
                        "the shared elastic plan orders groups {:?}, this rank {:?}: the ranks \
                         drew different documents",
                        p.groups, run.groups
                    ))),
                }
            })
            .collect::<Result<_>>()?;
        Ok(ElasticIteration { chunking, runs })
    }
}

fn plan_of(stages: &[Vec<[u32; 4]>], exact: bool) -> AdaptivePlan {
    let layers: Vec<Vec<(Unit, u32)>> = stages
        .iter()
        .map(|cells| {
            cells
                .iter()
                .map(|&[mb, slice, chunk, n]| (Unit::new(mb, slice, chunk), n))
                .collect()
        })
        .collect();
    let recomputed_layers = layers.iter().flatten().map(|(_, n)| u64::from(*n)).sum();
    AdaptivePlan {
        layers,
        recomputed_layers,
        exact,
    }
}
