//! `seqpipe plan`: search parallel layouts, schedules, offload and recomputation for one model,
//! sequence length and cluster, and print the best plans and why the others were rejected.
//! With `--lengths`, plan one variable-length batch elastically instead ([`super::plan_elastic`]).

use clap::{Args, ValueEnum};
use seqpipe_memory::{
    rank_by_simulation, search, simulated_bubbles, Efficiency, Evaluation, GpuPreset,
    RecomputePolicy, SearchSpace, Simulations, GIB,
};
use seqpipe_slicing::{parse_token_count, ModelShape};

use seqpipe_trainer::runtime::capabilities::{planned_only, train_parallel, TrainParallel};

use super::plan_rank::{print_ranking, source_tag, Runnable};

use super::model::{describe, resolve_model};
use super::plan_elastic::ElasticArgs;

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    Text,
    /// Every evaluated configuration as JSON.
    Json,
}

/// Arguments of `seqpipe plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Model preset name or path to a Hugging Face config.json.
    #[arg(long)]
    model: String,
    /// Sequence length, e.g. 524288 or 512k.
    #[arg(
        long,
        allow_hyphen_values = true,
        required_unless_present = "lengths",
        conflicts_with = "lengths"
    )]
    seq: Option<String>,
    /// GPUs in all.
    #[arg(long, required_unless_present = "lengths", conflicts_with = "lengths")]
    gpus: Option<u64>,
    /// Elastic mode: a batch of sequence lengths, `dist:lognormal:mu=8.5,sigma=1.4`,
    /// `dist:powerlaw:alpha=0.9,min=1024`, or a file (one length per line, or JSONL).
    #[arg(long, requires = "context")]
    lengths: Option<String>,
    /// Elastic mode: JSONL field holding the length (default `length` for .jsonl files).
    #[arg(long, requires = "lengths")]
    lengths_field: Option<String>,
    /// Elastic mode: context length, e.g. 96k.
    #[arg(long, requires = "lengths")]
    context: Option<String>,
    /// Elastic mode: pipeline stages.
    #[arg(long, default_value_t = 4, requires = "lengths")]
    pp: usize,
    /// Elastic mode: tensor-parallel size.
    #[arg(long, default_value_t = 4, requires = "lengths")]
    tp: u64,
    /// Elastic mode: sequences drawn from a `dist:` batch.
    #[arg(long, default_value_t = 64, requires = "lengths")]
    sequences: usize,
    /// Elastic mode: sampling seed.
    #[arg(long, default_value_t = 1, requires = "lengths")]
    seed: u64,
    /// Elastic mode: fixed time per chunk per stage (launches, p2p latency), milliseconds.
    #[arg(long, default_value_t = 0.3, requires = "lengths")]
    per_chunk_ms: f64,
    /// Elastic mode: chunks to list.
    #[arg(long, default_value_t = 40, requires = "lengths")]
    show_chunks: usize,
    /// GPU preset (with its DGX node's links): a100, h100, h200, h800; or a `.toml` file that
    /// starts from one and sets measured figures (see `cmd/gpu_file.rs`).
    #[arg(long, default_value = "h100")]
    gpu: String,
    /// Memory budget per GPU in GiB (default: the preset's nominal capacity).
    #[arg(long)]
    budget_gib: Option<f64>,
    /// Sequences per iteration across all data-parallel replicas.
    #[arg(long, default_value_t = 64, conflicts_with = "lengths")]
    global_batch: u64,
    /// Assumed fraction of peak FLOP/s the linear layers' matrix products (and, unless
    /// --attention-efficiency says otherwise, every kernel) reach; a measured figure replaces it.
    #[arg(long, default_value_t = 0.5, conflicts_with = "lengths")]
    efficiency: f64,
    /// Assumed fraction of peak FLOP/s the attention core reaches (default: --efficiency).
    #[arg(long, conflicts_with = "lengths")]
    attention_efficiency: Option<f64>,
    /// Largest tensor-parallel size.
    #[arg(long, default_value_t = 8, conflicts_with = "lengths")]
    max_tp: u64,
    /// Largest context-parallel size.
    #[arg(long, default_value_t = 8, conflicts_with = "lengths")]
    max_cp: u64,
    /// Fewest pipeline stages.
    #[arg(long, default_value_t = 2, conflicts_with = "lengths")]
    min_pp: u64,
    /// Override the preset's achieved TFLOP/s used by the offload criterion.
    #[arg(long)]
    achieved_tflops: Option<f64>,
    /// Override the preset's host-link bandwidth, GB/s.
    #[arg(long, conflicts_with = "lengths")]
    host_gbps: Option<f64>,
    /// How many plans to print (and to rank by simulation).
    #[arg(long, default_value_t = 8, conflicts_with = "lengths", value_parser = clap::value_parser!(u64).range(1..))]
    top: u64,
    /// Distinct schedules to simulate while ranking (the leading plans of the closed forms'
    /// order); the output says whether that settled the top plans.
    #[arg(long, default_value_t = 8, conflicts_with_all = ["lengths", "exact"], value_parser = clap::value_parser!(u64).range(1..))]
    simulate: u64,
    /// Simulate until the top plans are certain: every plan left has a closed-form MFU (an
    /// upper bound) below them. Slower: Llama-70B at 512K on 256 GPUs simulates about 140
    /// schedules.
    #[arg(long, conflicts_with = "lengths")]
    exact: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text, conflicts_with = "lengths")]
    format: Format,
    /// Write the best fitting plan as a `seqpipe train` configuration (TOML) to this new file
    /// (or one it wrote before); what the trainer does not run yet is named in its header and
    /// refused by `train` (run the same schedule small with `train --config FILE --scale-down`).
    #[arg(long, value_name = "FILE", conflicts_with = "lengths")]
    emit_config: Option<std::path::PathBuf>,
}

