//! One elastic training step (`parallel.elastic`): the step's documents from the data stream,
//! planned into chunks and pipelines ([`plan_iteration`]), and what the step ran, for the
//! summary.

use seqpipe_schedule::{simulate, Action, Op, P2p};
use seqpipe_slicing::CostModel;

use super::elastic::{plan_iteration, prepare, ElasticIteration};
use super::partition::Partition;
use super::rank_loop::{StepData, Work};
use super::worker::{Granularity, StageRecompute};
use super::IterationInput;
use crate::config::TrainConfig;
use crate::data::DataSource;
use crate::error::Result;
use crate::model::ModelConfig;

/// What one elastic step ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl ElasticStats {
    /// The figures of `iteration`.
    pub fn of(iteration: &ElasticIteration) -> Self {
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
        }
    }
}

/// The next elastic step: documents in stream order until they hold the tokens of
/// `microbatches × batch × seq_len` (the fixed-shape step's), each at most `seq_len` tokens,
/// planned on the run's stages with `parallel.slices` mesh slices.
pub(crate) fn next_elastic(cfg: &TrainConfig, source: &mut DataSource) -> Result<StepData> {
    let (par, data) = (&cfg.parallel, &cfg.data);
    let budget = par.microbatches as usize * data.batch * data.seq_len;
    let docs = source.next_documents(budget, data.seq_len)?;
    let cost = CostModel::flops(&cfg.model.shape())?;
    let iteration = plan_iteration(
        &docs,
        &cost,
        par.stages,
        par.slices as usize,
        &par.recompute,
    )?;
    let flops = 3.0
        * docs
            .iter()
            .map(|d| cost.sequence(d.len() as u64))
            .sum::<f64>();
    Ok(StepData {
        work: Work::Elastic(iteration),
        tokens: docs.iter().map(Vec::len).sum(),
        flops,
        documents: Some(docs.len()),
    })
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
        let prices = UnitFlops::new(model, partition, &run.input)?;
        let duration = |a: &Action| prices.duration(a, &plans[a.stage.index()]);
        let sim = simulate(schedule, duration, &P2p::free())?;
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
