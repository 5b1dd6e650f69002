//! What the training loop writes besides the progress bar: per-step metrics as JSON lines and
//! periodic resumable checkpoints.

use std::fs::{File, OpenOptions};
use std::io::Write;

use anyhow::Context;
use serde::Serialize;

use crate::checkpoint::resume::{self, TrainerState};
use crate::checkpoint::store::CheckpointDir;
use crate::config::TrainConfig;
use crate::data::DataSource;
use crate::runtime::{Pipeline, StepReport};

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
    pub fn open(cfg: &TrainConfig) -> anyhow::Result<Option<Self>> {
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
    pub fn write(&mut self, line: &MetricsLine) -> anyhow::Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(line)?)?;
        Ok(())
    }
}

/// Builds a metrics line from a step report.
pub fn metrics_line(
    step: u64,
    lr: f64,
    report: &StepReport,
    tokens_per_sec: f64,
    mfu: Option<f64>,
) -> MetricsLine {
    MetricsLine {
        step,
        loss: report.loss,
        lr,
        grad_norm: report.grad_norm,
        tokens_per_sec,
        mfu,
        accuracy: report.answers.accuracy(),
        peak_activation_bytes: report.stages.iter().map(|r| r.peak_bytes).collect(),
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

/// Writes the checkpoint of a run that has finished `step`.
pub fn write_checkpoint(
    cfg: &TrainConfig,
    step: u64,
    pipeline: &Pipeline,
    source: &DataSource,
) -> anyhow::Result<()> {
    let Some(dir) = &cfg.output.checkpoint_dir else {
        return Ok(());
    };
    let (optimizer_steps, moments) = pipeline.optimizer_state();
    let state = TrainerState {
        version: resume::VERSION,
        next_step: step + 1,
        optimizer_steps,
        data_position: source.position().to_string(),
        config: cfg.clone(),
    };
    let dir = CheckpointDir::open_for_writing(dir)?;
    resume::save(&dir, &state, &pipeline.parameters(), &moments)
        .with_context(|| format!("checkpoint after step {step}"))?;
    Ok(())
}
