//! What the training loop writes besides the progress bar: per-step metrics as JSON lines and
//! when checkpoints are due (the ranks write them: `runtime::rank_checkpoint`).

use crate::error::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;

use serde::Serialize;

use crate::config::TrainConfig;

/// One line of the metrics file.
#[derive(Debug, Serialize)]
pub struct MetricsLine {
    /// 0-based step.
    pub step: u64,
    /// Mean loss of the batch.
    pub loss: f64,
    /// Learning rate.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens per second of the step.
    pub tokens_per_sec: f64,
    /// Model FLOP utilisation against the measured matmul peak (none where no peak was measured).
    pub mfu: Option<f64>,
    /// Accuracy on the scored targets of a masked task (the retrieval task's answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Peak activation bytes per stage in this step.
    pub peak_activation_bytes: Vec<usize>,
}

/// Appends metrics lines to a file (appending, so a resumed run continues the same file).
pub struct MetricsWriter {
    file: File,
}

impl MetricsWriter {
    /// Opens `cfg.output.metrics` for appending, if set.
    pub fn open(cfg: &TrainConfig) -> Result<Option<Self>> {
        let Some(path) = &cfg.output.metrics else {
            return Ok(None);
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening metrics file {}", path.display()))?;
        Ok(Some(MetricsWriter { file }))
    }

    /// Writes one line.
    pub fn write(&mut self, line: &MetricsLine) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(line)?)?;
        Ok(())
    }
}

/// Whether a checkpoint is due after `step` (0-based) of `cfg.steps`.
pub fn checkpoint_due(cfg: &TrainConfig, step: u64) -> bool {
    match (&cfg.output.checkpoint_dir, cfg.output.checkpoint_every) {
        (Some(_), Some(every)) => (step + 1) % every.max(1) == 0 || step + 1 == cfg.steps,
        (Some(_), None) => step + 1 == cfg.steps,
        _ => false,
    }
}
