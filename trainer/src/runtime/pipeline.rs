//! A whole pipeline in one process: one thread per stage over the in-process transport, the
//! global gradient-norm clip and the optimizer step.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use candle_core::{DType, Device};
use seqpipe_comm::{CommOptions, LocalTransport};
use seqpipe_schedule::{generate, lower, Schedule, ScheduleConfig};

use super::admit::admit;
use super::partition::Partition;
use super::record::{Answers, StageReport};
use super::worker::{IterationInput, StageSpec, StageWorker};
use crate::model::names::EMBED;
use crate::model::params::{init_params, param_specs, Holding, TensorMap};
use crate::model::ModelConfig;
use crate::optim::{clip_scale, sum_of_squares, AdamW, OptimConfig};

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

/// Where a pipeline's initial weights come from.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    /// Deterministic initialisation from a seed (by parameter name).
    Seed(u64),
    /// A whole-model parameter map, e.g. a loaded Hugging Face checkpoint.
    Loaded(&'a TensorMap),
}

/// Stages, their transports and optimizers, and the lowered schedule they run.
pub struct Pipeline {
    /// The lowered schedule.
    pub schedule: Schedule,
    /// One worker per stage.
    pub workers: Vec<StageWorker>,
    optimizers: Vec<AdamW>,
    transports: Vec<Option<LocalTransport>>,
    /// Layer ranges per virtual stage.
    pub partition: Partition,
}

