//! `seqpipe eval --model <dir> --lengths 128,1024`: loss and perplexity by context length, and
//! with `--passkey-depths` the passkey probe by length and depth (`seqpipe_trainer::eval`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use seqpipe_trainer::checkpoint::{export::model_dir, hf};
use seqpipe_trainer::config::{DataConfig, DataKind, Precision};
use seqpipe_trainer::data::{text::load_tokenizer, PasskeySource};
use seqpipe_trainer::eval::heatmap::{check_passkey_svg_path, write_passkey_svg};
use seqpipe_trainer::eval::{
    evaluate, passkey_probe, EvalData, EvalRow, PasskeyCell, PasskeyProbe,
};
use seqpipe_trainer::model::{ModelConfig, TensorMap};

use super::data_args::DataArgs;

/// How the results are printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EvalFormat {
    /// A Markdown table.
    Table,
    /// JSON: `{"perplexity": [one object per length], "passkey": [one per length and depth]}`.
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
    /// The perplexity's data (default: generated Markov text of the model's vocabulary); the
    /// tokenizer defaults to the model directory's or its run's.
    #[command(flatten)]
    data: DataArgs,
    /// Passkey probe: depths of the key in the filler, comma-separated, each from 0 to 1 (e.g.
    /// 0,0.25,0.5,0.75,1). In words with a tokenizer, else in the token form.
    #[arg(long, value_delimiter = ',')]
    passkey_depths: Vec<f64>,
    /// Keys tried at each length and depth.
    #[arg(long, default_value_t = 10)]
    passkey_trials: usize,
    /// Write the passkey table as an SVG heat map here.
    #[arg(long, value_name = "SVG", requires = "passkey_depths")]
    heatmap: Option<PathBuf>,
    /// Seed of a generated source (and of the pass keys).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Precision of the forward.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: EvalFormat,
}

/// Everything `eval` measured.
#[derive(Serialize)]
struct Results {
    perplexity: Vec<EvalRow>,
    passkey: Vec<PasskeyCell>,
}

/// Runs `seqpipe eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let (dir, tokenizer_dirs) = model_dir(&args.model)?;
    let (model, params) = hf::load(&dir, args.precision.dtype())?;
    let mut data = DataConfig::default();
    args.data.apply(&mut data);
    if data.tokenizer.is_none() {
        let mut found = tokenizer_dirs.iter().map(|d| d.join("tokenizer.json"));
        data.tokenizer = found.find(|f| f.is_file());
    }
    if let Some(path) = &args.heatmap {
        check_passkey_svg_path(path)?;
    }
    let words = data.tokenizer.clone();
    if !matches!(data.kind, DataKind::Text | DataKind::Passkey) {
        data.tokenizer = None;
    }
    let on = EvalData {
        data: &data,
        seed: args.seed,
        sequences: args.sequences,
    };
    let results = Results {
        perplexity: evaluate(&model, &params, &on, &args.lengths)?,
        passkey: probe(args, &model, &params, words)?,
    };
    match args.format {
        EvalFormat::Json => outln!("{}", serde_json::to_string_pretty(&results)?),
        EvalFormat::Table => {
            print_table(&dir, &results.perplexity)?;
            print_passkey(&results.passkey)?;
        }
    }
    if let Some(path) = &args.heatmap {
        let title = format!("passkey retrieval: {}", dir.display());
        write_passkey_svg(path, &results.passkey, &title)?;
        // On stderr, so that `--format json` leaves standard output pure JSON.
        eprintln!("heat map written to {}", path.display());
    }
    Ok(())
}

/// The passkey probe, when depths are given: in words with `tokenizer`, else in token ids.
fn probe(
    args: &EvalArgs,
    model: &ModelConfig,
    params: &TensorMap,
    tokenizer: Option<PathBuf>,
) -> anyhow::Result<Vec<PasskeyCell>> {
    if args.passkey_depths.is_empty() {
        return Ok(Vec::new());
    }
    let source = match tokenizer {
        Some(path) => PasskeySource::text(load_tokenizer(&path)?, args.seed)?,
        None => PasskeySource::tokens(model.vocab, args.seed)?,
    };
    let probe = PasskeyProbe {
        depths: args.passkey_depths.clone(),
        trials: args.passkey_trials,
    };
    Ok(passkey_probe(
        model,
        params,
        &source,
        &probe,
        &args.lengths,
    )?)
}

/// Keys retrieved of those tried, one row per length and one column per depth.
fn print_passkey(cells: &[PasskeyCell]) -> std::io::Result<()> {
    let Some(first) = cells.first() else {
        return Ok(());
    };
    let depths: Vec<f64> = cells
        .iter()
        .take_while(|c| c.length == first.length)
        .map(|c| c.depth)
        .collect();
    outln!();
    outln!(
        "passkey retrieved (exact, of {} keys) by length and depth",
        first.trials
    );
    let header: Vec<String> = depths.iter().map(|d| format!("{d:.2}")).collect();
    outln!("| length | {} | all |", header.join(" | "));
    outln!("|---:|{}---:|", "---:|".repeat(depths.len()));
    for row in cells.chunks(depths.len()) {
        let shown: Vec<String> = row
            .iter()
            .map(|c| format!("{}/{}", c.retrieved, c.trials))
            .collect();
        let (got, of) = row
            .iter()
            .fold((0, 0), |(g, o), c| (g + c.retrieved, o + c.trials));
        let share = 100.0 * got as f64 / of as f64;
        outln!(
            "| {} | {} | {share:.0}% |",
            row[0].length,
            shown.join(" | ")
        );
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
