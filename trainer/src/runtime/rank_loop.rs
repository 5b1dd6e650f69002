//! The one training loop. Every rank of every run executes [`train_rank`] over some transport:
//! a threaded run is `d·p` of them over the in-process transport, a multi-process run one per
//! process over TCP. Initialisation, resume, data, health checks, metrics, checkpoints and the
//! crash hook therefore exist once, and threaded and multi-process runs of one configuration
//! compute bit-identical losses.
//!
//! Rank 0 writes the metrics file and the checkpoints (see [`super::rank_checkpoint`]). Every
//! rank draws the whole global batch and keeps its replica's share, so all replicas see disjoint
//! data and every data stream stays in step.

use crate::error::{fail, Context, Error, Result};
use std::time::Instant;

use candle_core::Device;
use seqpipe_comm::{Group, Transport};
use seqpipe_schedule::Lowered;

use super::admit::load_schedule;
use super::budget::{fit, with_memory_actions};
use super::distributed::{placement, Placement};
use super::elastic::{prepare, ElasticIteration};
use super::elastic_step::{next_elastic, ElasticStats};
use super::exchange::with_exchange;
use super::handshake::agree_on_configuration;
use super::partition::Partition;
use super::rank::{Rank, RankSetup, StageRun, StepFigures, Weights};
use super::rank_checkpoint;
use super::recompute::fewest_layers;
use super::record::StageReport;
use super::vocab::with_vocab_parallel;
use super::worker::IterationInput;
use crate::checkpoint::resume;
use crate::checkpoint::store::CheckpointDir;
use crate::config::{ExchangePairs, TrainConfig};
use crate::data::DataSource;
use crate::health::{Health, Verdict};
use crate::progress_io::{checkpoint_due, MetricsLine, MetricsWriter};
use crate::train::{check, schedule_config, slice_ranges, RunOptions, StepEvent};

/// What a rank knows at the end of its run.
#[derive(Debug, Clone, Default)]
pub struct RankSummary {
    /// The first step this run executed (after a resume, the checkpoint's next step).
    pub first_step: u64,
    /// Global loss of every applied step.
    pub losses: Vec<f64>,
    /// Global accuracy of every applied step, for masked tasks.
    pub accuracies: Vec<f64>,
    /// Wall seconds of every applied step (iteration, reductions and update).
    pub step_seconds: Vec<f64>,
    /// Model FLOPs of every applied step, all replicas (packed documents count each
    /// document's own attention).
    pub step_flops: Vec<f64>,
    /// Documents (pieces cut by row ends counted apart) of every applied step, all replicas,
    /// under masked packing.
    pub step_documents: Vec<usize>,
    /// What every applied elastic step ran.
    pub elastic: Vec<ElasticStats>,
    /// The last applied elastic step's plan (for the summary's simulation).
    pub last_elastic: Option<ElasticIteration>,
    /// Tokens of every applied step, all replicas.
    pub step_tokens: Vec<usize>,
    /// This rank's record of its last applied step (for a Chrome trace).
    pub last_step: Option<StageReport>,
}

/// The parts of a run every step uses.
struct RankRun {
    at: Placement,
    rank: Rank,
    schedule: Lowered,
    partition: Partition,
    source: DataSource,
    first_step: u64,
}

/// The lowered schedule and the layer partition of a configuration.
pub fn plan(cfg: &TrainConfig) -> Result<(Lowered, Partition)> {
    plan_as_run(cfg).map(|(schedule, partition, _)| (schedule, partition))
}

/// As [`plan`], with the configuration as it runs: a memory budget's choice of offload and
/// recomputation in place of the configured ones.
pub fn plan_as_run(cfg: &TrainConfig) -> Result<(Lowered, Partition, TrainConfig)> {
    let schedule = load_schedule(cfg, &schedule_config(cfg)?)?;
    let vstages = (cfg.parallel.stages * cfg.parallel.chunks) as usize;
    let partition = match &cfg.parallel.layers {
        Some(counts) => Partition::from_counts(cfg.model.layers, counts),
        None => Partition::even(cfg.model.layers, vstages),
    }
    .map_err(Error::Config)?;
    let slices = slice_ranges(cfg)?;
    let (schedule, as_run) = match (cfg.parallel.memory_budget, &cfg.parallel.schedule_file) {
        // Elastic steps plan their own pipelines and recomputation (`elastic_step.rs`).
        _ if cfg.parallel.elastic => (schedule, cfg.clone()),
        (Some(budget), _) => {
            let fitted = fit(schedule, cfg, &partition, &slices, budget)?;
            (fitted.schedule, fitted.config)
        }
        // A schedule file places its own memory actions.
        (None, Some(_)) => (schedule, cfg.clone()),
        (None, None) => {
            let schedule = with_memory_actions(schedule, cfg, &partition, &slices)?;
            (schedule, cfg.clone())
        }
    };
    // The vocabulary ops first: the exchange pairs computes around their meetings.
    let schedule = match cfg.parallel.vocab_parallel {
        true => with_vocab_parallel(schedule)?,
        false => schedule,
    };
    let schedule = match cfg.parallel.attention_exchange {
        true => {
            let pairs = cfg
                .parallel
                .exchange_pairs
                .unwrap_or(ExchangePairs::Shorten);
            with_exchange(schedule, &cfg.model, &partition, &slices, pairs.policy())?
        }
        false => schedule,
    };
    Ok((schedule, partition, as_run))
}

