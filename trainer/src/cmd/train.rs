//! `seqpipe train`: the main job. With no arguments it trains the tiny model on generated data
//! with 4 SlimPipe stages on the CPU and prints a summary.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use seqpipe_comm::{CommOptions, TcpTransport, Transport};
use seqpipe_trainer::config::{ExchangePairs, Precision, SlicingMethod, TrainConfig};

use super::data_args::DataArgs;
use seqpipe_trainer::data::Packing;
use seqpipe_trainer::health::OnNonFinite;
use seqpipe_trainer::init::{refuse_model_with_init, InitFrom};
use seqpipe_trainer::runtime::budget::parse_bytes;
use seqpipe_trainer::runtime::distributed::{launched_multi_process, rank_timeout};
use seqpipe_trainer::runtime::elastic_step::ElasticStats;
use seqpipe_trainer::runtime::offload::Offload;
use seqpipe_trainer::runtime::rank_loop::train_rank;
use seqpipe_trainer::runtime::recompute::Recompute;
use seqpipe_trainer::runtime::record::chrome_trace;
use seqpipe_trainer::train::{train_with, RunOptions, TrainSummary};

/// Arguments of `seqpipe train`; each flag overrides the config file.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML configuration (all fields optional; defaults train the tiny model).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Pipeline stages.
    #[arg(long)]
    stages: Option<u32>,
    /// Schedule kind (gpipe, 1f1b, interleaved, seq1f1b, seq1f1b-i, slimpipe, zb-h1, gis).
    #[arg(long)]
    schedule: Option<String>,
    /// Micro-batches per step.
    #[arg(long)]
    microbatches: Option<u32>,
    /// Slices per sequence.
    #[arg(long)]
    slices: Option<u32>,
    /// Model chunks per stage.
    #[arg(long)]
    chunks: Option<u32>,
    /// Run this schedule instead of the generated one: PyTorch's CSV layout (one row per stage)
    /// or `seqpipe schedule --format json` output, lowered or not; checked before step 0.
    #[arg(long)]
    schedule_file: Option<PathBuf>,
    /// Data-parallel replicas of the pipeline (threads: replicas × stages; a multi-process run
    /// takes WORLD_SIZE / stages, which must agree).
    #[arg(long)]
    replicas: Option<u32>,
    /// Activations to offload to host memory: none, auto (every unit whose offload saves memory),
    /// a fraction of each stage's units (longest-lived first), or chunks:K (model chunks 0..K).
    #[arg(long, value_name = "none|auto|FRACTION|chunks:K")]
    offload: Option<Offload>,
    /// Forward records to recompute before their backward instead of keeping: none, selective
    /// (norm outputs and SwiGLU product), full (every layer keeps only its input), full:N (the
    /// first N layers of each chunk), full:N0,N1,… (one count per stage) or auto (the fewest
    /// layers per unit that fit --memory-budget, by InfiniPipe's program).
    #[arg(long, value_name = "none|selective|full|full:N|full:N0,N1,…|auto")]
    recompute: Option<Recompute>,
    /// Shard the embedding and LM head over the stages by vocabulary rows (SlimPipe): every
    /// stage takes part in each slice's embedding, head and loss.
    #[arg(long)]
    vocab_parallel: bool,
    /// SlimPipe's attention context exchange: pair the ranks of each steady step by their
    /// slices' cache lengths; the heavy one's oldest K/V is attended by the light one.
    #[arg(long)]
    exchange: bool,
    /// Elastic pipelines (InfiniPipe): whole documents per step, long ones split and short ones
    /// packed into compute-balanced chunks, run longest first. Implies --schedule seq1f1b
    /// --chunks 1 --slicing balanced --packing masked where those are not given (and, with
    /// --memory-budget, --recompute auto: pipelines and recomputation planned to fit).
    #[arg(long)]
    elastic: bool,
    /// Which exchange pairs run: `shorten` (default) keeps those that do not lengthen the
    /// iteration simulated with each compute's FLOPs, `level` every one, as the paper does.
    #[arg(long, value_enum, requires = "exchange")]
    exchange_pairs: Option<ExchangePairs>,
    /// Host-link bandwidth for offloads and reloads, in GB/s (default: as fast as memory copies
    /// go); on a CPU run it emulates a PCIe link.
    #[arg(long, value_name = "GB/s")]
    host_link_bandwidth: Option<f64>,
    /// Bytes per stage the predicted peak must fit (e.g. 512MiB): the least offload that fits
    /// is chosen, or the run is refused with the shortfall.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Slicing method.
    #[arg(long, value_enum)]
    slicing: Option<SlicingMethod>,
    /// Tokens per sequence.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Precision.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Device of a threaded run: cpu, cuda or cuda:N (cuda needs a `cuda` build).
    #[arg(long)]
    device: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// Write the Chrome trace (Perfetto) of the last step here.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Write resumable checkpoints to this directory (the latest one; replaced atomically).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Checkpoint every N steps (and after the last).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Continue from a checkpoint directory written with the same configuration.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Append per-step metrics as JSON lines to this file.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Peak learning rate (optim.lr).
    #[arg(long)]
    lr: Option<f64>,
    /// What a step with a non-finite loss or gradient does: stop the run (default) or skip the
    /// update (at most 5 in a row).
    #[arg(long, value_enum)]
    on_nonfinite: Option<OnNonFinite>,
    /// Abort the process right after this step and its checkpoint (crash testing).
    #[arg(long, hide = true)]
    abort_after_step: Option<u64>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Run the configuration's schedule (stages, chunks, micro-batches, slices, recomputation,
    /// offload) on the tiny model in f32 on this CPU: a `seqpipe plan --emit-config` file tried
    /// small. Applied before the other flags.
    #[arg(long)]
    scale_down: bool,
    /// Start from a Hugging Face Llama checkpoint directory: its config.json's model, its
    /// safetensors' weights, its tokenizer.json for text data (TOML `[init_from] dir`).
    #[arg(long, value_name = "DIR")]
    init_from: Option<std::path::PathBuf>,
    /// A new RoPE base (with --init-from: context extension of the checkpoint).
    #[arg(long)]
    rope_theta: Option<f64>,
    /// A larger position limit (with --init-from: context extension of the checkpoint).
    #[arg(long)]
    max_positions: Option<usize>,
}

