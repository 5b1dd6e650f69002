//! The static per-stage peak: model states plus the closed-form in-flight units, by named term.
//!
//! Exact for the SPEC §5 vectors (uniform slices, flash attention); otherwise an upper bound: every
//! in-flight unit is charged as the largest unit of the sequence (the last slice for the score
//! matrix, a non-last slice for kept K/V), each chunk carries a dK/dV accumulator at its largest
//! (the last slice's prefix), and the logits of up to `n` units sit on the stage(s) that own them. The
//! ledger (`crate::ledger`) gives the exact curve of a simulated schedule.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{ActivationModel, Parallelism, PipelineKind, StateOptions, StaticConfig};
//! use seqpipe_memory::GIB;
//! use seqpipe_slicing::preset;
//! let llama = preset("llama-70b").unwrap();
//! let config = StaticConfig {
//!     activation: ActivationModel::new(llama, Parallelism::new(8, 1, 1).unwrap()).unwrap(),
//!     states: StateOptions::default(),
//!     kind: PipelineKind::SlimPipe { slices: 8, chunks: 10 },
//!     stages: 8, microbatches: 16, seq_len: 64 * 1024, offload_fraction: 0.0,
//! };
//! let peaks = config.peaks().unwrap();
//! assert_eq!(peaks[0].in_flight_units, 94); // n·v + 2(p−1)
//! assert_eq!(format!("{:.2}", peaks[0].activations / GIB), "24.60"); // SPEC §5's vector
//! assert_eq!(format!("{:.2}", peaks[0].states.total() / GIB), "18.48");
//! assert_eq!(format!("{:.2}", peaks[0].total() / GIB), "43.35"); // with the dK/dV accumulator
//! ```

use serde::{Deserialize, Serialize};

use crate::activation::{ActivationModel, LogitsPlacement};
use crate::error::{positive, MemoryError, Result};
use crate::pipeline::{PipelineKind, StageLayout};
use crate::states::{model_states, StageStates, StateOptions};

/// Units a fully offloaded stage still holds on device: the one being produced and sent out, the
/// one being reloaded and the one in backward (PipeOffload: "+2..4 for buffers in flight").
pub const OFFLOAD_BUFFER_UNITS: u64 = 3;

/// Everything the static peak needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StaticConfig {
    /// Activation model (shape, dtypes, TP×CP, recomputation, attention, logits placement).
    pub activation: ActivationModel,
    /// Model-state options.
    pub states: StateOptions,
    /// Schedule kind (gives `n` and `v`).
    pub kind: PipelineKind,
    /// Pipeline stages `p`.
    pub stages: u64,
    /// Micro-batches per iteration `m`.
    pub microbatches: u64,
    /// Sequence length `s` (one sequence per micro-batch).
    pub seq_len: u64,
    /// Fraction of offloadable in-flight units kept on host (0 = no offload).
    pub offload_fraction: f64,
}

/// Peak bytes of one stage (one GPU), by named term.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StagePeak {
    /// Stage index.
    pub stage: usize,
    /// Weights, gradients and optimizer states.
    pub states: StageStates,
    /// Units in flight at the peak.
    pub in_flight_units: u64,
    /// Of those, units on host.
    pub offloaded_units: u64,
    /// Saved activations of the units on device.
    pub activations: f64,
    /// Score matrices of the units on device.
    pub attention_scores: f64,
    /// K/V kept for later slices, of the units on device.
    pub kv_prefix: f64,
    /// dK/dV accumulators of sliced sequences in backward.
    pub dkv_accumulator: f64,
    /// Logits of the last chunk's units in flight, at most one sequence's `n` slices (last stage,
    /// or every stage when vocab-sharded).
    pub logits: f64,
}

impl StagePeak {
    /// Everything on device at the peak.
    pub fn total(&self) -> f64 {
        self.states.total() + self.activation_total()
    }

    /// Everything but model states.
    pub fn activation_total(&self) -> f64 {
        self.activations
            + self.attention_scores
            + self.kv_prefix
            + self.dkv_accumulator
            + self.logits
    }
}

impl StaticConfig {
    /// Stage layout `p × v`.
    pub fn layout(&self) -> Result<StageLayout> {
        StageLayout::new(self.stages, self.kind.chunks())
    }

    /// Tokens of one slice (uniform slicing, rounded up).
    pub fn slice_tokens(&self) -> u64 {
        self.seq_len.div_ceil(self.kind.slices())
    }

    fn check(&self) -> Result<()> {
        positive("sequence length", self.seq_len)?;
        positive("micro-batches", self.microbatches)?;
        if !(0.0..=1.0).contains(&self.offload_fraction) {
            return Err(MemoryError::OutOfRange {
                what: "offload fraction",
                value: self.offload_fraction,
                range: "[0, 1]",
            });
        }
        if self.kind.slices() > self.seq_len {
            return Err(MemoryError::BadSchedule {
                kind: self.kind.name(),
                requirement: "no more slices than tokens",
                got: format!("n = {}, s = {}", self.kind.slices(), self.seq_len),
            });
        }
        self.kind.validate(self.stages)
    }

    /// The peak of every stage.
    pub fn peaks(&self) -> Result<Vec<StagePeak>> {
        self.check()?;
        let layout = self.layout()?;
        let states = model_states(
            &self.activation.shape,
            &layout,
            &self.activation.parallel,
            &self.states,
        )?;
        states
            .into_iter()
            .map(|s| self.stage_peak(&layout, s))
            .collect()
    }

    fn stage_peak(&self, layout: &StageLayout, states: StageStates) -> Result<StagePeak> {
        let act = &self.activation;
        let layers = layout.layers_per_chunk(&act.shape)?;
        let n = self.kind.slices();
        let x = self.slice_tokens();
        let in_flight =
            self.kind
                .in_flight_units(self.stages, states.stage as u64, self.microbatches)?;
        let offloadable = in_flight.saturating_sub(OFFLOAD_BUFFER_UNITS);
        let offloaded = (self.offload_fraction * offloadable as f64).floor() as u64;
        let on_device = (in_flight - offloaded) as f64;
        // The largest unit of each named term over the slice positions: the score matrix grows
        // with the prefix (last slice), kept K/V exist for every slice but the last (first slice).
        let units = [
            act.unit(x, (n - 1) * x, false, layers),
            act.unit(x, 0, n > 1, layers),
        ];
        let max = |f: fn(&crate::activation::UnitFootprint) -> f64| {
            units.iter().map(f).fold(0.0, f64::max)
        };
        let dkv = if n > 1 {
            act.dkv_accumulator_bytes_per_layer((n - 1) * x) * (layers * layout.chunks) as f64
        } else {
            0.0
        };
        let last = states.stage + 1 == self.stages as usize;
        // Logits (with the softmax kept for the loss backward) live from a last-chunk forward to its
        // backward: one unit unsliced, up to all `n` slices of a sequence when sliced.
        let last_in_flight =
            self.kind
                .in_flight_units(self.stages, self.stages - 1, self.microbatches)?;
        let logits = if last || act.logits == LogitsPlacement::VocabSharded {
            act.logits_bytes(x, self.stages) * last_in_flight.min(n) as f64
        } else {
            0.0
        };
        Ok(StagePeak {
            stage: states.stage,
            states,
            in_flight_units: in_flight,
            offloaded_units: offloaded,
            activations: on_device * max(|u| u.activations),
            attention_scores: on_device * max(|u| u.attention_scores),
            kv_prefix: on_device * max(|u| u.kv_prefix),
            dkv_accumulator: dkv,
            logits,
        })
    }
}

/// Bytes in a GiB.
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
