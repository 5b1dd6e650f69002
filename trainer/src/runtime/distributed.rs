//! One pipeline stage per process: the multi-process form of [`super::Pipeline`].
//!
//! Ranks come from the launcher's environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, as `torchrun --no-python` and Slurm scripts set them). With `WORLD_SIZE = d·p`
//! there are `d` data-parallel replicas of a `p`-stage pipeline: rank `r` runs stage `r mod p` of
//! replica `r div p`. Each replica trains on its own micro-batches; after the pipeline iteration
//! the gradients of each stage are averaged over its replicas (ring all-reduce), the global
//! gradient norm is all-reduced over every rank, and every rank steps its own optimizer. Replicas
//! therefore hold identical weights, and a `d × p` run equals a threaded `p`-stage run over all
//! `d·m` micro-batches.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use candle_core::{Device, Tensor};
use seqpipe_comm::{Group, Transport};
use seqpipe_schedule::{generate, lower};

use super::handshake::agree_on_configuration;
use super::partition::Partition;
use super::pipeline::holding;
use super::rank_checkpoint::{self, RankShard};
use super::record::{Answers, StageReport};
use super::tensor_msg::{from_message, to_message};
use super::worker::{IterationInput, StageSpec, StageWorker};
use crate::checkpoint::resume;
use crate::checkpoint::store::CheckpointDir;
use crate::config::TrainConfig;
use crate::data::DataSource;
use crate::health::{Health, Verdict};
use crate::model::params::{init_params, param_specs};
use crate::optim::{clip_scale, sum_of_squares, AdamW};
use crate::progress_io::{checkpoint_due, MetricsLine, MetricsWriter};
use crate::train::{check, schedule_config, slice_ranges, RunOptions, StepEvent};

/// Where this process sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Transport rank.
    pub rank: usize,
    /// Pipeline stage it runs.
    pub stage: usize,
    /// Data-parallel replica it belongs to.
    pub replica: usize,
    /// Replicas in the world.
    pub replicas: usize,
}

/// Rank `rank` of `world` ranks running a `stages`-stage pipeline.
pub fn placement(rank: usize, world: usize, stages: usize) -> anyhow::Result<Placement> {
    if stages == 0 || world % stages != 0 {
        bail!("WORLD_SIZE = {world} is not a multiple of parallel.stages = {stages}: use {stages}, {}, {}, ... ranks", 2 * stages, 3 * stages);
    }
    Ok(Placement {
        rank,
        stage: rank % stages,
        replica: rank / stages,
        replicas: world / stages,
    })
}

/// Sum `t` over `group` (all ranks of the group call this in the same order).
fn all_reduce(
    transport: &mut dyn Transport,
    group: &mut Group,
    t: &Tensor,
) -> anyhow::Result<Tensor> {
    let summed = transport.all_reduce_sum(group, to_message(t)?)?;
    Ok(from_message(summed, &Device::Cpu)?.reshape(t.dims())?)
}

/// What a rank knows at the end of its run.
#[derive(Debug, Clone)]
pub struct RankSummary {
    /// Global loss of every step this process ran.
    pub losses: Vec<f64>,
    /// Global accuracy of every step, for masked tasks.
    pub accuracies: Vec<f64>,
    /// This rank's record of its last step (for a Chrome trace).
    pub last_step: Option<StageReport>,
}

/// Per-step figures every rank contributes to one all-reduce: gradient sum of squares, loss,
/// answers scored and right, and each stage's peak activation bytes (replica 0's ranks only).
fn step_figures(
    at: Placement,
    stages: usize,
    grads: f64,
    report: &StageReport,
) -> anyhow::Result<Tensor> {
    let mut v = vec![
        grads,
        report.loss,
        report.answers.scored as f64,
        report.answers.correct as f64,
    ];
    v.extend((0..stages).map(|s| {
        if at.replica == 0 && s == at.stage {
            report.peak_bytes as f64
        } else {
            0.0
        }
    }));
    Ok(Tensor::new(v, &Device::Cpu)?)
}

