//! Training checkpoints: everything a run needs to continue bit-identically.
//!
//! A checkpoint directory holds the model as a Hugging Face checkpoint (`config.json`,
//! `model.safetensors`: loadable by other tools as is), the optimizer moments
//! (`optimizer.safetensors`), `trainer_state.json` (next step, optimizer steps, data stream
//! position, the run's configuration) and `manifest.json` (size and SHA-256 of each of those),
//! written last. It is written whole into a staging directory and published by one rename
//! (`store.rs`), so a crash at any moment leaves complete checkpoints only. Loading checks the
//! manifest before reading anything, then that the files agree with each other.

use crate::error::{fail, Context, Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::atomic::{commit_file, temp_path, write_atomic};
use super::store::{self, CheckpointDir};
use super::{hf, manifest};
use crate::config::{json_differences, TrainConfig};
use crate::model::TensorMap;

/// The trainer-state version this build writes: 2 (with a manifest). Version 1 checkpoints
/// (no manifest, no checksums) still load.
pub const VERSION: u32 = 2;
/// The files of a checkpoint that its manifest lists.
const FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "optimizer.safetensors",
    "trainer_state.json",
];

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
    pub fn position(&self) -> Result<u128> {
        self.data_position.parse().map_err(|e| {
            Error::Checkpoint(format!(
                "trainer_state.json: data_position {:?} is not a number: {e}",
                self.data_position
            ))
        })
    }
}

/// The settings in which `saved` and `cfg` differ, as `key: saved … now` lines, ignoring what a
/// continued run may change (the step count, the output paths, the device, and the memory
/// settings: offload, recomputation, budget).
pub fn config_differences(saved: &TrainConfig, cfg: &TrainConfig) -> Vec<String> {
    let normalise = |c: &TrainConfig| {
        let mut c = TrainConfig {
            steps: 0,
            output: Default::default(),
            device: String::new(),
            ..c.clone()
        };
        // Where activations live between forward and backward leaves every number unchanged
        // (the oracle tests): a run may resume with more or less offload or recomputation.
        c.parallel.offload = Default::default();
        c.parallel.recompute = Default::default();
        c.parallel.memory_budget = None;
        serde_json::to_value(c).unwrap_or_default()
    };
    json_differences(
        &normalise(saved),
        &normalise(cfg),
        ("in the checkpoint", "now"),
    )
}

/// Whether a checkpoint's configuration can be continued by `cfg`: everything but the step count,
/// the output paths and the memory settings (offload, recomputation, budget) must match.
pub fn same_run(saved: &TrainConfig, cfg: &TrainConfig) -> bool {
    config_differences(saved, cfg).is_empty()
}

/// Reads the checkpoint `path` names (a checkpoint directory: its newest checkpoint; or one
/// checkpoint) for a run configured by `cfg`: an error unless it was written by a run with the
/// same settings, naming the settings that differ.
pub fn load_for(path: &Path, cfg: &TrainConfig) -> Result<Checkpoint> {
    // bf16 runs train f32 master weights, and their checkpoints hold those: keep them in f32.
    let ck = load(path, crate::optim::master_dtype(cfg.precision.dtype()))?;
    let differences = config_differences(&ck.state.config, cfg);
    if !differences.is_empty() {
        fail!(
            Checkpoint,
            "checkpoint {} was written by a run with another configuration; resume with the \
             same settings. They differ in:\n  {}",
            ck.dir.display(),
            differences.join("\n  ")
        );
    }
    if ck.state.next_step >= cfg.steps {
        fail!(
            Config,
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
    /// The checkpoint directory it was read from.
    pub dir: PathBuf,
    /// Small state.
    pub state: TrainerState,
    /// Whole-model parameters.
    pub params: TensorMap,
    /// Optimizer moments (`m.` / `v.` prefixed names).
    pub optimizer: TensorMap,
}

/// Writes a checkpoint into `dir` (see the module docs); returns the published directory.
pub fn save(
    dir: &CheckpointDir,
    state: &TrainerState,
    params: &TensorMap,
    optimizer: &TensorMap,
) -> Result<PathBuf> {
    let staged = dir.staging(state.next_step)?;
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
    manifest::write(&staged, &FILES)?;
    dir.publish(&staged, state.next_step)
}

/// Reads the checkpoint `path` names (see [`store::resolve`]); parameters come back in `dtype`.
/// When the newest checkpoint of a directory fails to load, the error names the older ones.
pub fn load(path: &Path, dtype: DType) -> Result<Checkpoint> {
    let (dir, older) = store::resolve(path)?;
    load_one(&dir, dtype).map_err(|e| {
        if older.is_empty() {
            e
        } else {
            let list: Vec<String> = older.iter().map(|p| p.display().to_string()).collect();
            e.context(format!(
                "checkpoint {} cannot be used; older complete checkpoints to resume from \
                 instead (--resume DIR): {}",
                dir.display(),
                list.join(", ")
            ))
        }
    })
}

/// Reads `trainer_state.json` (bounded: it is small) and checks its version.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("reading {}", state_path.display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a seqpipe trainer state", state_path.display()))?;
    if state.version != 1 && state.version != VERSION {
        fail!(
            Checkpoint,
            "{}: checkpoint format version {} is not supported (expected 1 or {VERSION})",
            state_path.display(),
            state.version
        );
    }
    Ok(state)
}

/// One checkpoint directory: manifest first, then the files, then their agreement.
fn load_one(dir: &Path, dtype: DType) -> Result<Checkpoint> {
    match manifest::read(dir)? {
        Some(m) => manifest::verify(dir, &m)?,
        None => {
            // Only version-1 checkpoints (written before manifests existed) may lack one.
            if read_state(dir)?.version != 1 {
                fail!(
                    Checkpoint,
                    "{} has no manifest.json: the checkpoint is incomplete or was altered",
                    dir.display()
                );
            }
        }
    }
    let state = read_state(dir)?;
    state.position()?;
    let (model, params, extras) = hf::load_with_extras(dir, dtype)?;
    if !extras.is_empty() {
        fail!(
            Checkpoint,
            "{}: model.safetensors holds tensors this model does not have: {}",
            dir.display(),
            extras.join(", ")
        );
    }
    if model != state.config.model {
        fail!(
            Checkpoint,
            "{}: config.json describes another model than trainer_state.json's configuration \
             ({model:?} against {:?})",
            dir.display(),
            state.config.model
        );
    }
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
        dir: dir.to_path_buf(),
        state,
        params,
        optimizer,
    })
}
