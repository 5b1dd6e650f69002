//! A whole pipeline in one process, step by step: one thread per stage over the in-process
//! transport, each running the same [`Rank`] code a training run's ranks run. Tests, benchmarks
//! and the GPU oracle drive iterations with their own inputs through it.

use crate::error::{fail, Error, Result};
use std::ops::Range;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use seqpipe_comm::{CommOptions, LocalTransport};
use seqpipe_schedule::{generate, strip_exchange, ExchangePolicy, Lowered, ScheduleConfig};

use super::admit::admit;
use super::distributed::placement;
use super::error::combine;
use super::exchange::with_exchange;
use super::partition::Partition;
use super::rank::{Rank, RankSetup, StageRun, StepFigures, Weights};
use super::recompute::{fewest_layers, with_planned_recompute, Recompute};
use super::record::{Answers, StageReport};
use super::vocab::with_vocab_parallel;
use super::worker::{IterationInput, StageRecompute};
use crate::model::names::{EMBED, LM_HEAD};
use crate::model::params::TensorMap;
use crate::model::ModelConfig;
use crate::optim::OptimConfig;

/// Result of one training step.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Mean loss over the batch.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Accuracy counts of the scored targets (zero without a loss mask).
    pub answers: Answers,
    /// Per-stage records of the iteration.
    pub stages: Vec<StageReport>,
    /// Wall time of the forward/backward iteration (seconds).
    pub iteration_seconds: f64,
}

/// One pipeline of an iteration: its schedule, its micro-batches and, per stage, what that
/// stage recomputes in it (`None`: the stages' own settings).
pub(super) struct PipelineRun<'a> {
    pub schedule: &'a Lowered,
    pub input: &'a IterationInput,
    pub recompute: Option<&'a [StageRecompute]>,
}

impl<'a> PipelineRun<'a> {
    /// The run as stage `stage` sees it.
    fn on(&self, stage: usize) -> StageRun<'a> {
        StageRun {
            schedule: self.schedule,
            input: self.input,
            recompute: self.recompute.and_then(|r| r.get(stage)),
        }
    }
}

/// The ranks of one replica in this process, their transports, and the lowered schedule they
/// run. Each step runs every rank's [`Rank::compute_gradients`] on its own thread: the same code
/// a training run's ranks execute.
pub struct Pipeline {
    /// The lowered schedule.
    pub schedule: Lowered,
    /// One rank per stage.
    pub ranks: Vec<Rank>,
    transports: Vec<Option<LocalTransport>>,
    /// Layer ranges per virtual stage.
    pub partition: Partition,
    /// What the stages recompute.
    recompute: Recompute,
    /// Squared global gradient norm of the last [`Pipeline::compute_gradients`].
    last_grad_sq: f64,
    /// The slices and policy the attention exchange was paired with, when it runs.
    exchange: Option<(Vec<Range<usize>>, ExchangePolicy)>,
}

impl Pipeline {
    /// Generates and lowers the schedule, checks the partition, and builds the stages with weights
    /// initialised from `seed` (identical to a single-device model with the same seed).
    pub fn new(
        model: &ModelConfig,
        config: ScheduleConfig,
        partition: Option<&[usize]>,
        optim: &OptimConfig,
        seed: u64,
        dtype: DType,
        timeout: Duration,
    ) -> Result<Self> {
        Self::with_weights(
            model,
            config,
            partition,
            optim,
            Weights::Seed(seed),
            dtype,
            timeout,
        )
    }

    /// As [`Pipeline::new`], with the weights given explicitly: initialised from a seed, or taken
    /// from a loaded whole-model parameter map (converted to `dtype`).
    pub fn with_weights(
        model: &ModelConfig,
        config: ScheduleConfig,
        partition: Option<&[usize]>,
        optim: &OptimConfig,
        weights: Weights,
        dtype: DType,
        timeout: Duration,
    ) -> Result<Self> {
        Self::on_device(
            model,
            config,
            partition,
            optim,
            weights,
            dtype,
            timeout,
            &Device::Cpu,
        )
    }

