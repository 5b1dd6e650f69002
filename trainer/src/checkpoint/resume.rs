//! Training checkpoints: everything a run needs to continue bit-identically.
//!
//! A checkpoint directory holds the model as a Hugging Face checkpoint (`config.json`,
//! `model.safetensors`: loadable by other tools as is), the optimizer moments
//! (`optimizer.safetensors`) and `trainer_state.json` (next step, optimizer steps, data stream
//! position, the run's configuration). It is written whole into a staging directory beside the
//! target and swapped in by rename; the previous checkpoint is removed only after the new one is in
//! place, so a crash at any moment leaves a complete checkpoint behind.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::atomic::{commit_file, replace_dir, temp_path, write_atomic};
use super::hf;
use crate::config::TrainConfig;
use crate::model::TensorMap;

/// The small, human-readable part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Format version.
    pub version: u32,
    /// The first step the resumed run executes.
    pub next_step: u64,
    /// AdamW steps taken (bias correction).
    pub optimizer_steps: u64,
    /// Data stream position, as a decimal string (a u128 does not fit JSON numbers).
    pub data_position: String,
    /// The configuration of the run that wrote it.
    pub config: TrainConfig,
}

impl TrainerState {
    /// The data stream position.
    pub fn position(&self) -> anyhow::Result<u128> {
        self.data_position.parse().with_context(|| {
            format!(
                "trainer_state.json: data_position {:?} is not a number",
                self.data_position
            )
        })
    }
}

/// Whether a checkpoint's configuration can be continued by `cfg`: everything but the step count
/// and the output paths must match.
pub fn same_run(saved: &TrainConfig, cfg: &TrainConfig) -> bool {
    let normalise = |c: &TrainConfig| TrainConfig {
        steps: 0,
        output: Default::default(),
        // A run may continue on another device.
        device: String::new(),
        ..c.clone()
    };
    normalise(saved) == normalise(cfg)
}

/// Reads the checkpoint in `dir` for a run configured by `cfg`: an error unless it was written
/// by a run with the same settings.
pub fn load_for(dir: &Path, cfg: &TrainConfig) -> anyhow::Result<Checkpoint> {
    let ck = load(dir, cfg.precision.dtype())?;
    if !same_run(&ck.state.config, cfg) {
        bail!(
            "checkpoint {} was written by a run with another configuration; resume with the same settings (see its trainer_state.json)",
            dir.display()
        );
    }
    if ck.state.next_step >= cfg.steps {
        bail!(
            "the checkpoint is already at step {} of {}: nothing left to train (raise steps)",
            ck.state.next_step,
            cfg.steps
        );
    }
    Ok(ck)
}

/// Everything read back from a checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Small state.
    pub state: TrainerState,
    /// Whole-model parameters.
    pub params: TensorMap,
    /// Optimizer moments (`m.` / `v.` prefixed names).
    pub optimizer: TensorMap,
}

/// Writes a checkpoint to `dir` atomically (see the module docs).
pub fn save(
    dir: &Path,
    state: &TrainerState,
    params: &TensorMap,
    optimizer: &TensorMap,
) -> anyhow::Result<()> {
    let staged = temp_path(dir);
    if staged.exists() {
        std::fs::remove_dir_all(&staged)
            .with_context(|| format!("removing stale {}", staged.display()))?;
    }
    hf::save(&staged, &state.config.model, params)?;
    let moments: HashMap<String, Tensor> = optimizer
        .iter()
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let opt_path = staged.join("optimizer.safetensors");
    let tmp = temp_path(&opt_path);
    candle_core::safetensors::save(&moments, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    commit_file(&tmp, &opt_path)?;
    write_atomic(
        &staged.join("trainer_state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    replace_dir(&staged, dir)
}

/// Reads a checkpoint written by [`save`]; parameters come back in `dtype`.
pub fn load(dir: &Path, dtype: DType) -> anyhow::Result<Checkpoint> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("reading {}", state_path.display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a seqpipe trainer state", state_path.display()))?;
    if state.version != 1 {
        bail!(
            "{}: checkpoint format version {} is not supported (expected 1)",
            state_path.display(),
            state.version
        );
    }
    let (_, params) = hf::load(dir, dtype)?;
    let opt_path = dir.join("optimizer.safetensors");
    let optimizer: TensorMap = candle_core::safetensors::load(&opt_path, &Device::Cpu)
        .with_context(|| {
            format!(
                "{} is not a readable safetensors file (truncated or corrupt?)",
                opt_path.display()
            )
        })?
        .into_iter()
        .collect();
    Ok(Checkpoint {
        state,
        params,
        optimizer,
    })
}