/// Trains this rank's stage; `on_step` is called on every rank with the global loss. Rank 0
/// writes the metrics file and the checkpoints (see [`super::rank_checkpoint`]).
pub fn train_rank(
    cfg: &TrainConfig,
    transport: &mut dyn Transport,
    opts: &RunOptions,
    mut on_step: impl FnMut(&StepEvent) -> anyhow::Result<()>,
) -> anyhow::Result<RankSummary> {
    check(cfg)?;
    if cfg.device != "cpu" {
        anyhow::bail!(
            "device = {:?}: multi-process runs keep their stages on the CPU for now (their \
             gradients and checkpoints travel over TCP); run threaded for a GPU",
            cfg.device
        );
    }
    let p = cfg.parallel.stages as usize;
    let at = placement(transport.rank(), transport.world_size(), p)?;
    let mut world = Group::world(transport.world_size())?;
    agree_on_configuration(cfg, opts.resume.is_some(), transport, &mut world)?;
    if let (0, Some(dir)) = (at.rank, &cfg.output.checkpoint_dir) {
        // Rank 0 writes the checkpoints: refuse a directory it may not write before step 0.
        CheckpointDir::open_for_writing(dir)?;
    }
    if cfg.model.tie_embeddings && p > 1 {
        bail!("model.tie_embeddings with several stages is not supported in multi-process runs yet; untie the embedding");
    }
    let config = schedule_config(cfg)?;
    let schedule = lower(&generate(&config)?)?;
    super::admit::admit(&schedule)?;
    let v = config.chunks as usize;
    let partition = match &cfg.parallel.layers {
        Some(counts) => Partition::from_counts(cfg.model.layers, counts),
        None => Partition::even(cfg.model.layers, p * v),
    }
    .map_err(|e| anyhow!(e))?;
    let hold = holding(&partition, at.stage, p, v);
    let dtype = cfg.precision.dtype();
    let mut params = init_params(
        &param_specs(&cfg.model, &hold),
        cfg.seed,
        dtype,
        &Device::Cpu,
    )?;
    let mut optimizer = AdamW::new(cfg.optim.clone(), &params)?;
    let mut source = DataSource::open(&cfg.data, cfg.model.vocab, cfg.seed)?;
    let mut first_step = 0;
    if let Some(dir) = &opts.resume {
        let ck = resume::load_for(dir, cfg)?;
        rank_checkpoint::restore(&ck, &mut params, &mut optimizer)?;
        source.seek(ck.state.position()?)?;
        first_step = ck.state.next_step;
    }
    let spec = StageSpec {
        stage: at.stage,
        stages: p,
        chunk_layers: hold.layers.clone(),
        virtual_stages: p * v,
        rank_offset: at.replica * p,
    };
    let mut worker = StageWorker::new(spec, cfg.model.clone(), params, Device::Cpu)?;
    let mut dp_group = Group::new((0..at.replicas).map(|r| r * p + at.stage).collect())?;
    let slices = slice_ranges(cfg)?;
    let (m, b, s) = (
        cfg.parallel.microbatches as usize,
        cfg.data.batch,
        cfg.data.seq_len,
    );
    let mut metrics = match at.rank {
        0 => MetricsWriter::open(cfg)?,
        _ => None,
    };
    let mut summary = RankSummary {
        losses: Vec::new(),
        accuracies: Vec::new(),
        last_step: None,
    };
    let mut health = Health::new(&cfg.optim);
    for step in first_step..cfg.steps {
        // Every rank draws the whole global batch and keeps its replica's share, so all replicas
        // see disjoint data and the stream stays in step everywhere.
        let batch = source.draw(at.replicas * m, b, s, &Device::Cpu)?;
        let mine = at.replica * m..(at.replica + 1) * m;
        let replicas = at.replicas as f64;
        let input = IterationInput {
            // Each replica's losses are divided by the global count over `d`, so that the mean
            // over replicas is the global mean (masks may score different counts per replica).
            normaliser: batch.scored_targets(0..at.replicas * m)? / replicas,
            tokens: batch.tokens[mine.clone()].to_vec(),
            masks: batch.masks.map(|masks| masks[mine].to_vec()),
            slices: slices.clone(),
        };
        let started = Instant::now();
        worker.zero_grads()?;
        let report = worker
            .run(&schedule, &input, transport, started)
            .with_context(|| {
                format!(
                    "rank {} (stage {}, replica {}) at step {step}",
                    at.rank, at.stage, at.replica
                )
            })?;
        if at.replicas > 1 {
            for g in worker.grads.values_mut() {
                *g = (all_reduce(transport, &mut dp_group, g)? / replicas)?;
            }
        }
        let own = step_figures(at, p, sum_of_squares(&worker.grads)?, &report)?;
        let figures = all_reduce(transport, &mut world, &own)?.to_vec1::<f64>()?;
        let total = figures[0] / replicas;
        let loss = figures[1] / replicas;
        let answers = Answers {
            scored: figures[2] as usize,
            correct: figures[3] as usize,
        };
        let lr = cfg.optim.lr_at(step, cfg.steps);
        // Every rank judges the same all-reduced figures, so every rank stops (or skips).
        let verdict = health.check(step, loss, total)?;
        if verdict == Verdict::Apply {
            optimizer.step(
                &mut worker.params,
                &worker.grads,
                lr,
                clip_scale(total, cfg.optim.clip_norm),
            )?;
            worker.refresh_weights()?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let tokens_per_sec = (at.replicas * m * b * s) as f64 / seconds;
        if let (Some(w), Verdict::Apply) = (&mut metrics, verdict) {
            w.write(&MetricsLine {
                step,
                loss,
                lr,
                grad_norm: total.sqrt(),
                tokens_per_sec,
                // Processes share the machine's cores in ways one probe cannot see: no MFU.
                mfu: None,
                accuracy: answers.accuracy(),
                peak_activation_bytes: figures[4..].iter().map(|&b| b as usize).collect(),
            })?;
        }
        if checkpoint_due(cfg, step) {
            let shard = RankShard {
                at,
                params: &worker.params,
                optimizer: &optimizer,
            };
            let position = source.position();
            rank_checkpoint::save(
                cfg, step, position, &partition, &shard, transport, &mut world,
            )?;
        }
        if opts.abort_after_step == Some(step) {
            std::process::abort();
        }
        if verdict == Verdict::Skip {
            continue;
        }
        summary.losses.push(loss);
        summary.accuracies.extend(answers.accuracy());
        on_step(&StepEvent {
            step,
            loss,
            lr,
            grad_norm: total.sqrt(),
            tokens_per_sec,
            accuracy: answers.accuracy(),
        })?;
        summary.last_step = Some(report);
    }
    Ok(summary)
}

/// The timeout ranks use, from the configuration.
pub fn rank_timeout(cfg: &TrainConfig) -> Duration {
    Duration::from_secs(cfg.parallel.timeout_secs)
}

/// Largest `WORLD_SIZE` accepted: far above any cluster, and a bound on per-rank allocations.
pub const MAX_WORLD: usize = 1 << 20;

/// Whether the launcher asked for several processes (`WORLD_SIZE` > 1). A `WORLD_SIZE` that is
/// set but not a whole number from 1 to [`MAX_WORLD`] is an error: ignoring it would let each
/// process train alone, silently.
pub fn launched_multi_process() -> anyhow::Result<bool> {
    let Ok(text) = std::env::var("WORLD_SIZE") else {
        return Ok(false);
    };
    match text.trim().parse::<usize>() {
        Ok(w) if (1..=MAX_WORLD).contains(&w) => Ok(w > 1),
        _ => bail!(
            "WORLD_SIZE = {text:?} (from the launcher's environment) is not a number of \
             processes from 1 to {MAX_WORLD}; unset it for a single-process run"
        ),
    }
}
