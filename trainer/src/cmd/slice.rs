//! `seqpipe slice`: print a slicing plan for one sequence.

use clap::{Args, ValueEnum};
use seqpipe_slicing::{
    balanced, parse_token_count, uniform, CostModel, Padding, SlicePlan, PRESETS,
};

use super::model::{describe, resolve_model};

/// Slicing method.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Method {
    /// Equal lengths (SlimPipe).
    Uniform,
    /// Equal forward FLOPs (Seq1F1B).
    Balanced,
}

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// Human-readable table.
    Text,
    /// The plan as JSON.
    Json,
}

/// Arguments of `seqpipe slice`.
#[derive(Args, Debug)]
pub struct SliceArgs {
    /// Model preset name or path to a Hugging Face config.json.
    #[arg(long, required_unless_present = "list_models")]
    model: Option<String>,
    /// Sequence length, e.g. 65536 or 64k.
    // Hyphen values reach our parser, which names a negative length instead of clap's "-6 found".
    #[arg(
        long,
        required_unless_present = "list_models",
        allow_hyphen_values = true
    )]
    seq: Option<String>,
    /// Number of slices.
    #[arg(long, default_value_t = 4)]
    slices: usize,
    /// Slicing method.
    #[arg(long, value_enum, default_value_t = Method::Balanced)]
    method: Method,
    /// Slice lengths are multiples of this (TP size with sequence parallelism; 128 for SlimPipe).
    #[arg(long, default_value_t = 1)]
    multiple: u64,
    /// Uniform only: pad the sequence so every slice has the same rounded length.
    #[arg(long)]
    pad: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// List the model presets and exit.
    #[arg(long)]
    list_models: bool,
}

/// Runs `seqpipe slice`.
pub fn run(args: &SliceArgs) -> anyhow::Result<()> {
    if args.list_models {
        for p in PRESETS {
            outln!(
                "{:<10} {}\n{:<10} {}",
                p.name,
                p.description,
                "",
                describe(&p.shape)
            );
        }
        return Ok(());
    }
    let (Some(model), Some(seq)) = (&args.model, &args.seq) else {
        anyhow::bail!("--model and --seq are required");
    };
    let shape = resolve_model(model)?;
    let seq_len = parse_token_count(seq)?;
    let cost = CostModel::flops(&shape)?;
    let plan = match args.method {
        Method::Uniform => {
            let padding = if args.pad {
                Padding::ToMultiple
            } else {
                Padding::None
            };
            uniform(seq_len, args.slices, args.multiple, padding, &cost)?
        }
        Method::Balanced if args.pad => anyhow::bail!(
            "--pad applies to uniform slicing only (balanced slices have no common length to \
             pad to); add --method uniform or drop --pad"
        ),
        Method::Balanced => balanced(seq_len, args.slices, args.multiple, &cost)?,
    };
    match args.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&plan)?),
        Format::Text => print_text(model, &describe(&shape), &plan)?,
    }
    Ok(())
}

fn print_text(model: &str, shape: &str, plan: &SlicePlan) -> anyhow::Result<()> {
    outln!("model {model}: {shape}");
    outln!(
        "sequence {} tokens (padded {}), {} {} slices, multiple {}",
        plan.seq_len,
        plan.padded_len,
        plan.len(),
        plan.method,
        plan.multiple
    );
    outln!(
        "{:>5} {:>10} {:>10} {:>9} {:>10} {:>14} {:>7}",
        "slice",
        "start",
        "end",
        "length",
        "prefix",
        "fwd TFLOPs",
        "share"
    );
    let total = plan.total_cost();
    for s in &plan.slices {
        outln!(
            "{:>5} {:>10} {:>10} {:>9} {:>10} {:>14.3} {:>6.2}%",
            s.index,
            s.start,
            s.end,
            s.len(),
            s.prefix(),
            s.cost / 1e12,
            100.0 * s.cost / total
        );
    }
    outln!(
        "total forward {:.3} TFLOPs; max/min slice cost ratio {:.4}",
        total / 1e12,
        plan.max_min_cost_ratio()
    );
    Ok(())
}
