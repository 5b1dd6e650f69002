//! Stage layout and the closed forms of SPEC §3/§5: units in flight per stage, peak in micro-batch
//! units and bubble ratio per schedule kind.
//!
//! A *unit* is one (micro-batch, slice, chunk): `s/n` tokens through the `L/(p·v)` layers of one
//! chunk. `A` is one whole micro-batch through all of a stage's `L/p` layers, so a unit is
//! `A/(n·v)`. The in-flight counts are the warm-up forwards of SPEC §3 plus the one forward of the
//! steady phase, capped by the units a stage has at all.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{PipelineKind, StageLayout};
//! use seqpipe_slicing::preset;
//! let kind = PipelineKind::Seq1F1B { slices: 4 };
//! // p = 4, m = 8: stage 0 holds p − r − 1 + n = 7 slices, 1.75 micro-batches' activations.
//! assert_eq!(kind.in_flight_units(4, 0, 8).unwrap(), 7);
//! assert_eq!(kind.peak_microbatches(4, 0, 8).unwrap(), 1.75);
//! assert_eq!(kind.bubble_ratio(4, 8).unwrap(), 3.0 / 35.0); // (p−1)/(m·n+p−1)
//! let layout = StageLayout::new(4, 2).unwrap(); // 4 stages × 2 chunks
//! assert_eq!(layout.layers_per_chunk(&preset("llama-7b").unwrap()).unwrap(), 4);
//! ```

use seqpipe_slicing::ModelShape;
use serde::{Deserialize, Serialize};

use crate::error::{positive, MemoryError, Result};

/// How a model's layers are spread: `p` stages, each holding `v` chunks (virtual stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLayout {
    /// Pipeline stages `p`.
    pub stages: u64,
    /// Chunks per stage `v`.
    pub chunks: u64,
}

impl StageLayout {
    /// A layout of `stages × chunks`, both at least 1.
    pub fn new(stages: u64, chunks: u64) -> Result<Self> {
        Ok(StageLayout {
            stages: positive("pipeline stages", stages)?,
            chunks: positive("chunks per stage", chunks)?,
        })
    }

    /// Layers of one chunk, `L/(p·v)`; an error unless `p·v` divides `L`.
    pub fn layers_per_chunk(&self, shape: &ModelShape) -> Result<u64> {
        let pieces = self.stages * self.chunks;
        if shape.layers % pieces != 0 {
            let example = (1..=pieces.min(shape.layers))
                .rev()
                .find(|d| shape.layers % d == 0)
                .unwrap_or(1);
            return Err(MemoryError::NotDivisible {
                what: "layers over stages × chunks",
                value: shape.layers,
                divisor: pieces,
                divisor_name: "stages × chunks",
                example,
            });
        }
        Ok(shape.layers / pieces)
    }

    /// Layers of one stage, `L/p` (with `p·v` dividing `L`).
    pub fn layers_per_stage(&self, shape: &ModelShape) -> Result<u64> {
        Ok(self.layers_per_chunk(shape)? * self.chunks)
    }
}

/// Schedule kinds whose memory the closed forms describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineKind {
    /// All forwards, then all backwards.
    GPipe,
    /// One forward, one backward.
    OneF1B,
    /// Zero-bubble H1: 1F1B with W split off; 1F1B's peak (`p` units), reached on every stage.
    ZbH1,
    /// Megatron interleaved 1F1B with `chunks` virtual stages per device.
    Interleaved {
        /// Chunks per stage `v`.
        chunks: u64,
    },
    /// Seq1F1B: 1F1B over `slices` slices per sequence.
    Seq1F1B {
        /// Slices per sequence `n`.
        slices: u64,
    },
    /// SlimPipe: interleaved, sliced, `n·v + 2(p−1−r)` units in flight.
    SlimPipe {
        /// Slices per sequence `n`.
        slices: u64,
        /// Chunks per stage `v`.
        chunks: u64,
    },
    /// PipeOffload's group-interleaved schedule with groups of `group` micro-batches.
    Gis {
        /// Chunks per stage `v`.
        chunks: u64,
        /// Micro-batches per group `g`.
        group: u64,
    },
}