/// Runs `seqpipe plan`.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let shape = resolve_model(&args.model)?;
    let mut gpu = super::gpu_file::resolve_gpu(&args.gpu)?;
    if let Some(t) = args.achieved_tflops {
        gpu.achieved_flops = t * 1e12;
    }
    if let Some(b) = args.host_gbps {
        gpu.host_link_bytes_per_s = b * 1e9;
    }
    let budget_bytes = match args.budget_gib {
        Some(g) if g.is_finite() && g > 0.0 => g * GIB,
        Some(g) => anyhow::bail!("--budget-gib must be a positive number of GiB, got {g}"),
        None => gpu.memory_bytes,
    };
    if let Some(lengths) = &args.lengths {
        let elastic = ElasticArgs {
            lengths,
            field: args.lengths_field.as_deref(),
            context: args.context.as_deref().unwrap_or_default(),
            stages: args.pp,
            tp: args.tp,
            sequences: args.sequences,
            seed: args.seed,
            per_chunk_ms: args.per_chunk_ms,
            show_chunks: args.show_chunks,
        };
        return super::plan_elastic::run(&elastic, shape, budget_bytes, gpu.achieved_flops);
    }
    plan_sequences(args, shape, gpu, budget_bytes)
}

/// `seqpipe plan --seq … --gpus …`: the search, ranked by simulation, and its tables.
fn plan_sequences(
    args: &PlanArgs,
    shape: ModelShape,
    gpu: GpuPreset,
    budget_bytes: f64,
) -> anyhow::Result<()> {
    // clap requires both unless --lengths is given.
    let (Some(seq), Some(gpus)) = (args.seq.as_deref(), args.gpus) else {
        anyhow::bail!("--seq and --gpus are required (or --lengths for elastic planning)");
    };
    let seq_len = parse_token_count(seq)?;
    let space = SearchSpace {
        shape,
        seq_len,
        gpus,
        global_batch: args.global_batch,
        gpu,
        budget_bytes,
        efficiency: Efficiency {
            linear: args.efficiency,
            attention: args.attention_efficiency.unwrap_or(args.efficiency),
        },
        max_tp: args.max_tp,
        max_cp: args.max_cp,
        min_stages: args.min_pp,
    };
    let evals = search(&space)?;
    if evals.is_empty() {
        anyhow::bail!(
            "no configuration to search: no layout splits {gpus} GPU(s) into at least --min-pp {} \
             pipeline stages (dividing the {} layers), tp ≤ {}, cp ≤ {} and data-parallel \
             replicas dividing --global-batch {}",
            args.min_pp,
            shape.layers,
            args.max_tp,
            args.max_cp,
            args.global_batch
        );
    }
    let started = std::time::Instant::now();
    let cap = (!args.exact).then_some(args.simulate as usize);
    let mut known = Simulations::new();
    let closed_forms = evals.clone();
    let ranking = rank_by_simulation(&space, evals, args.top as usize, cap, &mut known)?;
    let ranked_in = started.elapsed();
    let evals = &ranking.evaluations;
    if let Some(path) = &args.emit_config {
        emit_best(path, &space, evals, &known)?;
    }
    if let Format::Json = args.format {
        outln!("{}", serde_json::to_string_pretty(&marked(evals))?);
        return Ok(());
    }
    print_context(args, &space, evals)?;
    let fitting = evals.iter().filter(|e| e.fits()).count();
    if fitting == 0 {
        outln!("no configuration fits the budget");
    } else {
        outln!("\nbest plans:");
        print_table(evals.iter().filter(|e| e.fits()).take(args.top as usize))?;
        print_ranking(&ranking, args.top, ranked_in)?;
        let runnable = Runnable {
            space: &space,
            cap,
            known: &mut known,
        };
        runnable.print(closed_forms)?;
    }
    print_rejections(evals)
}