/// Checks, agrees with the other ranks, and builds this rank from a seed or a checkpoint.
fn start(
    cfg: &TrainConfig,
    transport: &mut dyn Transport,
    opts: &RunOptions,
    device: &Device,
) -> Result<RankRun> {
    check(cfg)?;
    let p = cfg.parallel.stages as usize;
    let at = placement(transport.rank(), transport.world_size(), p)?;
    if let Some(d) = cfg.parallel.replicas {
        if d as usize != at.replicas {
            fail!(
                Config,
                "parallel.replicas = {d} with {p} stages needs {} ranks, but the run has {}",
                d as usize * p,
                transport.world_size()
            );
        }
    }
    let mut world = Group::world(transport.world_size())?;
    agree_on_configuration(cfg, opts.resume.is_some(), transport, &mut world)?;
    if let (0, Some(dir)) = (at.rank, &cfg.output.checkpoint_dir) {
        // Rank 0 writes the checkpoints: refuse a directory it may not write before step 0.
        CheckpointDir::open_for_writing(dir)?;
    }
    let (schedule, partition, as_run) = plan_as_run(cfg)?;
    // A resumed run's weights are its checkpoint's, restored below.
    let loaded = match (&cfg.init_from, &opts.resume) {
        (Some(init), None) => Some(init.weights(cfg.precision.dtype())?),
        _ => None,
    };
    let mut rank = Rank::new(&RankSetup {
        model: &cfg.model,
        partition: &partition,
        chunks: cfg.parallel.chunks as usize,
        at,
        stages: p,
        weights: loaded
            .as_ref()
            .map_or(Weights::Seed(cfg.seed), Weights::Loaded),
        dtype: cfg.precision.dtype(),
        device,
        optim: &cfg.optim,
        vocab_parallel: cfg.parallel.vocab_parallel,
    })?;
    let chunks = cfg.parallel.chunks as usize;
    let fewest = fewest_layers(&partition, at.stage, p, chunks);
    if !cfg.parallel.elastic {
        rank.worker.recompute = as_run.parallel.recompute.stage(at.stage, fewest)?;
    }
    rank.worker.host_bandwidth = cfg.parallel.host_link_bandwidth.map(|gbs| gbs * 1e9);
    let mut source = DataSource::open(&cfg.data, cfg.model.vocab, cfg.seed)?;
    let mut first_step = 0;
    if let Some(dir) = &opts.resume {
        let ck = resume::load_for(dir, cfg)?;
        rank_checkpoint::restore(&ck, &mut rank)?;
        source.seek(ck.state.position()?)?;
        first_step = ck.state.next_step;
    }
    Ok(RankRun {
        at,
        rank,
        schedule,
        partition,
        source,
        first_step,
    })
}

/// A step's input, with figures of the global batch it is a share of.
pub(crate) struct StepData {
    /// This replica's share.
    pub work: Work,
    /// Tokens of the global batch.
    pub tokens: usize,
    /// Model FLOPs of the global batch.
    pub flops: f64,
    /// Documents in the global batch, when they are packed masked.
    pub documents: Option<usize>,
}

/// What a step runs.
pub(crate) enum Work {
    /// The run's schedule over fixed-shape micro-batches.
    Fixed(IterationInput),
    /// Elastic pipelines over the step's documents, and the seconds their planning took.
    Elastic(ElasticIteration, f64),
}

impl RankRun {
    /// This rank's part of `work`'s iteration.
    fn compute(
        &mut self,
        work: &Work,
        transport: &mut dyn Transport,
        started: Instant,
    ) -> Result<(StageReport, StepFigures)> {
        match work {
            Work::Fixed(input) => {
                self.rank
                    .compute_gradients(&self.schedule, input, transport, started)
            }
            Work::Elastic(iteration, _) => {
                let (stage, stages) = (self.at.stage, self.schedule.actions.len());
                let prepared = prepare(&iteration.runs, &self.partition, stages)?;
                let mine: Vec<StageRun> = prepared
                    .iter()
                    .zip(&iteration.runs)
                    .map(|((schedule, plans), run)| StageRun {
                        schedule,
                        input: &run.input,
                        recompute: plans.get(stage),
                    })
                    .collect();
                self.rank.compute_gradients_over(&mine, transport, started)
            }
        }
    }
}