    /// As [`Pipeline::with_weights`], with every stage's parameters and activations on `device`
    /// (e.g. all stages as threads on one GPU). Batches may stay on the CPU.
    #[allow(clippy::too_many_arguments)]
    pub fn on_device(
        model: &ModelConfig,
        config: ScheduleConfig,
        partition: Option<&[usize]>,
        optim: &OptimConfig,
        weights: Weights,
        dtype: DType,
        timeout: Duration,
        device: &Device,
    ) -> Result<Self> {
        let problems = model.problems();
        if !problems.is_empty() {
            fail!(Config, "invalid model: {}", problems.join("; "));
        }
        let schedule = Lowered::lower(&generate(&config)?)?;
        admit(&schedule, &Recompute::None)?;
        let (p, v) = (config.stages as usize, config.chunks as usize);
        let partition = match partition {
            Some(counts) => Partition::from_counts(model.layers, counts),
            None => Partition::even(model.layers, p * v),
        }
        .map_err(Error::Config)?;
        if partition.ranges.len() != p * v {
            fail!(
                Config,
                "{} layer counts given for {} virtual stages ({p} stages × {v} chunks)",
                partition.ranges.len(),
                p * v
            );
        }
        let mut ranks = Vec::with_capacity(p);
        for stage in 0..p {
            ranks.push(Rank::new(&RankSetup {
                model,
                partition: &partition,
                chunks: v,
                at: placement(stage, p, p)?,
                stages: p,
                weights,
                dtype,
                device,
                optim,
                vocab_parallel: false,
            })?);
        }
        // Parameters were copied on this thread's CUDA stream; stage threads use their own.
        device.synchronize()?;
        let transports = LocalTransport::mesh(p, CommOptions::with_timeout(timeout))?
            .into_iter()
            .map(Some)
            .collect();
        Ok(Pipeline {
            schedule,
            ranks,
            transports,
            partition,
            recompute: Recompute::None,
            last_grad_sq: 0.0,
            exchange: None,
        })
    }

    /// Runs `schedule` from now on instead of the generated one: a schedule for the same
    /// configuration that a pass or a hand has changed (memory ops inserted, actions moved),
    /// checked and admitted like a schedule file.
    pub fn set_schedule(&mut self, schedule: Lowered) -> Result<()> {
        if schedule.config != self.schedule.config {
            fail!(
                Config,
                "the schedule is for {:?}, the pipeline was built for {:?}",
                schedule.config,
                self.schedule.config
            );
        }
        admit(&schedule, &self.recompute)?;
        self.schedule = schedule;
        Ok(())
    }

    /// Sets every stage's host-link bandwidth in bytes per second (`None`: unlimited).
    pub fn set_host_bandwidth(&mut self, bytes_per_second: Option<f64>) {
        for rank in &mut self.ranks {
            rank.worker.host_bandwidth = bytes_per_second;
        }
    }

    /// What the stages recompute.
    pub fn recompute(&self) -> &Recompute {
        &self.recompute
    }

    /// Whether the attention exchange runs.
    pub(super) fn exchange_on(&self) -> bool {
        self.exchange.is_some()
    }

    /// Recomputes as `recompute` says from now on: each stage's granularity, and a `RECOMPUTE`
    /// before every backward on the stages that recompute, put into the current schedule.
    pub fn set_recompute(&mut self, recompute: Recompute) -> Result<()> {
        let (p, v) = (self.ranks.len(), self.schedule.config.chunks as usize);
        let problems = recompute.problems(p, v, &self.partition);
        if !problems.is_empty() {
            fail!(Config, "{}", problems.join("; "));
        }
        for (stage, rank) in self.ranks.iter_mut().enumerate() {
            let fewest = fewest_layers(&self.partition, stage, p, v);
            rank.worker.recompute = recompute.stage(stage, fewest)?;
        }
        let schedule = self.schedule.clone();
        self.schedule = with_planned_recompute(schedule, &recompute, &self.partition, v)?;
        self.recompute = recompute;
        Ok(())
    }

