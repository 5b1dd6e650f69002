//! The training loop behind `seqpipe train`: checks the whole configuration before any work,
//! builds the pipeline, runs the steps, and summarises throughput, MFU, bubble and memory against
//! the planners' predictions.

use crate::error::{Error, Result};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::runtime::recompute::Recompute;
use candle_core::{Device, Tensor};
use seqpipe_comm::{CommOptions, LocalTransport};
use seqpipe_kernels::Documents;
use seqpipe_memory::FlopCosts;
use seqpipe_schedule::{
    exchange_costs, simulate, strip_exchange, Action, Op, P2p, Schedule, ScheduleConfig,
    ScheduleKind, Simulation,
};
use seqpipe_slicing::{balanced, uniform, CostModel, Padding};

use crate::checkpoint::store::CheckpointDir;
use crate::config::{DataKind, SlicingMethod, TrainConfig};
use crate::data::{entropy, Packing, RetrievalSource};
use crate::model::ModelConfig;
use crate::predict::{predict, predicted_peaks, stage_states, PredictInput};
use crate::runtime::budget::predicted_stage_peaks;
use crate::runtime::elastic::{prepare, ElasticIteration};
use crate::runtime::elastic_step::{simulate_iteration, ElasticStats};
use crate::runtime::error::combine;
use crate::runtime::offload::Offload;
use crate::runtime::rank_loop::{plan_as_run, train_rank, RankSummary};
use crate::runtime::record::measured_bubble;
use crate::runtime::{Partition, StageReport};

/// What the loop reports after every step.
#[derive(Debug, Clone)]
pub struct StepEvent {
    /// 0-based step.
    pub step: u64,
    /// Mean loss of the step's batch.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens per second of this step.
    pub tokens_per_sec: f64,
    /// Accuracy on the scored targets of a masked task (the retrieval task's answers).
    pub accuracy: Option<f64>,
}

/// End-of-run figures.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps run.
    pub steps: u64,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Mean loss of the last five steps.
    pub final_loss: f64,
    /// The best achievable loss where the data source knows it (the Markov source's entropy, 0
    /// for the retrieval task).
    pub loss_floor: Option<f64>,
    /// Accuracy of the first step and mean of the last five, for masked tasks.
    pub accuracy: Option<(f64, f64)>,
    /// Accuracy of guessing without the context, for masked tasks.
    pub chance_accuracy: Option<f64>,
    /// What the accuracy scores: a task's answers, or every scored next token (packed
    /// documents).
    pub accuracy_of: &'static str,
    /// Mean documents per step under masked packing (pieces cut by row ends counted apart).
    pub documents_per_step: Option<f64>,
    /// Tokens per second over all steps after the first.
    pub tokens_per_sec: f64,
    /// Model FLOP/s achieved (3 × forward FLOPs of the cost model).
    pub achieved_flops: f64,
    /// Measured dense matmul FLOP/s of this machine (candle, f32).
    pub peak_flops: f64,
    /// Measured bubble ratio of the last step.
    pub measured_bubble: f64,
    /// Simulated bubble ratio of the same schedule with FLOP-proportional costs.
    pub simulated_bubble: f64,
    /// With the attention exchange: its pairs (heavy sides), and the simulated bubble of the
    /// same schedule without them.
    pub exchange: Option<(usize, f64)>,
    /// The share of this machine's cores the same simulation keeps busy when the stage threads
    /// share them (`Simulation::core_use`): `1 − bubble` with a core per stage.
    pub simulated_core_use: f64,
    /// Measured peak activation bytes per stage, saved plus transient buffers (last step).
    pub peak_bytes: Vec<usize>,
    /// Measured peak saved-activation bytes per stage (last step).
    pub peak_saved_bytes: Vec<usize>,
    /// The `memory` crate's prediction of `peak_saved_bytes` (none for uneven partitions or f64).
    pub predicted_saved_bytes: Option<Vec<f64>>,
    /// Units each stage offloads to host memory per step (`parallel.offload`).
    pub offloaded_units: Vec<usize>,
    /// Units each stage recomputes per step (`parallel.recompute`).
    pub recomputed_units: Vec<usize>,
    /// The recomputation setting of the run.
    pub recompute: Recompute,
    /// The offload the run used: the configured one, or the memory budget's choice.
    pub offload: Offload,
    /// With a memory budget: the budget, and the predicted peak per stage (model states +
    /// activations).
    pub budget: Option<(u64, Vec<f64>)>,
    /// What every elastic step ran (`parallel.elastic`).
    pub elastic_steps: Vec<ElasticStats>,
    /// The last step's per-stage records (for a Chrome trace).
    pub last_step: Vec<StageReport>,
}

