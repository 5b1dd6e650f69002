//! One rank of a run: a pipeline stage of one data-parallel replica, with its parameters,
//! gradients and optimizer, and the reductions that make its step a step of the whole model.
//!
//! Every run is made of these, whatever carries the messages: a threaded run is `d·p` ranks over
//! the in-process transport, a multi-process run one rank per process. A step of a rank is:
//! zero the gradients, run the stage's lowered program, average the gradients over the replicas,
//! sum a tied embedding's two copies, all-reduce the step's figures (loss, squared norm, answers,
//! peak bytes) over the world, then — after the caller has judged them — clip and step AdamW.
//! Because every rank ends with the same figures, every rank takes the same decision.

use crate::error::{Context, Error, Result};
use std::ops::Range;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use seqpipe_comm::{Group, Transport};
use seqpipe_schedule::{Lowered, Op};

use super::distributed::Placement;
use super::partition::Partition;
use super::record::{Answers, Mark, StageReport};
use super::tensor_msg::{from_message, to_message};
use super::worker::{IterationInput, StageRecompute, StageSpec, StageWorker};
use crate::model::names::{EMBED, LM_HEAD};
use crate::model::params::{init_params, param_specs, vocab_rows, Holding, TensorMap};
use crate::model::ModelConfig;
use crate::optim::{clip_scale, sum_of_squares, AdamW, OptimConfig};

/// Where a run's initial weights come from.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    /// Deterministic initialisation from a seed (by parameter name).
    Seed(u64),
    /// A whole-model parameter map, e.g. a loaded Hugging Face checkpoint.
    Loaded(&'a TensorMap),
}

/// The part of the model stage `stage` holds; with `vocab_parallel` of a model of `vocab`
/// tokens, its rows of the embedding and LM head instead of whole tables on the two ends.
/// (The last virtual stage, `(v−1)·p + p−1`, is always on the last stage.)
pub fn holding(
    partition: &Partition,
    at: (usize, usize),
    chunks: usize,
    vocab_parallel: Option<usize>,
) -> Holding {
    let (stage, stages) = at;
    let layers = (0..chunks)
        .map(|c| partition.ranges[c * stages + stage].clone())
        .collect();
    Holding {
        layers,
        embedding: stage == 0,
        head: stage + 1 == stages,
        vocab_rows: vocab_parallel.map(|vocab| vocab_rows(vocab, stages, stage)),
    }
}

/// The parameters a stage holding `hold` starts from, in `dtype` on `device`. Weights are made
/// on the CPU, so a device run starts from exactly the weights of a CPU run.
pub fn stage_params(
    model: &ModelConfig,
    hold: &Holding,
    weights: Weights,
    dtype: DType,
    device: &Device,
) -> Result<TensorMap> {
    let specs = param_specs(model, hold);
    specs
        .iter()
        .map(|spec| {
            let t = match weights {
                Weights::Seed(seed) => {
                    init_params(std::slice::from_ref(spec), seed, dtype, &Device::Cpu)?
                        .remove(&spec.name)
                        .ok_or_else(|| {
                            Error::Runtime(format!("initialisation lost {}", spec.name))
                        })?
                }
                Weights::Loaded(all) => spec
                    .part_of(all.get(&spec.name).ok_or_else(|| {
                        Error::Runtime(format!("loaded weights lack {}", spec.name))
                    })?)?
                    .to_dtype(dtype)?,
            };
            Ok((spec.name.clone(), t.to_device(device)?))
        })
        .collect()
}

/// What a rank is built from.
pub struct RankSetup<'a> {
    /// Model sizes.
    pub model: &'a ModelConfig,
    /// Layer ranges per virtual stage.
    pub partition: &'a Partition,
    /// Model chunks per stage.
    pub chunks: usize,
    /// Where this rank sits.
    pub at: Placement,
    /// Pipeline stages.
    pub stages: usize,
    /// Initial weights.
    pub weights: Weights<'a>,
    /// Parameter and activation dtype.
    pub dtype: DType,
    /// Where the stage computes.
    pub device: &'a Device,
    /// Optimizer settings.
    pub optim: &'a OptimConfig,
    /// Embedding and LM head sharded over the vocabulary across the stages.
    pub vocab_parallel: bool,
}

/// The figures of one step, the same on every rank after the all-reduce.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFigures {
    /// Mean loss of the global batch.
    pub loss: f64,
    /// Squared global gradient norm (each parameter counted once).
    pub grad_sq: f64,
    /// Accuracy counts over the global batch.
    pub answers: Answers,
    /// Peak activation bytes (saved + transient) of each stage of replica 0.
    pub peak_bytes: Vec<usize>,
}

