//! `seqpipe plan --emit-config`: a planned layout as the `seqpipe train` configuration that runs
//! it, and `seqpipe train --scale-down`: the same schedule on the tiny model, on this CPU.
//!
//! The emitted file names, in its header, what of the plan the trainer does not run yet; `train`
//! refuses those parts by name (tensor and context parallelism are configuration fields that
//! only take 1). A GPT preset (GELU MLP) is refused here: the trainer builds Llama layers, and
//! writing its shape as a Llama would train another model.

use std::path::Path;

use anyhow::{bail, Context};
use seqpipe_memory::{Evaluation, SimulatedBubbles};
use seqpipe_slicing::{FfnKind, ModelShape};
use seqpipe_trainer::config::{ExchangePairs, ParallelConfig, Precision, TrainConfig};
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::runtime::capabilities::{pipeline_settings, planned_only};

/// The first line of every emitted file: a file that does not start with it is not overwritten.
pub const MARK: &str = "# seqpipe plan --emit-config";

/// Writes `e` as a `seqpipe train` configuration to `path`.
/// `simulated` is the plan's schedule simulated: SlimPipe's attention exchange is turned on
/// (every pair) where it shortens the iteration.
pub fn emit(
    path: &Path,
    e: &Evaluation,
    shape: &ModelShape,
    seq_len: u64,
    simulated: &SimulatedBubbles,
) -> anyhow::Result<()> {
    check_writable(path)?;
    let mut cfg = train_config(e, shape, seq_len)?;
    if simulated.exchange_helps() {
        cfg.parallel.attention_exchange = true;
        cfg.parallel.exchange_pairs = Some(ExchangePairs::Level);
    }
    let missing = planned_only(&e.candidate);
    let mut header = vec![
        MARK.to_string(),
        format!("# plan: {}", summary(e)),
        "# rope_theta, norm_eps and the optimizer are not part of a plan: defaults below".into(),
        format!(
            "# simulated bubble {:.2} %{}",
            100.0 * simulated.plain,
            simulated.exchange.map_or(String::new(), |x| format!(
                ", with the attention exchange (every pair) {:.2} %",
                100.0 * x
            ))
        ),
    ];
    header.push(match missing.is_empty() {
        true => "# seqpipe train runs every part of this plan".into(),
        false => format!(
            "# planner only, not run by seqpipe train yet: {}",
            missing.join(", ")
        ),
    });
    let text = format!("{}\n{}", header.join("\n"), toml::to_string(&cfg)?);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The plan in one line, with names: `slimpipe n=8 v=2, pp 4, tp 1, …`.
fn summary(e: &Evaluation) -> String {
    let c = &e.candidate;
    format!(
        "{}, pp {}, tp {}, cp {}, dp {}, {} micro-batches, recompute {:?}, offload {:.0} %; \
         predicted peak {:.2} GiB (stage {}), bubble {:.2} %, MFU {:.1} %",
        c.kind,
        c.stages,
        c.parallel.tp,
        c.parallel.cp,
        c.parallel.dp,
        c.microbatches,
        c.recompute,
        100.0 * c.offload_fraction,
        e.peak_bytes / seqpipe_memory::GIB,
        e.worst_stage,
        100.0 * e.bubble,
        100.0 * e.mfu
    )
}

/// A new file, or one this command wrote before (its first line is [`MARK`]).
fn check_writable(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!(
            "--emit-config {} is a directory: give a file path",
            path.display()
        );
    }
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if text.lines().next() != Some(MARK) {
        bail!(
            "--emit-config {} exists and was not written by seqpipe plan (its first line is not \
             {MARK:?}): it is left unchanged; give a new path",
            path.display()
        );
    }
    Ok(())
}