/// The schedule configuration the train config asks for.
pub fn schedule_config(cfg: &TrainConfig) -> Result<ScheduleConfig> {
    let par = &cfg.parallel;
    let kind = ScheduleKind::ALL
        .into_iter()
        .find(|k| k.name() == par.schedule)
        .ok_or_else(|| {
            let names: Vec<&str> = ScheduleKind::ALL.iter().map(|k| k.name()).collect();
            Error::Config(format!(
                "unknown schedule `{}`; known: {}",
                par.schedule,
                names.join(", ")
            ))
        })?;
    let mut c = ScheduleConfig::new(kind, par.stages, par.microbatches)
        .with_slices(par.slices)
        .with_chunks(par.chunks);
    if let Some(g) = par.group {
        c = c.with_group(g);
    }
    Ok(c)
}

/// Token ranges of the slices.
pub fn slice_ranges(cfg: &TrainConfig) -> Result<Vec<Range<usize>>> {
    let cost = CostModel::flops(&cfg.model.shape())?;
    let (seq, n) = (cfg.data.seq_len as u64, cfg.parallel.slices as usize);
    let plan = match cfg.parallel.slicing {
        SlicingMethod::Uniform => uniform(seq, n, 1, Padding::None, &cost)?,
        SlicingMethod::Balanced => balanced(seq, n, 1, &cost)?,
    };
    Ok(plan
        .slices
        .iter()
        .map(|s| s.start as usize..s.end as usize)
        .collect())
}

pub use crate::checks::check;

/// Simulated bubble of the configuration with costs proportional to each action's FLOPs.
pub fn simulated_bubble(
    cfg: &TrainConfig,
    schedule: &Schedule,
    partition: &Partition,
    slices: &[Range<usize>],
) -> Result<f64> {
    Ok(simulate_flops(cfg, schedule, partition, slices)?.bubble_ratio)
}

/// The simulation of the configuration with costs proportional to each action's FLOPs.
pub fn simulate_flops(
    cfg: &TrainConfig,
    schedule: &Schedule,
    partition: &Partition,
    slices: &[Range<usize>],
) -> Result<Simulation> {
    let prices = flop_costs(&cfg.model, cfg.parallel.stages, schedule, partition, slices);
    let priced = exchange_costs(schedule, |a| prices.cost(a), |a| prices.column(a));
    Ok(simulate(schedule, priced, &P2p::free())?)
}

/// The FLOP prices of `schedule`'s actions (`seqpipe_memory::FlopCosts`) for the trainer's
/// partition and slices; the head counts as vocabulary-parallel when the schedule has its ops.
pub fn flop_costs(
    model: &ModelConfig,
    stages: u32,
    schedule: &Schedule,
    partition: &Partition,
    slices: &[Range<usize>],
) -> FlopCosts {
    let layers: Vec<usize> = partition.ranges.iter().map(|r| r.len()).collect();
    let tokens: Vec<Range<u64>> = slices
        .iter()
        .map(|r| r.start as u64..r.end as u64)
        .collect();
    let sharded = schedule.iter().any(|a| a.op.is_vocab());
    FlopCosts::new(&model.shape(), stages, &layers, &tokens, sharded)
}

/// Pipeline stages run as threads, so each candle op should use one thread: candle's own pool
/// spin-waits and slows everything down when stages already occupy the cores (measured: 4.7×
/// fewer tokens/s for the default run on 2 cores). Sets `CANDLE_NUM_THREADS=1` and
/// `RAYON_NUM_THREADS=1` unless the user chose values: candle's CPU matmul asks for the rayon
/// thread count on every call and, when `RAYON_NUM_THREADS` is unset, reads `/proc/cpuinfo` to
/// count physical cores each time (measured: ~8 % of the default run's time in the kernel).
/// One thread per op also when a run has fewer stages than cores: two threads per op made a
/// one-stage run on 2 cores 1.6× slower (2,290 against 3,610 tokens/s, 4 layers of hidden 256 at
/// 1024 tokens, measured 2026-11-27); use data-parallel replicas (`--replicas`) for the other
/// cores. Call it at the start of `main`, before any other thread exists.
pub fn one_thread_per_op() {
    for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, "1");
        }
    }
}

