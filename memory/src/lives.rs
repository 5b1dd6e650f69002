//! From compute spans of a simulated schedule to unit lifetimes and ledger events.
//!
//! A unit's saved activations live from the start of its forward to the end of its last backward
//! piece (the full backward, or `W` when the backward is split). Named side terms get their own
//! ledger entries: the logits of the last virtual stage (forward start → backward end) and the
//! dK/dV accumulator of a sliced sequence, which after the backward of slice `j > 0` holds the
//! gradients of the `start_j` prefix tokens until slice `j−1`'s backward has consumed them.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{lives_from_spans, ComputeSpan, Phase, UnitKey};
//! let unit = UnitKey { mb: 0, slice: 0, chunk: 0 };
//! let span = |phase, start, end| ComputeSpan { stage: 0, unit, phase, start, end };
//! let spans = [
//!     span(Phase::Forward, 0.0, 1.0),
//!     span(Phase::BackwardInput, 5.0, 6.0),
//!     span(Phase::BackwardWeight, 8.0, 9.0),
//! ];
//! let lives = lives_from_spans(&spans).unwrap();
//! assert_eq!(lives.len(), 1);
//! // Idle from the forward's end to the backward's start; freed when W ends.
//! assert_eq!((lives[0].lifespan(), lives[0].release), (4.0, 9.0));
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::activation::{ActivationModel, LogitsPlacement};
use crate::error::{MemoryError, Result};
use crate::ledger::{MemEvent, MemOp};

/// A (micro-batch, slice, chunk) unit on one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitKey {
    /// Micro-batch.
    pub mb: u32,
    /// Slice of its sequence.
    pub slice: u32,
    /// Model chunk on the stage.
    pub chunk: u32,
}

impl std::fmt::Display for UnitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mb{}.s{}.c{}", self.mb, self.slice, self.chunk)
    }
}

/// Which compute a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Forward.
    Forward,
    /// Full backward.
    Backward,
    /// Input-gradient half of a split backward.
    BackwardInput,
    /// Weight-gradient half of a split backward.
    BackwardWeight,
}

/// One compute action of a simulated timeline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ComputeSpan {
    /// Stage.
    pub stage: usize,
    /// Unit.
    pub unit: UnitKey,
    /// Which compute.
    pub phase: Phase,
    /// Start time.
    pub start: f64,
    /// End time.
    pub end: f64,
}

/// When one unit's activations are needed on one stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UnitLife {
    /// Stage.
    pub stage: usize,
    /// Unit.
    pub unit: UnitKey,
    /// Forward `(start, end)`.
    pub forward: (f64, f64),
    /// First backward piece (full or input-gradient) `(start, end)`.
    pub backward: (f64, f64),
    /// End of the last backward piece: the activations are dropped then.
    pub release: f64,
}

impl UnitLife {
    /// Idle time between the end of the forward and the start of the backward.
    pub fn lifespan(&self) -> f64 {
        self.backward.0 - self.forward.1
    }
}

/// Pairs forward and backward spans into one life per (stage, unit), in forward-start order.
pub fn lives_from_spans(spans: &[ComputeSpan]) -> Result<Vec<UnitLife>> {
    type Parts = (Option<(f64, f64)>, Option<(f64, f64)>, Option<f64>);
    let mut parts: BTreeMap<(usize, UnitKey), Parts> = BTreeMap::new();
    for s in spans {
        let entry = parts.entry((s.stage, s.unit)).or_default();
        match s.phase {
            Phase::Forward => entry.0 = Some((s.start, s.end)),
            Phase::Backward | Phase::BackwardInput => entry.1 = Some((s.start, s.end)),
            Phase::BackwardWeight => entry.2 = Some(s.end),
        }
        if s.phase == Phase::Backward {
            entry.2 = Some(s.end);
        }
    }
    let mut lives = Vec::with_capacity(parts.len());
    for ((stage, unit), (forward, backward, release)) in parts {
        let missing = |what: &str| MemoryError::BadEvent {
            stage,
            time: forward.map_or(0.0, |f| f.0),
            op: "allocate",
            unit: unit.to_string(),
            reason: format!("the timeline has no {what} for it"),
        };
        let forward = forward.ok_or_else(|| missing("forward"))?;
        let backward = backward.ok_or_else(|| missing("backward"))?;
        let release = release.ok_or_else(|| missing("weight-gradient backward"))?;
        lives.push(UnitLife {
            stage,
            unit,
            forward,
            backward,
            release,
        });
    }
    lives.sort_by(|a, b| {
        a.forward
            .0
            .total_cmp(&b.forward.0)
            .then(a.stage.cmp(&b.stage))
    });
    Ok(lives)
}