fn effective_config(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            refuse_model_with_init(&text, args.init_from.is_some())
                .with_context(|| format!("in {}", path.display()))?;
            TrainConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => TrainConfig::default(),
    };
    if args.scale_down {
        eprintln!("{}", super::plan_emit::scale_down(&mut cfg));
    }
    apply_init_flags(&mut cfg, args);
    let par = &mut cfg.parallel;
    if let Some(v) = args.steps {
        cfg.steps = v;
    }
    if let Some(v) = args.stages {
        par.stages = v;
    }
    if let Some(v) = &args.schedule {
        par.schedule = v.clone();
    }
    if let Some(v) = args.microbatches {
        par.microbatches = v;
    }
    if let Some(v) = args.slices {
        par.slices = v;
    }
    if let Some(v) = &args.schedule_file {
        par.schedule_file = Some(v.clone());
    }
    if let Some(v) = args.replicas {
        par.replicas = Some(v);
    }
    if let Some(v) = args.offload {
        par.offload = v;
    }
    if let Some(v) = &args.recompute {
        par.recompute = v.clone();
    }
    if args.vocab_parallel {
        par.vocab_parallel = true;
    }
    if args.exchange {
        par.attention_exchange = true;
    }
    if let Some(v) = args.exchange_pairs {
        par.exchange_pairs = Some(v);
    }
    if args.elastic {
        par.elastic = true;
        par.schedule = args.schedule.clone().unwrap_or_else(|| "seq1f1b".into());
        par.chunks = args.chunks.unwrap_or(1);
        par.slicing = args.slicing.unwrap_or(SlicingMethod::Balanced);
        cfg.data.packing = args.data.packing.unwrap_or(Packing::Masked);
        if args.memory_budget.is_some() && args.recompute.is_none() {
            par.recompute = Recompute::Auto { plan: None };
        }
    }
    if let Some(v) = args.host_link_bandwidth {
        par.host_link_bandwidth = Some(v);
    }
    if let Some(v) = args.memory_budget {
        par.memory_budget = Some(v);
    }
    if let Some(v) = args.chunks {
        par.chunks = v;
    }
    if let Some(v) = args.slicing {
        par.slicing = v;
    }
    if let Some(v) = args.seq_len {
        cfg.data.seq_len = v;
    }
    if let Some(v) = args.precision {
        cfg.precision = v;
    }
    if let Some(v) = &args.device {
        cfg.device = v.clone();
    }
    if args.scale_down && args.slices.is_some() && args.seq_len.is_none() {
        super::plan_emit::rescale_for_slices(&mut cfg);
    }
    args.data.apply(&mut cfg.data);
    if let Some(v) = &args.checkpoint_dir {
        cfg.output.checkpoint_dir = Some(v.clone());
    }
    if let Some(v) = args.checkpoint_every {
        cfg.output.checkpoint_every = Some(v);
    }
    if let Some(v) = &args.metrics {
        cfg.output.metrics = Some(v.clone());
    }
    if let Some(v) = args.lr {
        cfg.optim.lr = v;
    }
    if let Some(v) = args.on_nonfinite {
        cfg.optim.on_nonfinite = v;
    }
    Ok(seqpipe_trainer::init::resolved(&cfg)?)
}