/// Dense f32 matmul FLOP/s of this machine through candle, all cores busy at once (one matmul
/// loop per core, as the stages run): the MFU ceiling on CPU.
pub fn measure_matmul_peak() -> Result<f64> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = 512;
    let per_core: Vec<Result<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(move || -> Result<f64> {
                    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
                    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
                    a.matmul(&b)?; // warm up caches
                    let (start, mut runs) = (Instant::now(), 0u32);
                    while start.elapsed() < Duration::from_millis(400) {
                        a.matmul(&b)?;
                        runs += 1;
                    }
                    Ok(2.0 * (n * n * n) as f64 * runs as f64 / start.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Runtime("matmul probe panicked".into())))
            })
            .collect()
    });
    per_core.into_iter().sum()
}

/// How a run starts and whether it is cut short.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from this checkpoint directory (its configuration must match).
    pub resume: Option<std::path::PathBuf>,
    /// Abort the process right after this step (and its checkpoint): a crash, for tests.
    pub abort_after_step: Option<u64>,
    /// The matmul FLOP/s MFU is measured against (none: no MFU in the metrics).
    pub peak_flops: Option<f64>,
}

/// Tokens one replica trains on per step.
pub fn step_tokens(cfg: &TrainConfig) -> usize {
    cfg.parallel.microbatches as usize * cfg.data.batch * cfg.data.seq_len
}

/// Model FLOPs of one replica's step: 3 × the cost model's forward FLOPs.
pub fn step_flops(cfg: &TrainConfig) -> Result<f64> {
    let per_sequence = CostModel::flops(&cfg.model.shape())?.sequence(cfg.data.seq_len as u64);
    Ok(3.0 * per_sequence * (cfg.parallel.microbatches as usize * cfg.data.batch) as f64)
}

/// Model FLOPs of a step over packed rows: 3 × the forward FLOPs of every document as its own
/// causal sequence (what masked packing computes; a document cut by a row end counts per piece).
pub fn documents_flops(cfg: &TrainConfig, documents: &[Arc<Documents>]) -> Result<f64> {
    let cost = CostModel::flops(&cfg.model.shape())?;
    let forward: f64 = documents
        .iter()
        .flat_map(|d| (0..d.rows()).flat_map(move |row| d.pieces(row, 0..d.len())))
        .map(|p| cost.sequence((p.end - p.start) as u64))
        .sum();
    Ok(3.0 * forward)
}

/// Runs the configured training from scratch; `on_step` sees every step as it finishes (an
/// error it returns, such as a closed output, stops the run).
pub fn train(
    cfg: &TrainConfig,
    on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<TrainSummary> {
    train_with(cfg, &RunOptions::default(), on_step)
}

/// Runs the configured training in this process with [`RunOptions`]: `parallel.replicas ×
/// parallel.stages` ranks, each a thread running [`train_rank`] over the in-process transport
/// (rank 0 on the calling thread, which also calls `on_step`).
pub fn train_with(
    cfg: &TrainConfig,
    opts: &RunOptions,
    on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<TrainSummary> {
    let cfg = &crate::init::resolved(cfg)?;
    check(cfg)?;
    if let Some(dir) = &cfg.output.checkpoint_dir {
        // Refuse a directory seqpipe may not write before any work is done, not at step N.
        CheckpointDir::open_for_writing(dir)?;
    }
    let device = crate::device::open(&cfg.device)?;
    let peak_flops = match &device {
        Device::Cpu => measure_matmul_peak()?,
        gpu => crate::device::matmul_peak(gpu, cfg.precision.dtype())?,
    };
    let opts = RunOptions {
        peak_flops: Some(peak_flops),
        ..opts.clone()
    };
    let summaries = run_threads(cfg, &opts, &device, on_step)?;
    summarise(cfg, &summaries, peak_flops)
}

/// Every rank of the run on its own thread; their summaries in rank order.
fn run_threads(
    cfg: &TrainConfig,
    opts: &RunOptions,
    device: &Device,
    on_step: impl FnMut(&StepEvent) -> Result<()>,
) -> Result<Vec<RankSummary>> {
    let world = cfg.parallel.replicas.unwrap_or(1) as usize * cfg.parallel.stages as usize;
    let comm = CommOptions::with_timeout(Duration::from_secs(cfg.parallel.timeout_secs));
    let mut transports = LocalTransport::mesh(world, comm)?;
    let others = transports.split_off(1);
    let mut first = transports
        .pop()
        .ok_or_else(|| Error::Runtime("a run has rank 0".into()))?;
    // The ranks share this process: only rank 0 (which writes the files) takes the crash hook,
    // so the crash comes after its metrics line, as in a multi-process run.
    let others_opts = RunOptions {
        abort_after_step: None,
        ..opts.clone()
    };
    let results: Vec<Result<RankSummary>> = std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .into_iter()
            .map(|mut t| {
                let opts = &others_opts;
                scope.spawn(move || train_rank(cfg, &mut t, opts, device, |_| Ok(())))
            })
            .collect();
        // A failed rank drops its transport on return, so its peers fail at once, naming it.
        let own = train_rank(cfg, &mut first, opts, device, on_step);
        drop(first);
        let mut all = vec![own];
        for (i, h) in handles.into_iter().enumerate() {
            all.push(
                h.join()
                    .unwrap_or_else(|_| Err(Error::Panicked { rank: i + 1 })),
            );
        }
        all
    });
    let (mut summaries, mut errors) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok(s) => summaries.push(s),
            Err(e) => errors.push(e),
        }
    }
    match errors.is_empty() {
        true => Ok(summaries),
        false => Err(combine(errors)),
    }
}

