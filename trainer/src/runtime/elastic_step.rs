//! One elastic training step (`parallel.elastic`): the step's documents from the data stream,
//! planned into chunks and pipelines ([`plan_iteration`]), and what the step ran, for the
//! summary.

use seqpipe_schedule::{simulate, Action, Op, P2p, Schedule, Simulation};
use seqpipe_slicing::CostModel;

use super::elastic::{plan_iteration, prepare, ElasticIteration};
use super::elastic_budget::{plan_iteration_within, Fit, PlanChoice};
use super::partition::Partition;
use super::rank_loop::{StepData, Work};
use super::worker::{Granularity, StageRecompute};
use super::IterationInput;
use crate::config::TrainConfig;
use crate::data::DataSource;
use crate::error::{fail, Error, Result};
use crate::model::ModelConfig;
use crate::predict::stage_states;
use seqpipe_comm::{Group, Message, Transport};

/// What one elastic step ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ElasticStats {
    /// Documents (a document longer than `data.seq_len` counts once per piece).
    pub documents: usize,
    /// Chunks of each kind: `[batched, split, hybrid]`.
    pub chunks: [usize; 3],
    /// Micro-batches (sequence groups) over all pipelines.
    pub microbatches: usize,
    /// Pipelines run one after another.
    pub pipelines: usize,
    /// Mesh slices `K` of the longest document.
    pub slices: usize,
    /// Token budget of a chunk.
    pub token_budget: u64,
    /// Raises of the chunker's time budget.
    pub relaxations: usize,
    /// Wall seconds the step's planning took (chunking, pipelines, recomputation), before the
    /// step itself (not in its time).
    pub plan_seconds: f64,
}

impl ElasticStats {
    /// The figures of `iteration`, planned in `plan_seconds`.
    pub fn of(iteration: &ElasticIteration, plan_seconds: f64) -> Self {
        let c = &iteration.chunking;
        ElasticStats {
            documents: iteration
                .runs
                .iter()
                .flat_map(|r| r.input.documents.iter().flatten())
                .map(|d| d.count())
                .sum(),
            chunks: iteration.chunk_kinds(),
            microbatches: iteration.runs.iter().map(|r| r.input.tokens.len()).sum(),
            pipelines: iteration.runs.len(),
            slices: c.slices,
            token_budget: c.token_budget,
            relaxations: c.relaxations,
            plan_seconds,
        }
    }
}

/// The next elastic step: documents in stream order until they hold the tokens of
/// `microbatches × batch × seq_len` (the fixed-shape step's), each at most `seq_len` tokens,
/// planned on the run's stages with `parallel.slices` mesh slices.
pub(crate) fn next_elastic(
    cfg: &TrainConfig,
    partition: &Partition,
    source: &mut DataSource,
    transport: &mut dyn Transport,
    world: &mut Group,
) -> Result<StepData> {
    let (par, data) = (&cfg.parallel, &cfg.data);
    let budget = par.microbatches as usize * data.batch * data.seq_len;
    let docs = source.next_documents(budget, data.seq_len)?;
    let cost = CostModel::flops(&cfg.model.shape())?;
    let started = std::time::Instant::now();
    let iteration = match par.memory_budget {
        Some(bytes) => {
            let budgets = activation_budgets(cfg, bytes)?;
            let fit = Fit {
                model: &cfg.model,
                dtype: cfg.precision.dtype(),
                partition,
                budgets: &budgets,
            };
            let slices = par.slices as usize;
            plan_once(
                transport,
                world,
                par.stages,
                || plan_iteration_within(&docs, &cost, slices, &fit),
                |choice| choice.rebuild(&docs, &cost, slices, par.stages),
            )?
        }
        None => plan_iteration(
            &docs,
            &cost,
            par.stages,
            par.slices as usize,
            &par.recompute,
        )?,
    };
    let plan_seconds = started.elapsed().as_secs_f64();
    let flops = 3.0
        * docs
            .iter()
            .map(|d| cost.sequence(d.len() as u64))
            .sum::<f64>();
    Ok(StepData {
        work: Work::Elastic(iteration, plan_seconds),
        tokens: docs.iter().map(Vec::len).sum(),
        flops,
        documents: Some(docs.len()),
    })
}

/// A budgeted plan is made once, on rank 0, and sent to the others, which rebuild the same
/// iteration from their own copy of the step's documents: the planning is not repeated on
/// every rank. An error on rank 0 stops it, and its peers then fail naming it.
fn plan_once(
    transport: &mut dyn Transport,
    world: &mut Group,
    stages: u32,
    plan: impl FnOnce() -> Result<ElasticIteration>,
    rebuild: impl FnOnce(&PlanChoice) -> Result<ElasticIteration>,
) -> Result<ElasticIteration> {
    if transport.world_size() as u32 == 1 || stages == 1 {
        return plan();
    }
    let planned = (transport.rank() == 0).then(plan).transpose()?;
    let choice = planned.as_ref().map(PlanChoice::of).transpose()?;
    let bytes = choice.map(|c| serde_json::to_vec(&c)).transpose()?;
    let message = bytes
        .map(|b| Message::from_u8(vec![b.len()], b))
        .transpose()?;
    let shared = transport.broadcast(world, 0, message)?;
    match planned {
        Some(iteration) => Ok(iteration),
        None => rebuild(&serde_json::from_slice(shared.as_u8()?)?),
    }
}

