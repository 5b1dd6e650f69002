//! `seqpipe eval --model <dir> --lengths 128,1024`: loss and perplexity by context length
//! (`seqpipe_trainer::eval`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use seqpipe_trainer::checkpoint::{export::model_dir, hf};
use seqpipe_trainer::config::{DataConfig, DataKind, Precision};
use seqpipe_trainer::eval::{evaluate, EvalData, EvalRow};

/// How the results are printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EvalFormat {
    /// A Markdown table.
    Table,
    /// JSON, one object per length.
    Json,
}

/// Arguments of `seqpipe eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A seqpipe checkpoint directory (its newest checkpoint), one checkpoint, or a Hugging Face
    /// model directory.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Context lengths, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    lengths: Vec<usize>,
    /// Sequences scored at each length.
    #[arg(long, default_value_t = 8)]
    sequences: usize,
    /// Data source (default: generated Markov text of the model's vocabulary).
    #[arg(long, value_enum)]
    data_kind: Option<DataKind>,
    /// Held-out token file, or text/JSONL with a tokenizer.
    #[arg(long)]
    data_path: Option<PathBuf>,
    /// tokenizer.json for text (default: the model directory's or its run's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Seed of a generated source.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Precision of the forward.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: EvalFormat,
}

/// Runs `seqpipe eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let (dir, tokenizer_dirs) = model_dir(&args.model)?;
    let (model, params) = hf::load(&dir, args.precision.dtype())?;
    let mut data = DataConfig::default();
    if let Some(kind) = args.data_kind {
        data.kind = kind;
    }
    data.path = args.data_path.clone();
    data.tokenizer = args.tokenizer.clone().or_else(|| {
        let mut found = tokenizer_dirs.iter().map(|d| d.join("tokenizer.json"));
        found.find(|f| f.is_file())
    });
    if data.kind != DataKind::Text {
        data.tokenizer = None;
    }
    let on = EvalData {
        data: &data,
        seed: args.seed,
        sequences: args.sequences,
    };
    let rows = evaluate(&model, &params, &on, &args.lengths)?;
    match args.format {
        EvalFormat::Json => outln!("{}", serde_json::to_string_pretty(&rows)?),
        EvalFormat::Table => print_table(&dir, &rows)?,
    }
    Ok(())
}

fn print_table(dir: &std::path::Path, rows: &[EvalRow]) -> std::io::Result<()> {
    outln!("{}", dir.display());
    outln!("| length | sequences | targets | loss | perplexity | accuracy |");
    outln!("|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let accuracy = r
            .accuracy
            .map_or("–".to_string(), |a| format!("{:.1}%", 100.0 * a));
        outln!(
            "| {} | {} | {:.0} | {:.4} | {:.3} | {accuracy} |",
            r.length,
            r.sequences,
            r.targets,
            r.loss,
            r.perplexity
        );
    }
    Ok(())
}