/// The run's figures from its ranks' summaries, beside the planners' predictions.
fn summarise(cfg: &TrainConfig, ranks: &[RankSummary], peak_flops: f64) -> Result<TrainSummary> {
    let slices = slice_ranges(cfg)?;
    let (schedule, partition, as_run) = plan_as_run(cfg)?;
    let head = &ranks[0];
    let figures = match &head.last_elastic {
        Some(iteration) => elastic_figures(cfg, &partition, iteration)?,
        None => schedule_figures(cfg, &schedule, &partition, &as_run, &slices)?,
    };
    let (loss_floor, chance_accuracy) = match cfg.data.kind {
        DataKind::Markov => (Some(entropy()), None),
        DataKind::Retrieval => (
            Some(0.0),
            Some(RetrievalSource::new(cfg.model.vocab, cfg.seed)?.chance()),
        ),
        // The accuracy counts answer tokens: one digit in ten by chance in the token form.
        DataKind::Passkey => (Some(0.0), cfg.data.tokenizer.is_none().then_some(0.1)),
        DataKind::Tokens | DataKind::Text => (None, None),
    };
    // The first step warms caches up: time the others (or the only one).
    let skip = head.step_seconds.len().min(1);
    let timed = &head.step_seconds[skip..];
    let timed_flops: f64 = head.step_flops[skip..].iter().sum();
    let timed_tokens: usize = head.step_tokens[skip..].iter().sum();
    let tokens_per_sec = match timed.is_empty() {
        true => 0.0,
        false => timed_tokens as f64 / timed.iter().sum::<f64>(),
    };
    let tail = |xs: &[f64]| {
        let t = &xs[xs.len().saturating_sub(5)..];
        t.iter().sum::<f64>() / t.len().max(1) as f64
    };
    let last_step: Vec<StageReport> = ranks[..cfg.parallel.stages as usize]
        .iter()
        .filter_map(|r| r.last_step.clone())
        .collect();
    Ok(TrainSummary {
        steps: cfg.steps - head.first_step,
        first_loss: head.losses.first().copied().unwrap_or(f64::NAN),
        final_loss: tail(&head.losses),
        loss_floor,
        accuracy: head
            .accuracies
            .first()
            .map(|&a| (a, tail(&head.accuracies))),
        chance_accuracy,
        accuracy_of: match cfg.data.packing {
            Packing::Masked => "next-token accuracy",
            Packing::Plain => "answer accuracy",
        },
        documents_per_step: (!head.step_documents.is_empty()).then(|| {
            head.step_documents.iter().sum::<usize>() as f64 / head.step_documents.len() as f64
        }),
        tokens_per_sec,
        achieved_flops: match timed.is_empty() {
            true => 0.0,
            false => timed_flops / timed.iter().sum::<f64>(),
        },
        peak_flops,
        measured_bubble: measured_bubble(&last_step),
        simulated_bubble: figures.simulated_bubble,
        exchange: figures.exchange,
        simulated_core_use: figures.simulated_core_use,
        peak_bytes: last_step.iter().map(|r| r.peak_bytes).collect(),
        peak_saved_bytes: last_step.iter().map(|r| r.peak_saved_bytes).collect(),
        predicted_saved_bytes: figures.predicted_saved_bytes,
        offload: as_run.parallel.offload,
        budget: figures.budget,
        offloaded_units: figures.offloaded_units,
        recomputed_units: figures.recomputed_units,
        recompute: as_run.parallel.recompute.clone(),
        elastic_steps: head.elastic.clone(),
        last_step,
    })
}