/// The configuration as TOML that `--config` takes back: with `init_from`, the model is the
/// checkpoint's, so `[model]` (which would conflict with it) is shown as a comment.
fn printable_config(cfg: &TrainConfig) -> anyhow::Result<String> {
    let mut table = toml::Table::try_from(cfg)?;
    if cfg.init_from.is_none() {
        return Ok(toml::to_string(&table)?);
    }
    let model = table
        .remove("model")
        .map(|m| toml::to_string(&m))
        .transpose()?;
    let comment: Vec<String> = model
        .unwrap_or_default()
        .lines()
        .map(|l| format!("# {l}"))
        .collect();
    Ok(format!(
        "# [model], from init_from's config.json (with its extension):\n{}\n\n{}",
        comment.join("\n"),
        toml::to_string(&table)?
    ))
}

/// `--init-from`, `--rope-theta` and `--max-positions`: the extension flags change the
/// checkpoint's model when there is one (`[init_from]` or `--init-from`), else the model's.
fn apply_init_flags(cfg: &mut TrainConfig, args: &TrainArgs) {
    if let Some(dir) = &args.init_from {
        let init = cfg.init_from.get_or_insert_with(|| InitFrom {
            dir: dir.clone(),
            rope_theta: None,
            max_positions: None,
            rope_scaling: None,
        });
        init.dir = dir.clone();
    }
    match &mut cfg.init_from {
        Some(init) => {
            init.rope_theta = args.rope_theta.or(init.rope_theta);
            init.max_positions = args.max_positions.or(init.max_positions);
        }
        None => {
            cfg.model.rope_theta = args.rope_theta.unwrap_or(cfg.model.rope_theta);
            cfg.model.max_positions = args.max_positions.unwrap_or(cfg.model.max_positions);
        }
    }
}

/// Runs `seqpipe train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let cfg = effective_config(args)?;
    if args.print_config {
        out!("{}", printable_config(&cfg)?);
        return Ok(());
    }
    // Every configuration problem, before anything is printed or started.
    seqpipe_trainer::train::check(&cfg)?;
    if launched_multi_process()? {
        return run_rank(&cfg, args);
    }
    let p = &cfg.parallel;
    outln!(
        "training {}-layer model ({:.2}M parameters) on {} stages: {} with {} micro-batches × {} slices × {} chunks, {} tokens per sequence",
        cfg.model.layers,
        cfg.model.parameter_count() / 1e6,
        p.stages,
        p.schedule,
        p.microbatches,
        p.slices,
        p.chunks,
        cfg.data.seq_len
    );
    let bar = ProgressBar::new(cfg.steps);
    bar.set_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    let opts = RunOptions {
        resume: args.resume.clone(),
        abort_after_step: args.abort_after_step,
        peak_flops: None,
    };
    let summary = train_with(&cfg, &opts, |e| {
        let accuracy = e
            .accuracy
            .map_or(String::new(), |a| format!("  acc {:.1}%", 100.0 * a));
        bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.0} tok/s{accuracy}",
            e.loss, e.lr, e.tokens_per_sec
        ));
        bar.inc(1);
        Ok(())
    });
    bar.finish();
    let summary = summary?;
    if let Some(path) = &args.trace {
        std::fs::write(
            path,
            serde_json::to_string(&chrome_trace(&summary.last_step))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
        outln!("trace of the last step written to {}", path.display());
    }
    print_summary(&summary)
}