/// `--emit-config`: the best fitting plan as a `seqpipe train` configuration, with the bubbles
/// its ranking simulated.
fn emit_best(
    path: &std::path::Path,
    space: &SearchSpace,
    evals: &[Evaluation],
    known: &Simulations,
) -> anyhow::Result<()> {
    let Some(best) = evals.iter().find(|e| e.fits()) else {
        anyhow::bail!(
            "--emit-config: no configuration fits the budget, so there is no plan to write"
        );
    };
    let simulated = match known.bubbles(&best.candidate) {
        Some(b) => b,
        None => simulated_bubbles(space, &best.candidate)?,
    };
    super::plan_emit::emit(path, best, &space.shape, space.seq_len, &simulated)?;
    eprintln!(
        "wrote the best plan as a seqpipe train configuration to {}",
        path.display()
    );
    Ok(())
}

/// What was searched: the model, the sequence and cluster, and how many configurations fit.
fn print_context(args: &PlanArgs, space: &SearchSpace, evals: &[Evaluation]) -> anyhow::Result<()> {
    let (shape, gpu) = (&space.shape, &space.gpu);
    outln!("model {}: {}", args.model, describe(shape));
    outln!(
        "sequence {} tokens, {} × {} ({:.0} TFLOP/s peak, offload k = {:.3}), budget {:.2} GiB/GPU, kernel efficiency {:.0}% (attention {:.0}%), global batch {}",
        space.seq_len,
        space.gpus,
        gpu.name,
        gpu.peak_flops / 1e12,
        gpu.offload_k(shape, space.seq_len)?,
        space.budget_bytes / GIB,
        100.0 * space.efficiency.linear,
        100.0 * space.efficiency.attention,
        args.global_batch
    );
    let fitting = evals.iter().filter(|e| e.fits()).count();
    let net = &gpu.interconnect;
    outln!(
        "searched {} configurations (pp ≥ {}, tp ≤ {}, cp ≤ {}), {fitting} fit; communication over {} GPUs per node, NVLink {:.0} GB/s, network {:.0} GB/s per GPU (\"comm\": the share of the step it exposes)",
        evals.len(),
        args.min_pp,
        args.max_tp,
        args.max_cp,
        net.gpus_per_node,
        net.nvlink_bytes_per_s / 1e9,
        net.network_bytes_per_s / 1e9
    );
    Ok(())
}

