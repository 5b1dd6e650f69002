//! Model-state bytes per stage: weights, gradients and optimizer states (SPEC §5).
//!
//! Always a per-stage figure: the first stage owns the embedding and the last the LM head and
//! final norm, unless the vocabulary is sharded across the pipeline (SlimPipe), which spreads both
//! over every stage. Mixed precision keeps bf16 weights, fp32 gradients and fp32 master weights
//! plus two Adam moments (`2 + 4 + 12` bytes per parameter, SPEC's `6 B` and `12 B`); the
//! distributed optimizer shards the 12 bytes over `d·c` ranks.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{model_states, Parallelism, StageLayout, StateOptions};
//! use seqpipe_slicing::preset;
//! let shape = preset("llama-7b").unwrap();
//! let layout = StageLayout::new(4, 1).unwrap(); // 8 layers per stage
//! let one = Parallelism::new(1, 1, 1).unwrap();
//! let states = model_states(&shape, &layout, &one, &StateOptions::default()).unwrap();
//! let layers = 8.0 * shape.layer_parameters() as f64;
//! let table = 32000.0 * 4096.0; // vocabulary × hidden
//! assert_eq!(states[1].parameters, layers);
//! assert_eq!(states[0].parameters, layers + table); // + embedding
//! assert_eq!(states[3].parameters, layers + table + 4096.0); // + LM head and final norm
//! assert_eq!(states[1].total(), 18.0 * layers); // 2 + 4 + 12 bytes per parameter
//! ```

use seqpipe_slicing::ModelShape;
use serde::{Deserialize, Serialize};

use crate::activation::{LogitsPlacement, Parallelism};
use crate::error::{MemoryError, Result};
use crate::pipeline::StageLayout;

/// Bytes per parameter of each kind of model state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precision {
    /// Weights used by forward and backward.
    pub weight_bytes: u64,
    /// Gradients.
    pub grad_bytes: u64,
    /// Optimizer states (master weights and moments).
    pub optimizer_bytes: u64,
}

impl Precision {
    /// bf16 weights, fp32 gradients, fp32 master weights and Adam moments: 2 + 4 + 12.
    pub const MIXED_BF16: Precision = Precision {
        weight_bytes: 2,
        grad_bytes: 4,
        optimizer_bytes: 12,
    };
    /// fp32 weights and gradients, Adam moments: 4 + 4 + 8.
    pub const FP32: Precision = Precision {
        weight_bytes: 4,
        grad_bytes: 4,
        optimizer_bytes: 8,
    };
}

/// How model states are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateOptions {
    /// Bytes per parameter.
    pub precision: Precision,
    /// Shard optimizer states over the `d·c` data-parallel and context-parallel ranks.
    pub distributed_optimizer: bool,
    /// Where embedding and LM head live (vocab-sharded spreads them over all stages).
    pub vocab: LogitsPlacement,
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions {
            precision: Precision::MIXED_BF16,
            distributed_optimizer: true,
            vocab: LogitsPlacement::LastStage,
        }
    }
}

/// Model states of one stage, in bytes per GPU.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StageStates {
    /// Stage index.
    pub stage: usize,
    /// Parameters held by one GPU of this stage (after TP sharding).
    pub parameters: f64,
    /// Weight bytes.
    pub weights: f64,
    /// Gradient bytes.
    pub grads: f64,
    /// Optimizer bytes (after distributed-optimizer sharding).
    pub optimizer: f64,
}

impl StageStates {
    /// Sum of weights, gradients and optimizer states.
    pub fn total(&self) -> f64 {
        self.weights + self.grads + self.optimizer
    }
}

/// Parameters of stage `stage` before TP sharding: its layers, plus embedding (first stage) and LM
/// head and final norm (last stage), or a `1/p` share of both with a vocab-sharded pipeline.
pub fn stage_parameters(
    shape: &ModelShape,
    layout: &StageLayout,
    stage: usize,
    vocab: LogitsPlacement,
) -> Result<f64> {
    let p = layout.stages;
    if stage >= p as usize {
        return Err(MemoryError::NoSuchStage {
            stage,
            stages: p as usize,
        });
    }
    let layers = layout.layers_per_stage(shape)? as f64;
    let mut params = layers * shape.layer_parameters() as f64;
    let table = (shape.vocab * shape.hidden) as f64;
    let last = stage + 1 == p as usize;
    match vocab {
        LogitsPlacement::VocabSharded => params += 2.0 * table / p as f64,
        LogitsPlacement::LastStage => {
            if stage == 0 {
                params += table;
            }
            if last {
                params += table;
            }
        }
    }
    if last {
        params += shape.hidden as f64; // final norm
    }
    Ok(params)
}

/// Model states of every stage.
pub fn model_states(
    shape: &ModelShape,
    layout: &StageLayout,
    parallel: &Parallelism,
    options: &StateOptions,
) -> Result<Vec<StageStates>> {
    shape.validate()?;
    let optimizer_shards = if options.distributed_optimizer {
        (parallel.dp * parallel.cp) as f64
    } else {
        1.0
    };
    let prec = options.precision;
    (0..layout.stages as usize)
        .map(|stage| {
            let params =
                stage_parameters(shape, layout, stage, options.vocab)? / parallel.tp as f64;
            Ok(StageStates {
                stage,
                parameters: params,
                weights: params * prec.weight_bytes as f64,
                grads: params * prec.grad_bytes as f64,
                optimizer: params * prec.optimizer_bytes as f64 / optimizer_shards,
            })
        })
        .collect()
}