    /// Shards the embedding and LM head over the stages from now on (vocabulary parallelism):
    /// each stage takes its rows of the current tables, and the schedule gets its `EMBED`,
    /// `HEAD` and `EMBED_B` actions. Only before the first update (the optimizer starts fresh).
    pub fn set_vocab_parallel(&mut self) -> Result<()> {
        if self.ranks[0].optimizer.steps > 0 {
            fail!(
                Config,
                "vocabulary parallelism is set before the first update ({} taken)",
                self.ranks[0].optimizer.steps
            );
        }
        let whole = self.parameters()?;
        let (p, v) = (self.ranks.len(), self.schedule.config.chunks as usize);
        for rank in &mut self.ranks {
            let worker = &rank.worker;
            let dtype = worker
                .params
                .values()
                .next()
                .map_or(DType::F32, Tensor::dtype);
            let mut sharded = Rank::new(&RankSetup {
                model: &worker.model,
                partition: &self.partition,
                chunks: v,
                at: rank.at,
                stages: p,
                weights: Weights::Loaded(&whole),
                dtype,
                device: &worker.device.clone(),
                optim: &rank.optimizer.cfg.clone(),
                vocab_parallel: true,
            })?;
            sharded.worker.recompute = worker.recompute.clone();
            sharded.worker.host_bandwidth = worker.host_bandwidth;
            *rank = sharded;
        }
        // The vocabulary ops go first; an exchange is paired again around their meetings.
        let plain = Lowered::check(strip_exchange(&self.schedule))?;
        self.schedule = with_vocab_parallel(plain)?;
        if let Some((slices, policy)) = self.exchange.take() {
            self.set_exchange(&slices, policy)?;
        }
        Ok(())
    }

    /// Runs SlimPipe's attention context exchange from now on: the current schedule's steady
    /// steps paired for sequences sliced into `slices`, keeping the pairs `policy` keeps (see
    /// [`with_exchange`]; `seqpipe train --exchange` keeps those that shorten the iteration);
    /// iterations must then bring those slices.
    pub fn set_exchange(&mut self, slices: &[Range<usize>], policy: ExchangePolicy) -> Result<()> {
        let model = &self.ranks[0].worker.model;
        let (schedule, partition) = (self.schedule.clone(), &self.partition);
        self.schedule = with_exchange(schedule, model, partition, slices, policy)?;
        self.exchange = Some((slices.to_vec(), policy));
        Ok(())
    }

    /// The steady steps the attention exchange pairs for sequences sliced into `slices`, as
    /// `(stage, program position)` of one compute of every stage ([`super::exchange::steps`]).
    pub fn exchange_steps(&self, slices: &[Range<usize>]) -> Result<Vec<Vec<(usize, usize)>>> {
        let model = &self.ranks[0].worker.model;
        super::exchange::steps(&self.schedule, model, &self.partition, slices)
    }

    /// Runs one forward/backward iteration on every stage (gradients accumulate into the ranks).
    pub fn run_iteration(&mut self, input: &IterationInput) -> Result<(Vec<StageReport>, f64)> {
        let report = self.compute_gradients(input)?;
        Ok((report.stages, report.iteration_seconds))
    }

    /// One training step: iteration, global-norm clip, AdamW with learning rate `lr`.
    pub fn step(&mut self, input: &IterationInput, lr: f64) -> Result<StepReport> {
        let report = self.compute_gradients(input)?;
        self.update(lr)?;
        Ok(report)
    }

    /// The iteration of a step: loss, reduced gradients and their global norm, no update (so a
    /// caller can judge the figures before [`Pipeline::update`]).
    pub fn compute_gradients(&mut self, input: &IterationInput) -> Result<StepReport> {
        input.check(&self.schedule)?;
        if self.exchange.is_some() && input.documents.is_some() {
            fail!(Config, "{}", super::input::EXCHANGE_OVER_DOCUMENTS);
        }
        if self.exchange.is_some() && input.ragged.is_some() {
            fail!(
                Config,
                "the attention exchange pairs slices of equal micro-batches; it does not run \
                 over micro-batches of their own slices (elastic pipelines) yet"
            );
        }
        if let Some((paired, _)) = self.exchange.as_ref().filter(|s| s.0 != input.slices) {
            fail!(
                Config,
                "the attention exchange was paired for slices {paired:?}; this iteration brings \
                 {:?} (call set_exchange with them)",
                input.slices
            );
        }
        let run = PipelineRun {
            schedule: &self.schedule.clone(),
            input,
            recompute: None,
        };
        self.run_ranks(&[run])
    }