fn header() -> anyhow::Result<()> {
    outln!(
        "{:<20} {:>3} {:>3} {:>3} {:>4} {:>4} {:>10} {:>7} {:>13} {:>8} {:>7} {:<5} {:>6} {:>6}",
        "schedule",
        "pp",
        "tp",
        "cp",
        "dp",
        "mb",
        "recompute",
        "offload",
        "peak GiB@stg",
        "states",
        "bubble",
        "by",
        "MFU",
        "comm"
    );
    Ok(())
}

/// An evaluation with what of it `seqpipe train` does not run yet and its `[parallel]`
/// settings for `seqpipe train` (JSON output).
#[derive(serde::Serialize)]
struct Marked<'a> {
    #[serde(flatten)]
    evaluation: &'a Evaluation,
    planned_only: Vec<&'static str>,
    train_parallel: Option<TrainParallel>,
}

fn marked(evals: &[Evaluation]) -> Vec<Marked<'_>> {
    evals
        .iter()
        .map(|e| Marked {
            evaluation: e,
            planned_only: planned_only(&e.candidate),
            train_parallel: train_parallel(&e.candidate),
        })
        .collect()
}

/// The row's features the trainer does not run, as a note under it (empty when it runs all).
fn planned_only_note(e: &Evaluation) -> Option<String> {
    let missing = planned_only(&e.candidate);
    (!missing.is_empty()).then(|| {
        format!(
            "    ↳ planner only, not run by seqpipe train yet: {}",
            missing.join(", ")
        )
    })
}

pub(super) fn row(e: &Evaluation) -> String {
    let c = &e.candidate;
    let recompute = match c.recompute {
        RecomputePolicy::None => "none",
        RecomputePolicy::Selective => "selective",
        RecomputePolicy::Full => "full",
    };
    format!(
        "{:<20} {:>3} {:>3} {:>3} {:>4} {:>4} {:>10} {:>6.0}% {:>9.2}@{:<3} {:>8.2} {:>6.2}% {:<5} {:>5.1}% {:>5.1}%",
        c.kind.to_string(),
        c.stages,
        c.parallel.tp,
        c.parallel.cp,
        c.parallel.dp,
        c.microbatches,
        recompute,
        100.0 * c.offload_fraction,
        e.peak_bytes / GIB,
        e.worst_stage,
        e.states_bytes / GIB,
        100.0 * e.bubble,
        source_tag(e.bubble_source),
        100.0 * e.mfu,
        100.0 * e.comm.total() / e.step_time
    )
}

fn print_table<'a>(evals: impl Iterator<Item = &'a Evaluation>) -> anyhow::Result<()> {
    header()?;
    for e in evals {
        outln!("{}", row(e));
        if let Some(note) = planned_only_note(e) {
            outln!("{note}");
        }
    }
    Ok(())
}

/// Per schedule kind without recomputation or offload: the configuration closest to fitting,
/// with the stage that runs out and by how much (or the best fitting one).
fn print_rejections(evals: &[Evaluation]) -> anyhow::Result<()> {
    outln!("\nwithout recomputation or offload, per schedule kind (closest to fitting):");
    let mut names: Vec<&str> = evals.iter().map(|e| e.candidate.kind.name()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let plain = evals.iter().filter(|e| {
            let c = &e.candidate;
            c.kind.name() == name
                && c.recompute == RecomputePolicy::None
                && c.offload_fraction == 0.0
        });
        let Some(best) = plain.min_by(|a, b| a.over_bytes.total_cmp(&b.over_bytes)) else {
            continue;
        };
        let verdict = if best.fits() {
            format!("fits ({:.2} GiB to spare)", -best.over_bytes / GIB)
        } else {
            format!(
                "does not fit: stage {} needs {:.2} GiB, {:.2} GiB over the budget",
                best.worst_stage,
                best.peak_bytes / GIB,
                best.over_bytes / GIB
            )
        };
        outln!("  {name:<12} {verdict}");
        outln!("    {}", row(best));
        if let Some(note) = planned_only_note(best) {
            outln!("    {note}");
        }
    }
    Ok(())
}
