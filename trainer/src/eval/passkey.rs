//! The passkey probe: at each context length and depth, how many of a set of fresh keys the model
//! retrieves exactly (`data::passkey` builds the sequences; a key counts when every answer token
//! is the model's most likely next token, which is what greedy decoding would write).

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::{check_lengths, scorer};
use crate::data::PasskeySource;
use crate::error::{fail, Result};
use crate::model::{ModelConfig, TensorMap};
use crate::runtime::IterationInput;

/// What to probe.
pub struct PasskeyProbe {
    /// Where the key sits in the filler, each from 0 (first) to 1 (last).
    pub depths: Vec<f64>,
    /// Keys tried at each length and depth.
    pub trials: usize,
}

/// The probe at one length and depth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PasskeyCell {
    /// Tokens per sequence.
    pub length: usize,
    /// Depth of the key.
    pub depth: f64,
    /// Keys tried.
    pub trials: usize,
    /// Keys retrieved exactly.
    pub retrieved: usize,
    /// Share of answer tokens predicted (partial credit).
    pub token_accuracy: f64,
}

impl PasskeyCell {
    /// Share of keys retrieved exactly.
    pub fn accuracy(&self) -> f64 {
        self.retrieved as f64 / self.trials as f64
    }
}

/// Probes `params` at every length × depth; `source` makes the keys (its seed is reset per
/// length so every length gets the same keys).
pub fn passkey_probe(
    model: &ModelConfig,
    params: &TensorMap,
    source: &PasskeySource,
    probe: &PasskeyProbe,
    lengths: &[usize],
) -> Result<Vec<PasskeyCell>> {
    if probe.trials == 0 || probe.depths.is_empty() {
        fail!(
            Config,
            "passkey probe: {} depths × {} trials: give at least one of each",
            probe.depths.len(),
            probe.trials
        );
    }
    check_lengths(model, lengths)?;
    let mut cells = Vec::with_capacity(lengths.len() * probe.depths.len());
    for &length in lengths {
        let mut keys = source.clone();
        keys.seek(0);
        let mut pipeline = scorer(model, params, 1)?;
        for &depth in &probe.depths {
            let (mut retrieved, mut hits, mut scored) = (0, 0, 0);
            for _ in 0..probe.trials {
                let seq = keys.sequence_at(length, depth)?;
                let report = pipeline.compute_gradients(&IterationInput {
                    ragged: None,
                    documents: None,
                    tokens: vec![Tensor::from_vec(seq.tokens, (1, length + 1), &Device::Cpu)?],
                    masks: Some(vec![Tensor::from_vec(seq.mask, (1, length), &Device::Cpu)?]),
                    slices: std::iter::once(0..length).collect(),
                    normaliser: 1.0,
                })?;
                let a = report.answers;
                retrieved += usize::from(a.scored > 0 && a.correct == a.scored);
                (hits, scored) = (hits + a.correct, scored + a.scored);
            }
            cells.push(PasskeyCell {
                length,
                depth,
                trials: probe.trials,
                retrieved,
                token_accuracy: hits as f64 / scored.max(1) as f64,
            });
        }
    }
    Ok(cells)
}