    /// Runs `runs` one after another on every rank's thread, gradients accumulated, and reduces
    /// once: one iteration.
    pub(super) fn run_ranks(&mut self, runs: &[PipelineRun<'_>]) -> Result<StepReport> {
        let mut transports = Vec::with_capacity(self.transports.len());
        for (rank, t) in self.transports.iter_mut().enumerate() {
            transports.push(t.take().ok_or(Error::TransportLost { rank })?);
        }
        let clock = Instant::now();
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .ranks
                .iter_mut()
                .zip(transports)
                .enumerate()
                .map(|(stage, (rank, mut transport))| {
                    let mine: Vec<StageRun> = runs.iter().map(|r| r.on(stage)).collect();
                    scope.spawn(move || {
                        // candle's CUDA device uses the per-thread default stream: finish this
                        // thread's work before its tensors are read from another thread.
                        let result = rank
                            .compute_gradients_over(&mine, &mut transport, clock)
                            .and_then(|r| Ok(rank.worker.device.synchronize().map(|()| r)?));
                        // A failed rank drops its transport so its peers fail fast, naming it.
                        (result.is_ok().then_some(transport), result)
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(rank, h)| {
                    h.join()
                        .unwrap_or_else(|_| (None, Err(Error::Panicked { rank })))
                })
                .collect()
        });
        let iteration_seconds = clock.elapsed().as_secs_f64();
        let (mut stages, mut figures, mut errors) = (Vec::new(), None, Vec::new());
        for (rank, (transport, result)) in results.into_iter().enumerate() {
            self.transports[rank] = transport;
            match result {
                Ok((report, f)) => {
                    stages.push(report);
                    figures = Some(f);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(combine(errors).context("pipeline iteration failed"));
        }
        let f: StepFigures =
            figures.ok_or_else(|| Error::Runtime("a pipeline has at least one stage".into()))?;
        self.last_grad_sq = f.grad_sq;
        Ok(StepReport {
            loss: f.loss,
            grad_norm: f.grad_sq.sqrt(),
            answers: f.answers,
            stages,
            iteration_seconds,
        })
    }

    /// Global-norm clip and AdamW with learning rate `lr`, from the gradients and the norm of the
    /// last [`Pipeline::compute_gradients`].
    pub fn update(&mut self, lr: f64) -> Result<()> {
        for rank in &mut self.ranks {
            rank.update(lr, self.last_grad_sq)?;
            // The update ran on this thread's CUDA stream; the stage threads read it next.
            rank.worker.device.synchronize()?;
        }
        Ok(())
    }

    /// Optimizer steps taken and the AdamW state of every stage, as one map with `m.`/`v.`
    /// prefixes (a tied embedding's state appears once: both copies are identical).
    pub fn optimizer_state(&self) -> (u64, TensorMap) {
        let mut state = TensorMap::new();
        for rank in &self.ranks {
            state.extend(rank.optimizer.state());
        }
        (self.ranks[0].optimizer.steps, state)
    }

    /// Restores what [`Pipeline::optimizer_state`] returned, and the parameters (whole model).
    pub fn restore(&mut self, params: &TensorMap, steps: u64, state: &TensorMap) -> Result<()> {
        for rank in &mut self.ranks {
            rank.restore(params, steps, state)?;
        }
        Ok(())
    }

    /// Every stage's parameters in one map (a tied embedding appears once, vocabulary shards
    /// as whole tables).
    pub fn parameters(&self) -> Result<TensorMap> {
        self.whole(|r| &r.worker.params)
    }

    /// Every stage's accumulated gradients in one map (as [`Pipeline::parameters`]).
    pub fn gradients(&self) -> Result<TensorMap> {
        self.whole(|r| &r.worker.grads)
    }

    /// The stages' maps joined: vocabulary shards stacked in stage order, other names once.
    fn whole(&self, of: impl Fn(&Rank) -> &TensorMap) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        for rank in &self.ranks {
            let sharded = rank.worker.vocab_rows.is_some();
            for (name, t) in of(rank) {
                let joined = match out.remove(name) {
                    Some(before) if sharded && [EMBED, LM_HEAD].contains(&name.as_str()) => {
                        Tensor::cat(&[before, t.clone()], 0)?
                    }
                    _ => t.clone(),
                };
                out.insert(name.clone(), joined);
            }
        }
        Ok(out)
    }
}
