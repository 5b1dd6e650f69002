//! `seqpipe export --hf`: a Hugging Face model directory that `transformers` loads as is, from a
//! seqpipe checkpoint (a run's checkpoint directory, its newest checkpoint; or one checkpoint) or
//! from a Hugging Face directory, in f32 or bf16, with the tokenizer files of where the run's
//! model and text came from (`init_from`'s directory, `data.tokenizer`'s).
//!
//! The output directory must be new or empty: seqpipe never writes into a directory it did not
//! create. Files are written atomically (`hf::save`), so a crash leaves no half-written model.

use std::path::{Path, PathBuf};

use candle_core::DType;

use super::{hf, resume, store};
use crate::error::{fail, Context, Result};

/// Tokenizer files copied beside the model when the source has them.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
];

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The model directory read.
    pub source: PathBuf,
    /// Tokenizer files copied.
    pub tokenizer_files: Vec<PathBuf>,
}

/// The model directory `from` names (a run's newest checkpoint, one checkpoint, or a Hugging
/// Face directory) and the directories its tokenizer may come from.
pub fn model_dir(from: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let seqpipe = from.join(store::MARKER).is_file() || from.join("trainer_state.json").is_file();
    if !seqpipe {
        if !from.join("config.json").is_file() {
            fail!(
                Checkpoint,
                "{} is neither a seqpipe checkpoint nor a Hugging Face model directory (no \
                 config.json)",
                from.display()
            );
        }
        return Ok((from.to_path_buf(), vec![from.to_path_buf()]));
    }
    let (dir, _) = store::resolve(from)?;
    let state = resume::read_state(&dir)?;
    let mut tokenizer_dirs = Vec::new();
    if let Some(init) = &state.config.init_from {
        tokenizer_dirs.push(init.dir.clone());
    }
    if let Some(parent) = state
        .config
        .data
        .tokenizer
        .as_ref()
        .and_then(|t| t.parent())
    {
        tokenizer_dirs.push(parent.to_path_buf());
    }
    Ok((dir, tokenizer_dirs))
}

/// Refuses an output directory that exists and holds anything.
fn fresh_output(out: &Path) -> Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            fail!(
                Checkpoint,
                "export: {} is not empty; seqpipe writes only into a new or empty directory",
                out.display()
            );
        }
    } else if out.exists() {
        fail!(Checkpoint, "export: {} is not a directory", out.display());
    }
    Ok(())
}

/// Writes the model `from` names into `out` as a Hugging Face directory in `dtype`.
pub fn export_hf(from: &Path, out: &Path, dtype: DType) -> Result<Exported> {
    if !matches!(dtype, DType::F32 | DType::BF16) {
        fail!(Config, "export: dtype {dtype:?}; use f32 or bf16");
    }
    fresh_output(out)?;
    let (dir, tokenizer_dirs) = model_dir(from)?;
    let (model, params) =
        hf::load(&dir, dtype).with_context(|| format!("export: {}", dir.display()))?;
    hf::save(out, &model, &params)?;
    let mut copied = Vec::new();
    for name in TOKENIZER_FILES {
        if let Some(file) = tokenizer_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|f| f.is_file())
        {
            let to = out.join(name);
            std::fs::copy(&file, &to)
                .with_context(|| format!("copying {} to {}", file.display(), to.display()))?;
            copied.push(to);
        }
    }
    Ok(Exported {
        source: dir,
        tokenizer_files: copied,
    })
}
