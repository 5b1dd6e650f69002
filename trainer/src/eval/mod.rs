//! `seqpipe eval`: a model's next-token loss and perplexity at several context lengths — the
//! first check that a context extension worked (perplexity should stay flat or fall as the
//! context grows, not blow up past the length the model was trained at).
//!
//! Each length reads its own sequences from the start of the data (a held-out file, or a
//! generated source from its seed), and scores every target (or the targets a masked source,
//! such as `retrieval`, scores; their accuracy is reported too). The forward runs through the
//! trainer's own executor on one stage — the numbers the trainer trains on — which also computes
//! gradients it does not use: correct and simple, about three times a forward's cost.
//!
//! [`passkey`] is the other standard check: whether the model finds a number hidden at each depth
//! of each length; [`heatmap`] draws its table.

pub mod heatmap;
pub mod passkey;

pub use passkey::{passkey_probe, PasskeyCell, PasskeyProbe};

use std::time::Duration;

use candle_core::{DType, Device};
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use serde::Serialize;

use crate::config::DataConfig;
use crate::data::DataSource;
use crate::error::{fail, Result};
use crate::model::{ModelConfig, TensorMap};
use crate::optim::OptimConfig;
use crate::runtime::{IterationInput, Pipeline, Weights};

/// The evaluation of one context length.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRow {
    /// Tokens per sequence.
    pub length: usize,
    /// Sequences scored.
    pub sequences: usize,
    /// Targets scored.
    pub targets: f64,
    /// Mean next-token loss (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Share of scored targets whose most likely token was the target, for sources that score
    /// chosen targets (`retrieval`); none otherwise.
    pub accuracy: Option<f64>,
}

/// What to evaluate on.
pub struct EvalData<'a> {
    /// The data source (its `seq_len` and `batch` are ignored).
    pub data: &'a DataConfig,
    /// Seed of a generated source.
    pub seed: u64,
    /// Sequences per length.
    pub sequences: usize,
}

/// Evaluates `params` of `model` at each of `lengths`.
pub fn evaluate(
    model: &ModelConfig,
    params: &TensorMap,
    on: &EvalData,
    lengths: &[usize],
) -> Result<Vec<EvalRow>> {
    if on.sequences == 0 {
        fail!(Config, "eval: sequences = 0: score at least one sequence");
    }
    check_lengths(model, lengths)?;
    lengths
        .iter()
        .map(|&n| evaluate_length(model, params, on, n))
        .collect()
}

/// A one-stage pipeline that scores `microbatches` sequences per call with `params`.
fn scorer(model: &ModelConfig, params: &TensorMap, microbatches: usize) -> Result<Pipeline> {
    let dtype = params.values().next().map_or(DType::F32, |t| t.dtype());
    let schedule = ScheduleConfig::new(ScheduleKind::OneFOneB, 1, microbatches as u32);
    Pipeline::with_weights(
        model,
        schedule,
        None,
        &OptimConfig::default(),
        Weights::Loaded(params),
        dtype,
        Duration::from_secs(3600),
    )
}

/// Refuses a length the model's positions do not reach (or 0).
fn check_lengths(model: &ModelConfig, lengths: &[usize]) -> Result<()> {
    if let Some(&n) = lengths
        .iter()
        .find(|&&n| n == 0 || n + 1 > model.max_positions)
    {
        fail!(
            Config,
            "eval: length {n} needs positions up to {}, but the model has {} (max_positions): \
             give lengths from 1 to {}",
            n + 1,
            model.max_positions,
            model.max_positions.saturating_sub(1)
        );
    }
    Ok(())
}

fn evaluate_length(
    model: &ModelConfig,
    params: &TensorMap,
    on: &EvalData,
    length: usize,
) -> Result<EvalRow> {
    let mut source = DataSource::open(on.data, model.vocab, on.seed)?;
    let batch = source.draw(on.sequences, 1, length, &Device::Cpu)?;
    let targets = batch.scored_targets(0..on.sequences)?;
    let mut pipeline = scorer(model, params, on.sequences)?;
    let report = pipeline.compute_gradients(&IterationInput {
        ragged: None,
        documents: batch.documents,
        tokens: batch.tokens,
        masks: batch.masks,
        slices: std::iter::once(0..length).collect(),
        normaliser: targets,
    })?;
    let answers = report.answers;
    let accuracy = (answers.scored > 0).then(|| answers.correct as f64 / answers.scored as f64);
    Ok(EvalRow {
        length,
        sequences: on.sequences,
        targets,
        loss: report.loss,
        perplexity: report.loss.exp(),
        accuracy,
    })
}