/// One stage of one replica, with its optimizer and its communication groups.
pub struct Rank {
    /// Where it sits.
    pub at: Placement,
    /// The executor of its stage, holding parameters and gradients.
    pub worker: StageWorker,
    /// AdamW state of its parameters.
    pub optimizer: AdamW,
    /// Pipeline stages.
    stages: usize,
    /// The same stage in every replica: gradients are averaged over it.
    replicas: Group,
    /// Both holders of a tied embedding in this replica (stage 0 and the last stage).
    tied: Option<Group>,
    /// Every rank: the step's figures are summed over it.
    world: Group,
}

/// What elastic pipeline `i` holds, as stage `stage` runs it: its micro-batches, units and the
/// units the stage recomputes.
fn pipeline_label(i: usize, run: &StageRun, stage: usize) -> String {
    let units: usize = (0..run.input.tokens.len())
        .map(|mb| run.input.slices_of(mb).len())
        .sum();
    let program = run
        .schedule
        .actions
        .get(stage)
        .map_or(&[][..], Vec::as_slice);
    let recomputed = program.iter().filter(|a| a.op == Op::Recompute).count();
    format!(
        "pipeline {i}: {} micro-batches, {units} units, {recomputed} recomputed here",
        run.input.tokens.len()
    )
}

/// One pipeline of an iteration as a stage runs it: the schedule, its micro-batches, and what
/// this stage recomputes in it (`None`: the stage's own setting).
#[derive(Debug, Clone, Copy)]
pub struct StageRun<'a> {
    /// The lowered schedule.
    pub schedule: &'a Lowered,
    /// Its micro-batches.
    pub input: &'a IterationInput,
    /// This stage's recomputation in this pipeline.
    pub recompute: Option<&'a StageRecompute>,
}

impl Rank {
    /// Builds the rank's stage with its initial weights and a fresh optimizer.
    pub fn new(setup: &RankSetup) -> Result<Rank> {
        let (at, p) = (setup.at, setup.stages);
        let vocab = setup.vocab_parallel.then_some(setup.model.vocab);
        let hold = holding(setup.partition, (at.stage, p), setup.chunks, vocab);
        let shard = hold.vocab_rows.clone();
        let params = stage_params(setup.model, &hold, setup.weights, setup.dtype, setup.device)?;
        let optimizer = AdamW::new(setup.optim.clone(), &params)?;
        let spec = StageSpec {
            stage: at.stage,
            stages: p,
            chunk_layers: hold.layers,
            virtual_stages: p * setup.chunks,
            rank_offset: at.replica * p,
        };
        let mut worker = StageWorker::new(spec, setup.model.clone(), params, setup.device.clone())?;
        worker.vocab_rows = shard;
        let first = at.replica * p;
        // With vocabulary parallelism each stage's rows serve both uses: there is no second copy.
        let tied = (setup.model.tie_embeddings
            && !setup.vocab_parallel
            && p > 1
            && (at.stage == 0 || at.stage + 1 == p))
            .then(|| Group::new(vec![first, first + p - 1]))
            .transpose()?;
        Ok(Rank {
            at,
            worker,
            optimizer,
            stages: p,
            replicas: Group::new((0..at.replicas).map(|r| r * p + at.stage).collect())?,
            tied,
            world: Group::world(at.replicas * p)?,
        })
    }

    /// The world group (every rank), for collectives outside the step (checkpoints).
    pub fn world(&mut self) -> &mut Group {
        &mut self.world
    }

    /// Runs the stage's program on `input` and reduces gradients and figures over the world.
    pub fn compute_gradients(
        &mut self,
        schedule: &Lowered,
        input: &IterationInput,
        transport: &mut dyn Transport,
        clock: Instant,
    ) -> Result<(StageReport, StepFigures)> {
        let run = StageRun {
            schedule,
            input,
            recompute: None,
        };
        self.compute_gradients_over(&[run], transport, clock)
    }