/// This replica's share of the next global batch.
fn next_input(cfg: &TrainConfig, run: &mut RankRun) -> Result<StepData> {
    let (m, b, s) = (
        cfg.parallel.microbatches as usize,
        cfg.data.batch,
        cfg.data.seq_len,
    );
    let at = run.at;
    let batch = run.source.draw(at.replicas * m, b, s, &Device::Cpu)?;
    let mine = at.replica * m..(at.replica + 1) * m;
    let flops = match &batch.documents {
        Some(documents) => crate::train::documents_flops(cfg, documents)?,
        None => crate::train::step_flops(cfg)? * at.replicas as f64,
    };
    let documents = batch
        .documents
        .as_ref()
        .map(|d| d.iter().map(|d| d.count()).sum());
    let scored = batch.scored_targets(0..at.replicas * m)?;
    if scored <= 0.0 {
        fail!(
            Data,
            "the step's {} sequences score no target (masked packing: every document in them is \
             empty, an end-of-document token alone); the data has nothing to train on here",
            at.replicas * m * b
        );
    }
    let input = IterationInput {
        ragged: None,
        documents: batch.documents.as_ref().map(|d| d[mine.clone()].to_vec()),
        // Each replica's losses are divided by the global count over `d`, so that the mean over
        // replicas is the global mean (masks may score different counts per replica).
        normaliser: scored / at.replicas as f64,
        tokens: batch.tokens[mine.clone()].to_vec(),
        masks: batch.masks.map(|masks| masks[mine].to_vec()),
        slices: slice_ranges(cfg)?,
    };
    Ok(StepData {
        work: Work::Fixed(input),
        tokens: crate::train::step_tokens(cfg) * at.replicas,
        flops,
        documents,
    })
}

/// Trains this rank's stage on `device`; `on_step` is called with every applied step's global
/// figures (an error it returns, such as a closed output, stops the run).
pub fn train_rank(
    cfg: &TrainConfig,
    transport: &mut dyn Transport,
    opts: &RunOptions,
    device: &Device,
    mut on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<RankSummary> {
    // A library caller may pass `init_from` unresolved; resolving again changes nothing.
    let cfg = &crate::init::resolved(cfg)?;
    let mut run = start(cfg, transport, opts, device)?;
    let at = run.at;
    let mut metrics = match at.rank {
        0 => MetricsWriter::open(cfg)?,
        _ => None,
    };
    let mut summary = RankSummary {
        first_step: run.first_step,
        ..RankSummary::default()
    };
    let mut health = Health::new(&cfg.optim);
    let tokens = crate::train::step_tokens(cfg) * at.replicas;
    for step in run.first_step..cfg.steps {
        // The allocator's phase boundary: what is held between steps, and each step's peak.
        crate::heap::mark(format!("step {step}"));
        let StepData {
            work,
            tokens: step_tokens,
            flops,
            documents,
        } = match cfg.parallel.elastic {
            true => {
                let world = run.rank.world();
                next_elastic(cfg, &run.partition, &mut run.source, transport, world)?
            }
            false => next_input(cfg, &mut run)?,
        };
        let started = Instant::now();
        let (report, figures) = run.compute(&work, transport, started).with_context(|| {
            format!(
                "rank {} (stage {}, replica {}) at step {step}",
                at.rank, at.stage, at.replica
            )
        })?;
        let lr = cfg.optim.lr_at(step, cfg.steps);
        // Every rank judges the same all-reduced figures, so every rank stops (or skips).
        let verdict = health.check(step, figures.loss, figures.grad_sq)?;
        if verdict == Verdict::Apply {
            run.rank.update(lr, figures.grad_sq)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        let event = StepEvent {
            step,
            loss: figures.loss,
            lr,
            grad_norm: figures.grad_sq.sqrt(),
            tokens_per_sec: tokens as f64 / seconds,
            accuracy: figures.answers.accuracy(),
        };
        if let (Some(w), Verdict::Apply) = (&mut metrics, verdict) {
            let mfu = opts.peak_flops.map(|peak| flops / seconds / peak);
            w.write(&metrics_line(&event, &figures, mfu))?;
        }
        if checkpoint_due(cfg, step) {
            let position = run.source.position();
            rank_checkpoint::save(
                cfg,
                step,
                position,
                &run.partition,
                &mut run.rank,
                transport,
            )?;
        }
        if opts.abort_after_step == Some(step) {
            std::process::abort();
        }
        if verdict == Verdict::Skip {
            continue;
        }
        summary.losses.push(figures.loss);
        summary.accuracies.extend(event.accuracy);
        summary.step_seconds.push(seconds);
        summary.step_flops.push(flops);
        summary.step_documents.extend(documents);
        summary.step_tokens.push(step_tokens);
        if let Work::Elastic(iteration, plan_seconds) = work {
            summary
                .elastic
                .push(ElasticStats::of(&iteration, plan_seconds));
            summary.last_elastic = Some(iteration);
        }
        on_step(&event)?;
        summary.last_step = Some(report);
    }
    crate::heap::mark("end");
    Ok(summary)
}

/// The metrics line of an applied step.
fn metrics_line(event: &StepEvent, figures: &StepFigures, mfu: Option<f64>) -> MetricsLine {
    MetricsLine {
        step: event.step,
        loss: event.loss,
        lr: event.lr,
        grad_norm: event.grad_norm,
        tokens_per_sec: event.tokens_per_sec,
        mfu,
        accuracy: event.accuracy,
        peak_activation_bytes: figures.peak_bytes.clone(),
    }
}
