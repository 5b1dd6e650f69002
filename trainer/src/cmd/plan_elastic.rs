//! `seqpipe plan --lengths <file|dist:…> --context 96k`: elastic pipeline planning (InfiniPipe) of
//! one variable-length batch — chunks, pipelines, recomputation, simulated iteration time, bubble
//! and per-stage peak — beside the two fixed-shape baselines at the same memory budget.

use anyhow::Context;
use seqpipe_memory::elastic_compare::SLICE_CANDIDATES;
use seqpipe_memory::{
    plan_elastic, plan_packed, ActivationModel, MethodResult, Parallelism, PlanSetup, StateOptions,
    GIB,
};
use seqpipe_slicing::{
    parse_lengths, parse_token_count, ChunkKind, Chunking, LengthDist, ModelShape,
};

/// What the elastic mode needs beyond the model, GPU and budget.
pub struct ElasticArgs<'a> {
    /// `dist:lognormal:mu=..,sigma=..`, `dist:powerlaw:alpha=..,min=..` or a file path.
    pub lengths: &'a str,
    /// JSONL field holding the length (files only; `None`: one length per line, or `length`
    /// for `.jsonl` files).
    pub field: Option<&'a str>,
    /// Context length text (`96k`).
    pub context: &'a str,
    /// Pipeline stages.
    pub stages: usize,
    /// Tensor-parallel size (divides activations).
    pub tp: u64,
    /// Sequences drawn from a distribution.
    pub sequences: usize,
    /// Sampling seed.
    pub seed: u64,
    /// Fixed time per chunk per stage, milliseconds.
    pub per_chunk_ms: f64,
    /// Chunks to list before eliding.
    pub show_chunks: usize,
}

/// Most sequences one elastic plan takes: planning time grows about linearly (about 4 s per
/// thousand log-normal sequences at a 96K context on this 2-core machine), and a real batch of
/// long-context documents is far smaller.
pub const MAX_SEQUENCES: usize = 16_384;
/// Largest lengths file read (a million lengths is far past [`MAX_SEQUENCES`] already).
const MAX_LENGTHS_FILE_BYTES: u64 = 64 << 20;

/// Reads or draws the batch.
fn load_lengths(args: &ElasticArgs<'_>, context: u64) -> anyhow::Result<Vec<u64>> {
    if let Some(spec) = args.lengths.strip_prefix("dist:") {
        if !(1..=MAX_SEQUENCES).contains(&args.sequences) {
            anyhow::bail!(
                "--sequences {}: give 1 to {MAX_SEQUENCES} sequences",
                args.sequences
            );
        }
        let dist: LengthDist = spec.parse()?;
        return Ok(dist.sample(args.sequences, context, args.seed)?);
    }
    let meta = std::fs::metadata(args.lengths)
        .with_context(|| format!("reading lengths file {}", args.lengths))?;
    if !meta.is_file() || meta.len() > MAX_LENGTHS_FILE_BYTES {
        anyhow::bail!(
            "lengths file {}: not a regular file of at most {MAX_LENGTHS_FILE_BYTES} bytes",
            args.lengths
        );
    }
    let text = std::fs::read_to_string(args.lengths)
        .with_context(|| format!("reading lengths file {}", args.lengths))?;
    let field = args
        .field
        .or_else(|| args.lengths.ends_with(".jsonl").then_some("length"));
    let lengths = parse_lengths(&text, field)?;
    if lengths.len() > MAX_SEQUENCES {
        anyhow::bail!(
            "{}: {} sequences; one elastic plan takes at most {MAX_SEQUENCES}",
            args.lengths,
            lengths.len()
        );
    }
    if let Some(&long) = lengths.iter().find(|&&l| l > context) {
        anyhow::bail!(
            "{}: a sequence of {long} tokens exceeds the context of {context}",
            args.lengths
        );
    }
    Ok(lengths)
}