/// The part of the model stage `stage` holds.
/// (The last virtual stage, `(v−1)·p + p−1`, is always on the last stage.)
pub fn holding(partition: &Partition, stage: usize, stages: usize, chunks: usize) -> Holding {
    let layers = (0..chunks)
        .map(|c| partition.ranges[c * stages + stage].clone())
        .collect();
    Holding {
        layers,
        embedding: stage == 0,
        head: stage + 1 == stages,
    }
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
    ) -> anyhow::Result<Self> {
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
    ) -> anyhow::Result<Self> {
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
    /// (e.g. all stages as threads on one GPU). Weights are initialised on the CPU, so a device
    /// run starts from exactly the weights of a CPU run; batches may stay on the CPU.
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
    ) -> anyhow::Result<Self> {
        let problems = model.problems();
        if !problems.is_empty() {
            bail!("invalid model: {}", problems.join("; "));
        }
        let schedule = lower(&generate(&config)?)?;
        admit(&schedule)?;
        let (p, v) = (config.stages as usize, config.chunks as usize);
        let partition = match partition {
            Some(counts) => Partition::from_counts(model.layers, counts),
            None => Partition::even(model.layers, p * v),
        }
        .map_err(|e| anyhow!(e))?;
        if partition.ranges.len() != p * v {
            bail!(
                "{} layer counts given for {} virtual stages ({p} stages × {v} chunks)",
                partition.ranges.len(),
                p * v
            );
        }
        let device = device.clone();
        let mut workers = Vec::with_capacity(p);
        let mut optimizers = Vec::with_capacity(p);
        for stage in 0..p {
            let hold = holding(&partition, stage, p, v);
            let specs = param_specs(model, &hold);
            let params = match weights {
                Weights::Seed(seed) => init_params(&specs, seed, dtype, &Device::Cpu)?
                    .into_iter()
                    .map(|(name, t)| Ok((name, t.to_device(&device)?)))
                    .collect::<anyhow::Result<TensorMap>>()?,
                Weights::Loaded(all) => specs
                    .iter()
                    .map(|spec| {
                        let t = all
                            .get(&spec.name)
                            .ok_or_else(|| anyhow!("loaded weights lack {}", spec.name))?;
                        Ok((spec.name.clone(), t.to_dtype(dtype)?.to_device(&device)?))
                    })
                    .collect::<anyhow::Result<TensorMap>>()?,
            };
            optimizers.push(AdamW::new(optim.clone(), &params)?);
            let spec = StageSpec {
                stage,
                stages: p,
                chunk_layers: hold.layers.clone(),
                virtual_stages: p * v,
                rank_offset: 0,
            };
            workers.push(StageWorker::new(
                spec,
                model.clone(),
                params,
                device.clone(),
            )?);
        }
        // Parameters were copied on this thread's CUDA stream; stage threads use their own.
        device.synchronize()?;
        let transports = LocalTransport::mesh(p, CommOptions::with_timeout(timeout))?
            .into_iter()
            .map(Some)
            .collect();
        Ok(Pipeline {
            schedule,
            workers,
            optimizers,
            transports,
            partition,
        })
    }

    /// Runs one forward/backward iteration on every stage (gradients accumulate into the workers).
    pub fn run_iteration(
        &mut self,
        input: &IterationInput,
    ) -> anyhow::Result<(Vec<StageReport>, f64)> {
        check_input(&self.schedule, input)?;
        for w in &mut self.workers {
            w.zero_grads()?;
            // Zeroed on this thread's CUDA stream; the stage threads accumulate on their own.
            w.device.synchronize()?;
        }
        let mut transports = Vec::with_capacity(self.transports.len());
        for (stage, t) in self.transports.iter_mut().enumerate() {
            transports.push(t.take().ok_or_else(|| {
                anyhow!("stage {stage}'s transport was lost in an earlier failure")
            })?);
        }
        let clock = Instant::now();
        let schedule = &self.schedule;
        let results: Vec<(Option<LocalTransport>, anyhow::Result<StageReport>)> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .workers
                    .iter_mut()
                    .zip(transports)
                    .map(|(worker, mut transport)| {
                        scope.spawn(move || {
                            // candle's CUDA device uses the per-thread default stream: finish this
                            // thread's work before its tensors are read from another thread.
                            let result = worker
                                .run(schedule, input, &mut transport, clock)
                                .and_then(|r| Ok(worker.device.synchronize().map(|()| r)?));
                            // A failed stage drops its transport so its peers fail fast, naming it.
                            (result.is_ok().then_some(transport), result)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .enumerate()
                    .map(|(stage, h)| {
                        h.join()
                            .unwrap_or_else(|_| (None, Err(anyhow!("stage {stage} panicked"))))
                    })
                    .collect()
            });
        let seconds = clock.elapsed().as_secs_f64();
        let mut reports = Vec::new();
        let mut errors = Vec::new();
        for (stage, (transport, result)) in results.into_iter().enumerate() {
            self.transports[stage] = transport;
            match result {
                Ok(r) => reports.push(r),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            // Root causes first: the stages whose error is not a peer's disconnect.
            errors.sort_by_key(|e| e.contains("disconnected"));
            bail!("pipeline iteration failed:\n  {}", errors.join("\n  "));
        }
        self.sync_tied_embedding()?;
        Ok((reports, seconds))
    }

    /// One training step: iteration, global-norm clip, AdamW with learning rate `lr`.
    pub fn step(&mut self, input: &IterationInput, lr: f64) -> anyhow::Result<StepReport> {
        let report = self.compute_gradients(input)?;
        self.update(lr, report.grad_norm)?;
        Ok(report)
    }

    /// The iteration of a step: loss, accumulated gradients and their global norm, no update
    /// (so a caller can judge the figures before [`Pipeline::update`]).
    pub fn compute_gradients(&mut self, input: &IterationInput) -> anyhow::Result<StepReport> {
        let (stages, iteration_seconds) = self.run_iteration(input)?;
        let loss = stages.iter().map(|r| r.loss).sum();
        let mut answers = Answers::default();
        for r in &stages {
            answers.add(r.answers);
        }
        let mut total = 0.0;
        for (i, w) in self.workers.iter().enumerate() {
            total += sum_of_squares(&w.grads)?;
            // A tied embedding lives on two stages with the same gradient: count it once.
            if i > 0 && w.params.contains_key(EMBED) {
                total -= sum_of_squares(&[(EMBED.to_string(), w.grads[EMBED].clone())].into())?;
            }
        }
        Ok(StepReport {
            loss,
            grad_norm: total.sqrt(),
            answers,
            stages,
            iteration_seconds,
        })
    }

    /// Global-norm clip and AdamW with learning rate `lr`, from the gradients of the last
    /// [`Pipeline::compute_gradients`] and their norm.
    pub fn update(&mut self, lr: f64, grad_norm: f64) -> anyhow::Result<()> {
        let scale = clip_scale(grad_norm * grad_norm, self.optimizers[0].cfg.clip_norm);
        for (w, opt) in self.workers.iter_mut().zip(&mut self.optimizers) {
            opt.step(&mut w.params, &w.grads, lr, scale)?;
            w.refresh_weights()?;
            // The update ran on this thread's CUDA stream; the stage threads read it next.
            w.device.synchronize()?;
        }
        Ok(())
    }

    /// With tied embeddings on several stages, both copies get the sum of their gradients.
    fn sync_tied_embedding(&mut self) -> anyhow::Result<()> {
        let holders: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].grads.contains_key(EMBED))
            .collect();
        if holders.len() < 2 {
            return Ok(());
        }
        let mut sum = self.workers[holders[0]].grads[EMBED].clone();
        for &i in &holders[1..] {
            sum = (sum + &self.workers[i].grads[EMBED])?;
        }
        for &i in &holders {
            self.workers[i].grads.insert(EMBED.to_string(), sum.clone());
        }
        Ok(())
    }

    /// Optimizer steps taken and the AdamW moments of every stage, as one map with `m.`/`v.`
    /// prefixes (a tied embedding's moments appear once: both copies are identical).
    pub fn optimizer_state(&self) -> (u64, TensorMap) {
        let mut state = TensorMap::new();
        for opt in &self.optimizers {
            state.extend(opt.m.iter().map(|(n, t)| (format!("m.{n}"), t.clone())));
            state.extend(opt.v.iter().map(|(n, t)| (format!("v.{n}"), t.clone())));
        }
        (self.optimizers[0].steps, state)
    }

    /// Restores what [`Pipeline::optimizer_state`] returned, and the parameters (whole model).
    pub fn restore(
        &mut self,
        params: &TensorMap,
        steps: u64,
        state: &TensorMap,
    ) -> anyhow::Result<()> {
        for (w, opt) in self.workers.iter_mut().zip(&mut self.optimizers) {
            for (name, p) in w.params.iter_mut() {
                let get = |key: String| {
                    state
                        .get(&key)
                        .cloned()
                        .ok_or_else(|| anyhow!("checkpoint lacks optimizer state {key}"))
                };
                let saved = params
                    .get(name)
                    .ok_or_else(|| anyhow!("checkpoint lacks parameter {name}"))?;
                let device = p.device().clone();
                *p = saved.to_dtype(p.dtype())?.to_device(&device)?;
                opt.m
                    .insert(name.clone(), get(format!("m.{name}"))?.to_device(&device)?);
                opt.v
                    .insert(name.clone(), get(format!("v.{name}"))?.to_device(&device)?);
            }
            opt.steps = steps;
            w.refresh_weights()?;
        }
        Ok(())
    }

    /// Every stage's parameters in one map (a tied embedding appears once).
    pub fn parameters(&self) -> TensorMap {
        self.workers.iter().flat_map(|w| w.params.clone()).collect()
    }

    /// Every stage's accumulated gradients in one map.
    pub fn gradients(&self) -> TensorMap {
        self.workers.iter().flat_map(|w| w.grads.clone()).collect()
    }
}

