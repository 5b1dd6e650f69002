//! `seqpipe export --from <checkpoint> --hf <dir>`: a model as a Hugging Face directory
//! (`checkpoint::export`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use seqpipe_trainer::checkpoint::export::export_hf;

/// The dtype of the exported weights.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportDtype {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    Bf16,
}

/// Arguments of `seqpipe export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A seqpipe checkpoint directory (its newest checkpoint), one checkpoint, or a Hugging Face
    /// model directory.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The Hugging Face model directory to write (new or empty).
    #[arg(long, value_name = "DIR")]
    hf: PathBuf,
    /// The weights' dtype.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: ExportDtype,
}

/// Runs `seqpipe export`.
pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let dtype = match args.dtype {
        ExportDtype::F32 => candle_core::DType::F32,
        ExportDtype::Bf16 => candle_core::DType::BF16,
    };
    let done = export_hf(&args.from, &args.hf, dtype)?;
    outln!(
        "exported {} to {} ({:?}); tokenizer files: {}",
        done.source.display(),
        args.hf.display(),
        args.dtype,
        match done.tokenizer_files.len() {
            0 => "none found".to_string(),
            n => n.to_string(),
        }
    );
    Ok(())
}