impl PipelineKind {
    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            PipelineKind::GPipe => "gpipe",
            PipelineKind::OneF1B => "1f1b",
            PipelineKind::ZbH1 => "zb-h1",
            PipelineKind::Interleaved { .. } => "interleaved",
            PipelineKind::Seq1F1B { .. } => "seq1f1b",
            PipelineKind::SlimPipe { .. } => "slimpipe",
            PipelineKind::Gis { .. } => "gis",
        }
    }

    /// Slices per sequence `n` (1 for unsliced schedules).
    pub fn slices(&self) -> u64 {
        match *self {
            PipelineKind::Seq1F1B { slices } | PipelineKind::SlimPipe { slices, .. } => slices,
            _ => 1,
        }
    }

    /// Chunks per stage `v` (1 for non-interleaved schedules).
    pub fn chunks(&self) -> u64 {
        match *self {
            PipelineKind::Interleaved { chunks }
            | PipelineKind::SlimPipe { chunks, .. }
            | PipelineKind::Gis { chunks, .. } => chunks,
            _ => 1,
        }
    }

    /// Checks the kind's parameters against `p` stages.
    pub fn validate(&self, stages: u64) -> Result<()> {
        positive("pipeline stages", stages)?;
        positive("slices per sequence", self.slices())?;
        positive("chunks per stage", self.chunks())?;
        if let PipelineKind::Gis { group, .. } = *self {
            positive("micro-batches per group", group)?;
        }
        // The interleaved order cycles over groups of at least `p` slices (SPEC §3); with one
        // chunk there is nothing to interleave, and the generator takes any `n`.
        if let PipelineKind::SlimPipe { slices, chunks } = *self {
            if chunks > 1 && slices < stages {
                return Err(MemoryError::BadSchedule {
                    kind: "slimpipe",
                    requirement: "at least as many slices as stages (n ≥ p) when v > 1",
                    got: format!("n = {slices}, p = {stages}, v = {chunks}"),
                });
            }
        }
        Ok(())
    }

    /// Units in flight at the peak of stage `stage` of `stages`, with `microbatches` per iteration.
    pub fn in_flight_units(&self, stages: u64, stage: u64, microbatches: u64) -> Result<u64> {
        self.validate(stages)?;
        positive("micro-batches", microbatches)?;
        if stage >= stages {
            return Err(MemoryError::NoSuchStage {
                stage: stage as usize,
                stages: stages as usize,
            });
        }
        let (p, r, m) = (stages, stage, microbatches);
        let (n, v) = (self.slices(), self.chunks());
        let units = match *self {
            PipelineKind::GPipe => m,
            PipelineKind::OneF1B => p - r,
            // W runs late: every stage, not only the first, keeps p units (ZB-H1's `p·M_B` bound).
            PipelineKind::ZbH1 => p,
            PipelineKind::Seq1F1B { .. } => p - r - 1 + n,
            PipelineKind::Interleaved { .. } => (v - 1) * p + 2 * (p - r - 1) + 1,
            PipelineKind::SlimPipe { .. } => n * v + 2 * (p - 1 - r),
            PipelineKind::Gis { group, .. } => p - r + (v - 1) * group,
        };
        Ok(units.min(m * n * v))
    }

    /// Peak activations of stage `stage` in units of `A` (one micro-batch through the stage's
    /// layers): `in_flight_units / (n·v)`.
    pub fn peak_microbatches(&self, stages: u64, stage: u64, microbatches: u64) -> Result<f64> {
        let units = self.in_flight_units(stages, stage, microbatches)?;
        Ok(units as f64 / (self.slices() * self.chunks()) as f64)
    }

    /// Bubble ratio (bubble ÷ total) with equal-cost units and `B = 2F` (SPEC §3), equal to the
    /// simulation of the generated schedule (`tests/one_truth.rs`). GIS has none: PipeOffload
    /// prints no bubble, and interleaved's formula, once adopted, was 7–48 % off its simulation,
    /// so asking is an error that says to simulate the schedule.
    pub fn bubble_ratio(&self, stages: u64, microbatches: u64) -> Result<f64> {
        self.validate(stages)?;
        positive("micro-batches", microbatches)?;
        if let PipelineKind::Gis { .. } = self {
            return Err(MemoryError::BadSchedule {
                kind: "gis",
                requirement: "a simulation for its bubble (it has no closed form)",
                got: "a closed-form bubble request".into(),
            });
        }
        let (p, m) = (stages as f64, microbatches as f64);
        let (n, v) = (self.slices() as f64, self.chunks() as f64);
        let work = match self {
            PipelineKind::GPipe | PipelineKind::OneF1B | PipelineKind::ZbH1 => m,
            PipelineKind::Seq1F1B { .. } => m * n,
            PipelineKind::Interleaved { .. } | PipelineKind::Gis { .. } => v * m, // GIS: refused above
            PipelineKind::SlimPipe { .. } => n * v * m,
        };
        Ok(match self {
            // With F = I = W, W fills 1F1B's bubbles but F + I − W = one unit per stage remains:
            // bubble time p − 1 (a third of 1F1B's 3(p − 1), SPEC's "B/3" in time) over 3m units
            // of work; with m < p the warm-up is short of micro-batches by p − m more.
            PipelineKind::ZbH1 => {
                let idle = (p - 1.0) + (p - m).max(0.0);
                idle / (3.0 * m + idle)
            }
            _ => (p - 1.0) / (work + p - 1.0),
        })
    }
}

impl std::fmt::Display for PipelineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            PipelineKind::Interleaved { chunks } => write!(f, "interleaved v={chunks}"),
            PipelineKind::Seq1F1B { slices } => write!(f, "seq1f1b n={slices}"),
            PipelineKind::SlimPipe { slices, chunks } => {
                write!(f, "slimpipe n={slices} v={chunks}")
            }
            PipelineKind::Gis { chunks, group } => write!(f, "gis v={chunks} g={group}"),
            _ => f.write_str(self.name()),
        }
    }
}