/// Each stage's bytes for activations under a memory budget of `bytes` per stage: the budget
/// less the stage's model states.
fn activation_budgets(cfg: &TrainConfig, bytes: u64) -> Result<Vec<f64>> {
    let dtype = cfg.precision.dtype();
    let states = stage_states(&cfg.model, dtype, cfg.parallel.stages, 1)?.ok_or_else(|| {
        Error::Config(
            "parallel.memory_budget needs the memory model, which covers f32 and bf16 runs with \
             layers split evenly over the stages"
                .into(),
        )
    })?;
    states
        .iter()
        .enumerate()
        .map(|(stage, &s)| match bytes as f64 - s {
            left if left > 0.0 => Ok(left),
            _ => fail!(
                Config,
                "memory budget {bytes} bytes per stage is below stage {stage}'s model states, \
                 {s:.0} bytes: nothing is left for activations"
            ),
        })
        .collect()
}

/// The simulated bubble and core use of an elastic iteration: each pipeline simulated with
/// every action's FLOPs (its documents' own attention) over the stage's layers, RECOMPUTE
/// charged for the layers it reruns; pipelines run one after another.
pub fn simulate_iteration(
    model: &ModelConfig,
    partition: &Partition,
    iteration: &ElasticIteration,
    cores: usize,
) -> Result<(f64, f64)> {
    let stages = partition.ranges.len();
    let prepared = prepare(&iteration.runs, partition, stages)?;
    let (mut makespan, mut busy, mut core_time) = (0.0, 0.0, 0.0);
    for ((schedule, plans), run) in prepared.iter().zip(&iteration.runs) {
        let sim = simulate_run(model, partition, schedule, plans, &run.input)?;
        makespan += sim.makespan;
        busy += sim.stages.iter().map(|s| s.busy).sum::<f64>();
        core_time += sim.core_use(cores) * sim.makespan;
    }
    if makespan <= 0.0 {
        return Ok((0.0, 0.0));
    }
    Ok((
        1.0 - busy / (stages as f64 * makespan),
        core_time / makespan,
    ))
}

/// One elastic pipeline (`schedule` with its `RECOMPUTE`s, `plans` per stage) simulated with
/// every action's FLOPs.
pub fn simulate_run(
    model: &ModelConfig,
    partition: &Partition,
    schedule: &Schedule,
    plans: &[StageRecompute],
    input: &IterationInput,
) -> Result<Simulation> {
    let prices = UnitFlops::new(model, partition, input)?;
    let duration = |a: &Action| prices.duration(a, &plans[a.stage.index()]);
    Ok(simulate(schedule, duration, &P2p::free())?)
}

/// FLOPs of the forwards and backwards of `input`'s micro-batches on each stage (no
/// recomputation): a lower bound of any pipeline's makespan over them.
pub fn stage_work(
    model: &ModelConfig,
    partition: &Partition,
    input: &IterationInput,
) -> Result<Vec<f64>> {
    let prices = UnitFlops::new(model, partition, input)?;
    let mut work = vec![0.0; partition.ranges.len()];
    for per_stage in prices.forward.iter().flatten() {
        for (w, f) in work.iter_mut().zip(per_stage) {
            *w += 3.0 * f;
        }
    }
    Ok(work)
}

/// Forward FLOPs of every (micro-batch, slice) on every stage of one elastic pipeline.
struct UnitFlops {
    /// `[mb][slice][stage]`.
    forward: Vec<Vec<Vec<f64>>>,
    /// Layers per stage.
    layers: Vec<usize>,
}

impl UnitFlops {
    fn new(model: &ModelConfig, partition: &Partition, input: &IterationInput) -> Result<Self> {
        let shape = model.shape();
        let (pair, token) = (
            shape.layer_attention_flops_per_pair(),
            shape.layer_linear_flops_per_token(),
        );
        let head = shape.vocab_flops_per_token();
        let layers: Vec<usize> = partition.ranges.iter().map(|r| r.len()).collect();
        let last = layers.len() - 1;
        let mut forward = Vec::with_capacity(input.tokens.len());
        for mb in 0..input.tokens.len() {
            let docs = input.documents.as_ref().map(|d| &d[mb]);
            let row = input.slices_of(mb).iter().map(|range| {
                let tokens = range.len() as f64;
                let pairs = match docs {
                    Some(d) => d.causal_entries(0, range.clone()) as f64,
                    None => tokens * (range.start as f64 + (tokens + 1.0) / 2.0),
                };
                let per_layer = pair * pairs + token * tokens;
                let on = |s: usize| {
                    layers[s] as f64 * per_layer + if s == last { head * tokens } else { 0.0 }
                };
                (0..layers.len()).map(on).collect()
            });
            forward.push(row.collect());
        }
        Ok(UnitFlops { forward, layers })
    }

    /// FLOPs of `a` on its stage, whose recomputation is `recompute`.
    fn duration(&self, a: &Action, recompute: &StageRecompute) -> f64 {
        let s = a.stage.index();
        let f = self
            .forward
            .get(a.mb.index())
            .and_then(|row| row.get(a.slice.index()))
            .map_or(0.0, |stages| stages[s]);
        match a.op {
            Op::Forward => f,
            Op::Backward => 2.0 * f,
            Op::Recompute => match recompute.of(&a.unit()) {
                Some(Granularity::Full { layers }) => f * layers as f64 / self.layers[s] as f64,
                _ => 0.0,
            },
            _ => 0.0,
        }
    }
}