/// One process of a multi-process run (ranks from the launcher's environment).
fn run_rank(cfg: &TrainConfig, args: &TrainArgs) -> anyhow::Result<()> {
    check_rank_device(cfg)?;
    let tcp = TcpTransport::from_env(CommOptions::with_timeout(rank_timeout(cfg)))?;
    let (mut transport, device) = rank_transport(cfg, tcp)?;
    let (rank, world) = (transport.rank(), transport.world_size());
    let opts = RunOptions {
        resume: args.resume.clone(),
        abort_after_step: args.abort_after_step,
        // Processes share the machine's cores in ways one probe cannot see: no MFU.
        peak_flops: None,
    };
    let summary = train_rank(cfg, transport.as_mut(), &opts, &device, |e| {
        if rank == 0 {
            let accuracy = e
                .accuracy
                .map_or(String::new(), |a| format!("  accuracy {:.1}%", 100.0 * a));
            outln!(
                "step {:>4}  loss {:.6}  lr {:.2e}  {:.0} tok/s{accuracy}",
                e.step,
                e.loss,
                e.lr,
                e.tokens_per_sec
            );
        }
        Ok(())
    })
    .with_context(|| format!("rank {rank} of {world}"))?;
    if let (Some(path), Some(report)) = (&args.trace, &summary.last_step) {
        // Each process has its own clock: one trace file per rank.
        let path = rank_trace_path(path, rank);
        std::fs::write(
            &path,
            serde_json::to_string(&chrome_trace(std::slice::from_ref(report)))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if rank == 0 {
        let (first, last) = (summary.losses[0], summary.losses[summary.losses.len() - 1]);
        outln!("{world} ranks done: loss {first:.4} → {last:.4}");
    }
    Ok(())
}

/// The transport and device of one process of a multi-process run: TCP between CPU stages;
/// NCCL between GPU stages (one process per GPU, the launcher's `LOCAL_RANK` picks it), in a
/// build with the `cuda` and `nccl` features.
fn rank_transport(
    cfg: &TrainConfig,
    tcp: TcpTransport,
) -> anyhow::Result<(Box<dyn Transport>, candle_core::Device)> {
    if cfg.device == "cpu" {
        return Ok((Box::new(tcp), candle_core::Device::Cpu));
    }
    gpu_rank_transport(cfg, tcp)
}

/// Refuses, before any rank waits for another, a multi-process device this build cannot run.
#[cfg(all(feature = "cuda", feature = "nccl"))]
fn check_rank_device(cfg: &TrainConfig) -> anyhow::Result<()> {
    if !matches!(cfg.device.as_str(), "cpu" | "cuda") {
        anyhow::bail!(
            "device = {:?} in a multi-process run: give \"cuda\" (each process takes the GPU \
             its LOCAL_RANK names) or \"cpu\"",
            cfg.device
        );
    }
    Ok(())
}

#[cfg(all(feature = "cuda", feature = "nccl"))]
fn gpu_rank_transport(
    _cfg: &TrainConfig,
    tcp: TcpTransport,
) -> anyhow::Result<(Box<dyn Transport>, candle_core::Device)> {
    let device = seqpipe_trainer::device::open(&format!("cuda:{}", tcp.local_rank()))?;
    let nccl = seqpipe_comm::nccl::NcclTransport::new(tcp)?;
    Ok((Box::new(nccl), device))
}

#[cfg(not(all(feature = "cuda", feature = "nccl")))]
fn check_rank_device(cfg: &TrainConfig) -> anyhow::Result<()> {
    if cfg.device == "cpu" {
        return Ok(());
    }
    anyhow::bail!(
        "device = {:?} in a multi-process run needs a build with the `cuda` and `nccl` features \
         (GPU stages exchange tensors over NCCL); this build has {}. Build it with `cargo xtask \
         gpu-build`, or use --device cpu",
        cfg.device,
        match (cfg!(feature = "cuda"), cfg!(feature = "nccl")) {
            (false, false) => "neither",
            (true, false) => "`cuda` but not `nccl`",
            _ => "`nccl` but not `cuda`",
        }
    )
}

#[cfg(not(all(feature = "cuda", feature = "nccl")))]
fn gpu_rank_transport(
    cfg: &TrainConfig,
    _tcp: TcpTransport,
) -> anyhow::Result<(Box<dyn Transport>, candle_core::Device)> {
    check_rank_device(cfg)?;
    anyhow::bail!("device = {:?}: no GPU transport in this build", cfg.device)
}

/// `out.json` → `out.rank3.json`.
fn rank_trace_path(path: &std::path::Path, rank: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or("trace".into(), |s| s.to_string_lossy());
    let ext = path
        .extension()
        .map_or("json".into(), |e| e.to_string_lossy());
    path.with_file_name(format!("{stem}.rank{rank}.{ext}"))
}

/// What the elastic steps ran, per step on average, and the last step's mesh.
fn print_elastic(steps: &[ElasticStats]) -> anyhow::Result<()> {
    let Some(last) = steps.last() else {
        return Ok(());
    };
    let mean = |f: &dyn Fn(&ElasticStats) -> usize| {
        steps.iter().map(f).sum::<usize>() as f64 / steps.len() as f64
    };
    outln!(
        "| elastic pipelines per step: chunks batched / split / hybrid; micro-batches; pipelines | \
         {:.1} / {:.1} / {:.1}; {:.1}; {:.1} |",
        mean(&|e| e.chunks[0]),
        mean(&|e| e.chunks[1]),
        mean(&|e| e.chunks[2]),
        mean(&|e| e.microbatches),
        mean(&|e| e.pipelines)
    );
    outln!(
        "| elastic, last step: mesh slices of the longest document; chunk token budget; time-budget raises | {}; {}; {} |",
        last.slices,
        last.token_budget,
        last.relaxations
    );
    let planning: f64 = steps.iter().map(|e| e.plan_seconds).sum::<f64>() / steps.len() as f64;
    outln!(
        "| elastic planning per step (chunks, pipelines, recomputation; before the step, not in its time) | {:.1} ms |",
        1e3 * planning
    );
    Ok(())
}

fn print_summary(s: &TrainSummary) -> anyhow::Result<()> {
    outln!("\n| metric | value |\n|---|---|");
    let floor = s
        .loss_floor
        .map_or(String::new(), |f| format!(" (best possible {f:.4})"));
    outln!(
        "| loss (first step → mean of last 5) | {:.4} → {:.4}{floor} |",
        s.first_loss,
        s.final_loss
    );
    if let Some((first, last)) = s.accuracy {
        let chance = s
            .chance_accuracy
            .map_or(String::new(), |c| format!(" (chance {:.1}%)", 100.0 * c));
        outln!(
            "| {} (first step → mean of last 5) | {:.1}% → {:.1}%{chance} |",
            s.accuracy_of,
            100.0 * first,
            100.0 * last
        );
    }
    if let Some(docs) = s.documents_per_step {
        outln!("| documents per step (masked packing) | {docs:.1} |");
    }
    print_elastic(&s.elastic_steps)?;
    outln!("| tokens/s | {:.0} |", s.tokens_per_sec);
    outln!(
        "| MFU vs measured CPU matmul peak | {:.2}% ({:.2} GFLOP/s of {:.2} GFLOP/s) |",
        100.0 * s.achieved_flops / s.peak_flops,
        s.achieved_flops / 1e9,
        s.peak_flops / 1e9
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if s.peak_bytes.len() > cores {
        outln!(
            "| note | {} stage threads share {cores} cores: measured idle time includes waiting for a core |",
            s.peak_bytes.len()
        );
    }
    outln!(
        "| bubble ratio measured / simulated | {:.2}% / {:.2}% |",
        100.0 * s.measured_bubble,
        100.0 * s.simulated_bubble
    );
    if let Some((pairs, without)) = s.exchange {
        outln!(
            "| attention exchange: pairs kept (parallel.exchange_pairs chooses which); simulated bubble without them | {pairs}; {:.2}% |",
            100.0 * without
        );
    }
    if let Some((budget, peaks)) = &s.budget {
        let peaks: Vec<String> = peaks.iter().map(|p| format!("{p:.0}")).collect();
        outln!(
            "| memory budget {budget} bytes per stage | offload = {}, recompute = {}; predicted peak per stage (states + activations) {} |",
            s.offload,
            s.recompute,
            peaks.join(", ")
        );
    }
    if s.offloaded_units.iter().any(|&n| n > 0) {
        let units: Vec<String> = s.offloaded_units.iter().map(usize::to_string).collect();
        let waits: Vec<String> = s
            .last_step
            .iter()
            .map(|r| format!("{:.1}", 1e3 * r.link_wait_seconds))
            .collect();
        outln!(
            "| units offloaded to host per step, by stage; ms waited for the host link in the last step | {}; {} |",
            units.join(", "),
            waits.join(", ")
        );
    }
    if s.recomputed_units.iter().any(|&n| n > 0) {
        let units: Vec<String> = s.recomputed_units.iter().map(usize::to_string).collect();
        outln!(
            "| units recomputed before their backward per step, by stage (recompute = {}) | {} |",
            s.recompute.describe(),
            units.join(", ")
        );
    }
    for (stage, saved) in s.peak_saved_bytes.iter().enumerate() {
        let predicted = match &s.predicted_saved_bytes {
            Some(p) => format!("{:.0}", p[stage]),
            None => "n/a".to_string(),
        };
        outln!(
            "| stage {stage} peak saved activations measured / predicted (+ transient buffers) | {saved} / {predicted} (+{}) |",
            s.peak_bytes[stage] - saved
        );
    }
    Ok(())
}
