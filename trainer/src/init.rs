//! `init_from` / `--init-from <dir>`: start a run from a Hugging Face Llama checkpoint — the
//! model from its `config.json` (every field that changes the computation implemented or refused
//! by name, `checkpoint::hf`), the weights from its safetensors (sharded too), and its
//! `tokenizer.json` for text data when none is given. Context extension changes only what
//! `[init_from]` names: a new `rope_theta`, a RoPE scaling (linear, llama3, yarn) and a larger
//! `max_positions`; the run's checkpoints and exports carry them in their `config.json`.
//!
//! The configuration's model is the checkpoint's ([`resolved`]); a configuration that also sets
//! `[model]` is refused, since one of the two would be silently ignored. On `--resume` the
//! checkpoint's weights are the run's and `init_from` only names where step 0 came from (it must
//! match the saved configuration like every other setting).

use std::path::PathBuf;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::checkpoint::hf;
use crate::config::{DataKind, TrainConfig};
use crate::error::{fail, Context, Result};
use crate::model::params::TensorMap;
use crate::model::{ModelConfig, RopeScaling};

/// Where a run's weights come from, and what it changes for a longer context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitFrom {
    /// A Hugging Face model directory: `config.json`, `model.safetensors` or an index and its
    /// shards, and optionally `tokenizer.json`.
    pub dir: PathBuf,
    /// A new RoPE base for context extension (the checkpoint's otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// A new position limit for context extension (the checkpoint's otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_positions: Option<usize>,
    /// A RoPE scaling for context extension, replacing the checkpoint's (TOML
    /// `[init_from.rope_scaling]`, e.g. `type = "yarn"`, `factor = 4.0`,
    /// `original_max_positions = 4096`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

impl InitFrom {
    /// The checkpoint's model with the extension's changes.
    pub fn model(&self) -> Result<ModelConfig> {
        let path = self.dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "init_from: reading {} (a Hugging Face model directory holds config.json and \
                 its safetensors)",
                path.display()
            )
        })?;
        let mut model =
            hf::config_from_json(&text).with_context(|| format!("in {}", path.display()))?;
        if let Some(theta) = self.rope_theta {
            if !(theta.is_finite() && theta > 0.0) {
                fail!(
                    Config,
                    "init_from.rope_theta = {theta}: give a positive number"
                );
            }
            model.rope_theta = theta;
        }
        if let Some(scaling) = &self.rope_scaling {
            model.rope_scaling = Some(scaling.clone());
        }
        if let Some(n) = self.max_positions {
            if n < model.max_positions {
                fail!(
                    Config,
                    "init_from.max_positions = {n} is below the checkpoint's {}: extension only \
                     grows the context",
                    model.max_positions
                );
            }
            model.max_positions = n;
        }
        Ok(model)
    }

    /// The checkpoint's weights in `dtype`, checked against its config.
    pub fn weights(&self, dtype: DType) -> Result<TensorMap> {
        let (_, params) = hf::load(&self.dir, dtype)
            .with_context(|| format!("init_from {}", self.dir.display()))?;
        Ok(params)
    }

    /// The checkpoint's `tokenizer.json`, if it has one.
    fn tokenizer(&self) -> Option<PathBuf> {
        Some(self.dir.join("tokenizer.json")).filter(|p| p.is_file())
    }
}

/// `cfg` with `init_from` applied: the model is the checkpoint's (with the extension's
/// changes), and text or passkey data without a tokenizer takes the checkpoint's (a model with a
/// real tokenizer is asked for the pass key in words). Unchanged without
/// `init_from`; applying it twice changes nothing more.
pub fn resolved(cfg: &TrainConfig) -> Result<TrainConfig> {
    let Some(init) = &cfg.init_from else {
        return Ok(cfg.clone());
    };
    let mut out = cfg.clone();
    out.model = init.model()?;
    if matches!(out.data.kind, DataKind::Text | DataKind::Passkey) && out.data.tokenizer.is_none() {
        out.data.tokenizer = init.tokenizer();
    }
    Ok(out)
}

/// Refuses a TOML configuration that sets both `[model]` and `[init_from]` (or `[model]` when
/// `init_given`: `init_from` comes from the command line): one would be ignored.
pub fn refuse_model_with_init(text: &str, init_given: bool) -> Result<()> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        // The configuration's own parse reports the syntax error.
        Err(_) => return Ok(()),
    };
    if table.contains_key("model") && (init_given || table.contains_key("init_from")) {
        fail!(
            Config,
            "the configuration sets [model] and init_from: the model comes from init_from's \
             config.json; remove [model] (init_from.rope_theta and init_from.max_positions \
             extend the context)"
        );
    }
    Ok(())
}