/// The configuration that trains `e`'s layout of `shape` at `seq_len` tokens.
pub fn train_config(
    e: &Evaluation,
    shape: &ModelShape,
    seq_len: u64,
) -> anyhow::Result<TrainConfig> {
    if shape.ffn != FfnKind::Gated {
        bail!(
            "--emit-config: this model has a GPT (two-matrix, GELU) MLP, but seqpipe train builds \
             Llama layers (SwiGLU); plan a Llama preset or config.json to emit a configuration"
        );
    }
    let c = &e.candidate;
    let n = |x: u64| usize::try_from(x).context("a size does not fit this machine's usize");
    let u = |x: u64| u32::try_from(x).context("a size does not fit in u32");
    let mut cfg = TrainConfig {
        precision: Precision::Bf16,
        device: "cuda".into(),
        ..TrainConfig::default()
    };
    cfg.model = ModelConfig {
        vocab: n(shape.vocab)?,
        hidden: n(shape.hidden)?,
        ffn_hidden: n(shape.ffn_hidden)?,
        heads: n(shape.heads)?,
        kv_heads: n(shape.kv_heads)?,
        layers: n(shape.layers)?,
        max_positions: n(seq_len + 1)?,
        head_dim: (shape.head_dim * shape.heads != shape.hidden)
            .then(|| n(shape.head_dim))
            .transpose()?,
        ..ModelConfig::tiny()
    };
    cfg.data.seq_len = n(seq_len)?;
    cfg.data.batch = 1;
    let plan = pipeline_settings(c);
    cfg.parallel = ParallelConfig {
        schedule: plan.schedule.into(),
        stages: u(plan.stages)?,
        microbatches: u(plan.microbatches)?,
        slices: u(plan.slices)?,
        chunks: u(plan.chunks)?,
        group: plan.group.map(u).transpose()?,
        slicing: plan.slicing,
        replicas: Some(u(plan.replicas)?),
        recompute: plan.recompute,
        offload: plan.offload,
        tensor_parallel: u(c.parallel.tp)?,
        context_parallel: u(c.parallel.cp)?,
        // The planner prices SlimPipe with the head sharded (see `planned_only`).
        vocab_parallel: matches!(c.kind, seqpipe_memory::PipelineKind::SlimPipe { .. }),
        ..ParallelConfig::default()
    };
    Ok(cfg)
}

/// `--scale-down`: the same schedule (stages, chunks, micro-batches, slices, recomputation,
/// offload) on the tiny model in f32 on the CPU, one replica, short sequences; returns what
/// changed, in words. Tensor and context parallelism are kept, so that `train` names them.
pub fn scale_down(cfg: &mut TrainConfig) -> String {
    let par = &mut cfg.parallel;
    let virtual_stages = (par.stages.max(1) as usize).saturating_mul(par.chunks.max(1) as usize);
    let layers = virtual_stages * 8usize.div_ceil(virtual_stages);
    let seq_len = scaled_seq_len(par.slices);
    let before = format!(
        "{} layers × hidden {}, {} tokens, {} replica(s), {:?} on {}",
        cfg.model.layers,
        cfg.model.hidden,
        cfg.data.seq_len,
        par.replicas.unwrap_or(1),
        cfg.precision,
        cfg.device
    );
    cfg.model = ModelConfig {
        layers,
        ..ModelConfig::tiny()
    };
    fit_positions(cfg, seq_len);
    cfg.init_from = None;
    cfg.data.batch = 1;
    let par = &mut cfg.parallel;
    par.layers = None;
    par.replicas = None;
    par.memory_budget = None;
    cfg.precision = Precision::F32;
    cfg.device = "cpu".into();
    format!(
        "scaled down: {before} → {layers} layers × hidden {}, {seq_len} tokens, 1 replica, F32 on \
         cpu; the schedule is unchanged",
        cfg.model.hidden
    )
}

/// A scaled-down sequence: 16 tokens per slice, at least 64.
fn scaled_seq_len(slices: u32) -> usize {
    (16 * slices as usize).max(64)
}

/// Sets the sequence length, with RoPE positions to cover it.
fn fit_positions(cfg: &mut TrainConfig, seq_len: usize) {
    cfg.data.seq_len = seq_len;
    cfg.model.max_positions = cfg.model.max_positions.max(seq_len + 1);
}

/// After the command line's flags: a `--slices` given with `--scale-down` (and no `--seq-len`)
/// gets its 16 tokens per slice too.
pub fn rescale_for_slices(cfg: &mut TrainConfig) {
    fit_positions(cfg, scaled_seq_len(cfg.parallel.slices));
}