/// The input must fit the schedule: one token tensor per micro-batch, slices covering the sequence.
fn check_input(schedule: &Schedule, input: &IterationInput) -> anyhow::Result<()> {
    let c = &schedule.config;
    if input.tokens.len() != c.microbatches as usize {
        bail!(
            "{} micro-batches of data for a schedule of {} micro-batches",
            input.tokens.len(),
            c.microbatches
        );
    }
    if input.slices.len() != c.slices as usize {
        bail!(
            "{} slices in the plan for a schedule of {} slices",
            input.slices.len(),
            c.slices
        );
    }
    let seq = input.tokens[0].dim(1)?.saturating_sub(1);
    if let Some(masks) = &input.masks {
        if masks.len() != input.tokens.len() {
            bail!(
                "{} loss masks for {} micro-batches of tokens",
                masks.len(),
                input.tokens.len()
            );
        }
        for (mb, (mask, tokens)) in masks.iter().zip(&input.tokens).enumerate() {
            let want = [tokens.dim(0)?, seq];
            if mask.dims() != want {
                bail!(
                    "micro-batch {mb}: loss mask {:?} must be {want:?} (one weight per target)",
                    mask.dims()
                );
            }
        }
    }
    let covered = input.slices.last().map_or(0, |r| r.end);
    if input.slices.first().map(|r| r.start) != Some(0) || covered != seq {
        bail!("slices {:?} must cover the sequence 0..{seq}", input.slices);
    }
    Ok(())
}