    /// Runs several pipelines one after another (an elastic iteration), accumulating their
    /// gradients, then reduces gradients and figures over the world once.
    pub fn compute_gradients_over(
        &mut self,
        runs: &[StageRun<'_>],
        transport: &mut dyn Transport,
        clock: Instant,
    ) -> Result<(StageReport, StepFigures)> {
        self.worker.zero_grads()?;
        let mut report: Option<StageReport> = None;
        let kept = self.worker.recompute.clone();
        for (i, run) in runs.iter().enumerate() {
            if let Some(r) = run.recompute {
                self.worker.recompute = r.clone();
            }
            let at = clock.elapsed().as_secs_f64();
            let next = self.worker.run(run.schedule, run.input, transport, clock);
            self.worker.recompute = kept.clone();
            let mut next = next?;
            if run.input.ragged.is_some() {
                next.marks.push(Mark {
                    at,
                    label: pipeline_label(i, run, self.at.stage),
                });
            }
            report = Some(match report {
                Some(before) => before.followed_by(next),
                None => next,
            });
        }
        let report = report.ok_or_else(|| Error::Runtime("an iteration runs a pipeline".into()))?;
        self.reduce_gradients(transport)?;
        let figures = self.reduce_figures(transport, &report)?;
        Ok((report, figures))
    }

    /// Averages gradients over the replicas, then gives both copies of a tied embedding the sum
    /// of their gradients (each copy saw only its own use of the matrix).
    fn reduce_gradients(&mut self, transport: &mut dyn Transport) -> Result<()> {
        let d = self.at.replicas;
        if d > 1 {
            for g in self.worker.grads.values_mut() {
                *g = (all_reduce(transport, &mut self.replicas, g)? / d as f64)?;
            }
        }
        if let Some(group) = &mut self.tied {
            let g = self.worker.grads.get_mut(EMBED).ok_or_else(|| {
                Error::Runtime(format!("stage {} holds no {EMBED} gradient", self.at.stage))
            })?;
            *g = all_reduce(transport, group, g).context("summing the tied embedding")?;
        }
        Ok(())
    }

    /// Σ g² of the parameters this rank owns for the norm: the last stage's copy of a tied
    /// embedding is the first stage's, so only the first counts it.
    fn own_sum_of_squares(&self) -> Result<f64> {
        let skip_embed = self.tied.is_some() && self.at.stage > 0;
        let owned: TensorMap = self
            .worker
            .grads
            .iter()
            .filter(|(name, _)| !(skip_embed && name.as_str() == EMBED))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        Ok(sum_of_squares(&owned)?)
    }

    /// Sums every rank's contribution: the result is the same on every rank.
    fn reduce_figures(
        &mut self,
        transport: &mut dyn Transport,
        report: &StageReport,
    ) -> Result<StepFigures> {
        let (at, p) = (self.at, self.stages);
        let mut v = vec![
            self.own_sum_of_squares()?,
            report.loss,
            report.answers.scored as f64,
            report.answers.correct as f64,
        ];
        v.extend((0..p).map(|s| match at.replica == 0 && s == at.stage {
            true => report.peak_bytes as f64,
            false => 0.0,
        }));
        let own = Tensor::new(v, &Device::Cpu)?;
        let sums = all_reduce(transport, &mut self.world, &own)?.to_vec1::<f64>()?;
        // Replicas hold identical averaged gradients, and each replica's loss share is scaled
        // by `d` (see `IterationInput::normaliser`): divide both by `d`.
        let d = at.replicas as f64;
        Ok(StepFigures {
            grad_sq: sums[0] / d,
            loss: sums[1] / d,
            answers: Answers {
                scored: sums[2] as usize,
                correct: sums[3] as usize,
            },
            peak_bytes: sums[4..].iter().map(|&b| b as usize).collect(),
        })
    }

    /// Restores this rank's parameters (from a whole-model map of the trained weights) and its
    /// optimizer state after `steps` steps; a vocabulary shard takes its rows of each.
    pub fn restore(&mut self, weights: &TensorMap, steps: u64, state: &TensorMap) -> Result<()> {
        let (weights, state) = match &self.worker.vocab_rows {
            Some(rows) => (
                shard_rows(weights, rows, &[""])?,
                shard_rows(state, rows, &["m.", "v."])?,
            ),
            None => (weights.clone(), state.clone()),
        };
        self.optimizer
            .restore(&mut self.worker.params, &weights, steps, &state)?;
        self.worker.refresh_weights()
    }

    /// The weights this rank trains (f32 master copies where parameters are bf16).
    pub fn trained_weights(&self) -> TensorMap {
        self.optimizer.weights(&self.worker.params)
    }

    /// Clips by the global norm and steps AdamW with learning rate `lr`.
    pub fn update(&mut self, lr: f64, grad_sq: f64) -> Result<()> {
        let scale = clip_scale(grad_sq, self.optimizer.cfg.clip_norm);
        self.optimizer
            .step(&mut self.worker.params, &self.worker.grads, lr, scale)?;
        self.worker.refresh_weights()
    }
}

/// `map` with the vocabulary tables (named with each of `prefixes`) cut to `rows`.
fn shard_rows(map: &TensorMap, rows: &Range<usize>, prefixes: &[&str]) -> Result<TensorMap> {
    let mut out = map.clone();
    for prefix in prefixes {
        for name in [EMBED, LM_HEAD].map(|table| format!("{prefix}{table}")) {
            if let Some(t) = map.get(&name) {
                let part = t
                    .narrow(0, rows.start, rows.len())
                    .with_context(|| format!("taking rows {rows:?} of {name} {:?}", t.dims()))?;
                out.insert(name, part);
            }
        }
    }
    Ok(out)
}

/// Sum `t` over `group` (every rank of the group calls this in the same order); the result is
/// on `t`'s device.
pub fn all_reduce(transport: &mut dyn Transport, group: &mut Group, t: &Tensor) -> Result<Tensor> {
    let summed = transport.all_reduce_sum(group, to_message(t)?)?;
    Ok(from_message(summed, t.device())?.reshape(t.dims())?)
}