/// Runs the elastic mode.
pub fn run(
    args: &ElasticArgs<'_>,
    shape: ModelShape,
    budget_bytes: f64,
    flops_per_second: f64,
) -> anyhow::Result<()> {
    let context = parse_token_count(args.context)?;
    let lengths = load_lengths(args, context)?;
    let setup = PlanSetup {
        activation: ActivationModel::new(shape, Parallelism::new(args.tp, 1, 1)?)?,
        stages: args.stages,
        context,
        device_bytes: budget_bytes,
        flops_per_second,
        per_unit_seconds: args.per_chunk_ms / 1e3,
        states: StateOptions::default(),
    };
    let tokens: u64 = lengths.iter().sum();
    outln!(
        "{} sequences, {tokens} tokens (longest {}), context {context}, p = {}, tp = {}, budget {:.2} GiB/GPU",
        lengths.len(),
        lengths.iter().max().copied().unwrap_or(0),
        args.stages,
        args.tp,
        budget_bytes / GIB
    );
    let Some((elastic, chunking)) = plan_elastic(&lengths, &setup, &SLICE_CANDIDATES)? else {
        anyhow::bail!("no elastic plan fits the budget, even with full recomputation");
    };
    print_chunks(&chunking, args.show_chunks)?;
    print_pipelines(&elastic)?;
    print_runs_as(args.tp)?;
    let seq_n: Vec<usize> = SLICE_CANDIDATES
        .iter()
        .copied()
        .filter(|&n| n >= 2)
        .collect();
    outln!("\nsame batch and budget:");
    let baselines = [
        ("elastic", Some(elastic.clone())),
        (
            "seq1f1b (packed, fixed n)",
            plan_packed(&lengths, &setup, &seq_n)?,
        ),
        ("1f1b (packed)", plan_packed(&lengths, &setup, &[1])?),
    ];
    for (name, result) in &baselines {
        match result {
            None => outln!("  {name:<26} does not fit"),
            Some(r) => outln!(
                "  {name:<26} {:>9.4} s  n = {:<2} bubble {:>5.2}%  peak {:>6.2} GiB  speedup of elastic {:.2}x",
                r.iteration_time,
                r.slices,
                100.0 * r.bubble_ratio,
                r.peaks.iter().fold(0.0f64, |a, &b| a.max(b)) / GIB,
                r.iteration_time / elastic.iteration_time
            ),
        }
    }
    Ok(())
}

fn print_chunks(c: &Chunking, show: usize) -> anyhow::Result<()> {
    outln!(
        "\nchunking: K = {} slices of the longest sequence, T_m = {} tokens, T_t = {:.3} ms{}",
        c.slices,
        c.token_budget,
        1e3 * c.time_budget,
        if c.relaxations > 0 {
            format!(
                " (relaxed {} times from {:.3} ms)",
                c.relaxations,
                1e3 * c.initial_time_budget
            )
        } else {
            String::new()
        }
    );
    outln!(
        "{:>5} {:<7} {:>8} {:>8} {:>9}  pieces (sequence[start..end))",
        "chunk",
        "kind",
        "context",
        "tokens",
        "time ms"
    );
    for (i, ch) in c.chunks.iter().enumerate().take(show) {
        let kind = match ch.kind {
            ChunkKind::Batched => "batched",
            ChunkKind::Split => "split",
            ChunkKind::Hybrid => "hybrid",
        };
        let pieces: Vec<String> = ch
            .pieces
            .iter()
            .map(|p| format!("{}[{}..{})", p.seq, p.start, p.end))
            .collect();
        outln!(
            "{i:>5} {kind:<7} {:>8} {:>8} {:>9.3}  {}",
            ch.context,
            ch.tokens(),
            1e3 * ch.time,
            pieces.join(" ")
        );
    }
    if c.chunks.len() > show {
        outln!("  … {} more chunks (--show-chunks)", c.chunks.len() - show);
    }
    Ok(())
}

/// What of the plan `seqpipe train --elastic` runs: the chunking, the pipelines and their
/// recomputation, on one pipeline of stages without tensor parallelism.
fn print_runs_as(tp: u64) -> anyhow::Result<()> {
    outln!(
        "seqpipe train --elastic runs this kind of plan (chunks, pipelines longest first, \
         recomputation per chunk and stage, planned with its own memory model under \
         --memory-budget)"
    );
    if tp > 1 {
        outln!("    ↳ planner only, not run by seqpipe train yet: tensor parallelism (tp = {tp})");
    }
    Ok(())
}

fn print_pipelines(r: &MethodResult) -> anyhow::Result<()> {
    outln!(
        "\n{} pipeline(s), run one after another with gradient accumulation:",
        r.pipelines.len()
    );
    for (i, (p, units)) in r.pipelines.iter().zip(&r.units).enumerate() {
        outln!(
            "  pipeline {i}: {units} chunks, {:.4} s, recomputation {} ({} layer-forwards; checkpointed layers per stage {:?})",
            p.makespan,
            if p.adaptive { "adaptive (MILP)" } else { "uniform" },
            p.recomputed_layers,
            p.checkpointed
        );
    }
    let peaks: Vec<String> = r.peaks.iter().map(|b| format!("{:.2}", b / GIB)).collect();
    outln!(
        "iteration {:.4} s, bubble {:.2}%, peak GiB per stage [{}]",
        r.iteration_time,
        100.0 * r.bubble_ratio,
        peaks.join(", ")
    );
    Ok(())
}