/// What the planners say of the run's schedule: simulated, predicted and counted.
struct ScheduleFigures {
    simulated_bubble: f64,
    exchange: Option<(usize, f64)>,
    simulated_core_use: f64,
    predicted_saved_bytes: Option<Vec<f64>>,
    budget: Option<(u64, Vec<f64>)>,
    offloaded_units: Vec<usize>,
    recomputed_units: Vec<usize>,
}

/// The figures of the run's one schedule over fixed-shape micro-batches.
fn schedule_figures(
    cfg: &TrainConfig,
    schedule: &seqpipe_schedule::Lowered,
    partition: &Partition,
    as_run: &TrainConfig,
    slices: &[Range<usize>],
) -> Result<ScheduleFigures> {
    let budget = match cfg.parallel.memory_budget {
        Some(b) => Some((
            b,
            predicted_stage_peaks(as_run, schedule, partition, slices)?,
        )),
        None => None,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(ScheduleFigures {
        simulated_bubble: simulated_bubble(cfg, schedule, partition, slices)?,
        exchange: exchange_figures(cfg, schedule, partition, slices)?,
        simulated_core_use: simulate_flops(cfg, schedule, partition, slices)?.core_use(cores),
        predicted_saved_bytes: predicted_peaks(&PredictInput::of(
            as_run, schedule, partition, slices,
        ))?,
        budget,
        offloaded_units: per_stage_count(schedule, Op::Offload),
        recomputed_units: per_stage_count(schedule, Op::Recompute),
    })
}

/// The figures of the last step's elastic pipelines: simulated with each action's FLOPs, and
/// the memory model's peaks, the largest over the pipelines.
fn elastic_figures(
    cfg: &TrainConfig,
    partition: &Partition,
    iteration: &ElasticIteration,
) -> Result<ScheduleFigures> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (bubble, core_use) = simulate_iteration(&cfg.model, partition, iteration, cores)?;
    let stages = cfg.parallel.stages as usize;
    let mut recomputed = vec![0; stages];
    let mut peaks: Option<(Vec<f64>, Vec<f64>)> = Some((vec![0.0; stages], vec![0.0; stages]));
    let prepared = prepare(&iteration.runs, partition, stages)?;
    for ((schedule, _), run) in prepared.iter().zip(&iteration.runs) {
        for (s, n) in per_stage_count(schedule, Op::Recompute)
            .into_iter()
            .enumerate()
        {
            recomputed[s] += n;
        }
        let predicted = predict(&PredictInput {
            model: &cfg.model,
            dtype: cfg.precision.dtype(),
            batch: 1,
            slices: &[],
            ragged: run.input.ragged.as_deref(),
            schedule,
            partition,
            recompute: &run.recompute,
        })?;
        peaks = match (peaks, predicted) {
            (Some((mut saved, mut working)), Some(p)) => {
                for (s, stage) in p.iter().enumerate() {
                    saved[s] = saved[s].max(stage.peaks.saved);
                    working[s] = working[s].max(stage.peaks.working);
                }
                Some((saved, working))
            }
            _ => None,
        };
    }
    let states = stage_states(&cfg.model, cfg.precision.dtype(), cfg.parallel.stages, 1)?;
    let budget = match (cfg.parallel.memory_budget, &peaks, states) {
        (Some(b), Some((_, working)), Some(states)) => {
            Some((b, states.iter().zip(working).map(|(s, w)| s + w).collect()))
        }
        _ => None,
    };
    Ok(ScheduleFigures {
        simulated_bubble: bubble,
        exchange: None,
        simulated_core_use: core_use,
        predicted_saved_bytes: peaks.map(|(saved, _)| saved),
        budget,
        offloaded_units: vec![0; stages],
        recomputed_units: recomputed,
    })
}

/// The exchange's pairs and the simulated bubble without them, when `schedule` exchanges.
fn exchange_figures(
    cfg: &TrainConfig,
    schedule: &Schedule,
    partition: &Partition,
    slices: &[Range<usize>],
) -> Result<Option<(usize, f64)>> {
    let pairs = schedule
        .iter()
        .filter(|a| a.pair.is_some_and(|p| p.head > 0))
        .count();
    if pairs == 0 {
        return Ok(None);
    }
    let plain = strip_exchange(schedule);
    Ok(Some((
        pairs,
        simulated_bubble(cfg, &plain, partition, slices)?,
    )))
}

/// How many `op` actions each stage's program holds.
fn per_stage_count(schedule: &Schedule, op: Op) -> Vec<usize> {
    let count = |program: &Vec<Action>| program.iter().filter(|a| a.op == op).count();
    schedule.actions.iter().map(count).collect()
}