/// What a unit weighs: the activation model plus where slices sit and which stage holds the head.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSizer {
    /// Activation model.
    pub activation: ActivationModel,
    /// Layers of one chunk.
    pub layers_per_chunk: u64,
    /// `(start, len)` of each slice of a sequence, in order.
    pub slices: Vec<(u64, u64)>,
    /// Per micro-batch, its own `(start, len)` slices, where micro-batches differ (elastic
    /// pipelines); `slices` is then not read.
    pub per_microbatch: Option<Vec<Vec<(u64, u64)>>>,
    /// Pipeline stages `p`.
    pub stages: usize,
    /// Chunks per stage `v` (the last virtual stage is chunk `v−1` of stage `p−1`).
    pub chunks: u32,
}

impl UnitSizer {
    /// The slices of micro-batch `mb`.
    pub fn slices_of(&self, mb: u32) -> &[(u64, u64)] {
        match &self.per_microbatch {
            Some(all) => all.get(mb as usize).map_or(&[], Vec::as_slice),
            None => &self.slices,
        }
    }

    fn slice(&self, unit: &UnitKey) -> Result<(u64, u64)> {
        let slices = self.slices_of(unit.mb);
        slices
            .get(unit.slice as usize)
            .copied()
            .ok_or(MemoryError::BadSchedule {
                kind: "timeline",
                requirement: "slice indices below the number of slices in the sizer",
                got: format!(
                    "slice {} of {} (micro-batch {})",
                    unit.slice,
                    slices.len(),
                    unit.mb
                ),
            })
    }

    /// Activation bytes (all named per-unit terms) of `unit`.
    pub fn unit_bytes(&self, unit: &UnitKey) -> Result<f64> {
        let (start, len) = self.slice(unit)?;
        let later = (unit.slice as usize) + 1 < self.slices_of(unit.mb).len();
        Ok(self
            .activation
            .unit(len, start, later, self.layers_per_chunk)
            .total())
    }

    /// Logits bytes per holding stage of `unit` when it runs on `stage`: non-zero only for the
    /// last virtual stage (chunk `v−1` of stage `p−1`). Vocab-sharded logits are held by every
    /// stage (a `1/p` share each) over the same interval.
    pub fn logits_bytes(&self, stage: usize, unit: &UnitKey) -> Result<f64> {
        let (_, len) = self.slice(unit)?;
        let last_vstage = stage + 1 == self.stages && unit.chunk + 1 == self.chunks;
        Ok(if last_vstage {
            self.activation.logits_bytes(len, self.stages as u64)
        } else {
            0.0
        })
    }

    /// dK/dV accumulator bytes left after the backward of `unit`'s slice (its prefix).
    pub fn accumulator_bytes(&self, unit: &UnitKey) -> Result<f64> {
        let (start, _) = self.slice(unit)?;
        Ok(self.activation.dkv_accumulator_bytes_per_layer(start) * self.layers_per_chunk as f64)
    }
}

/// Ledger events of `lives`: activations, logits and dK/dV accumulators.
pub fn events_from_lives(lives: &[UnitLife], sizer: &UnitSizer) -> Result<Vec<MemEvent>> {
    let mut events = Vec::with_capacity(lives.len() * 2);
    let mut push = |time, stage, op, unit: String, bytes| {
        events.push(MemEvent {
            time,
            stage,
            op,
            unit,
            bytes,
        })
    };
    for life in lives {
        let (stage, u) = (life.stage, life.unit);
        let name = format!("act {u}");
        push(
            life.forward.0,
            stage,
            MemOp::Allocate,
            name.clone(),
            sizer.unit_bytes(&u)?,
        );
        push(life.release, stage, MemOp::Free, name, 0.0);
        let logits = sizer.logits_bytes(stage, &u)?;
        if logits > 0.0 {
            let name = format!("logits {u}");
            let holders = match sizer.activation.logits {
                LogitsPlacement::LastStage => stage..stage + 1,
                LogitsPlacement::VocabSharded => 0..sizer.stages,
            };
            for holder in holders {
                push(
                    life.forward.0,
                    holder,
                    MemOp::Allocate,
                    name.clone(),
                    logits,
                );
                push(life.backward.1, holder, MemOp::Free, name.clone(), 0.0);
            }
        }
        let slices = sizer.slices_of(u.mb).len();
        if slices > 1 {
            // The accumulator of (mb, chunk) passes from slice j's backward to slice j−1's.
            let acc = |slice: u32| format!("dkv mb{}.c{} after s{slice}", u.mb, u.chunk);
            if (u.slice as usize) + 1 < slices {
                push(life.backward.1, stage, MemOp::Free, acc(u.slice + 1), 0.0);
            }
            let bytes = sizer.accumulator_bytes(&u)?;
            if u.slice > 0 {
                push(life.backward.1, stage, MemOp::Allocate, acc(u.slice), bytes);
            }
        }
    }
    Ok(events)
}
