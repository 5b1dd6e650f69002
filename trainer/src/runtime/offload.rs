//! PipeOffload at run time (SPEC §5.1): `parallel.offload` / `--offload` asks the `memory`
//! crate's planner which units go to host memory and where their transfers go, and the plan
//! becomes `OFFLOAD`/`RELOAD` actions in the lowered schedule, which the executor runs as
//! written. Nothing here decides by itself: it only connects the configuration to the planner.
//!
//! The planner works on a simulation of the schedule with unit costs (forward 1, backward 2),
//! choosing the longest-lived units first and skipping those too short-lived to save memory;
//! an `OFFLOAD` follows its unit's forward, a `RELOAD` precedes the first action that starts one
//! backward-duration before the unit's backward. The planner takes the host link as unlimited
//! (transfers take no planned time); the executor's link overlaps them with compute, and
//! `memory::simulate_with_host_link` times them at a finite bandwidth.

use std::fmt;
use std::str::FromStr;

use seqpipe_memory::{
    lives_from_spans, plan_offload, spans_from_simulation, with_offload_actions, ActivationModel,
    Dtype, OffloadKnob, Parallelism, UnitSizer,
};
use seqpipe_schedule::{simulate, Lowered, P2p, UnitCosts};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::runtime::Partition;

/// How much of each stage's activations to offload to host memory.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "OffloadText", into = "OffloadText")]
pub enum Offload {
    /// Keep everything on the device.
    #[default]
    None,
    /// Every unit whose offload saves memory (the planner skips the rest).
    Auto,
    /// This fraction of each stage's units, longest-lived first (rounded down).
    Fraction(f64),
    /// Every unit of model chunks `0..k` (`chunks:k`), the earliest and longest-lived: PipeOffload's
    /// "offload chunk 0" is `chunks:1`.
    Chunks(u32),
}

impl Offload {
    /// The planner's knob, or `None` when nothing is offloaded.
    fn knob(self) -> Option<OffloadKnob> {
        match self {
            Offload::None => None,
            Offload::Auto => Some(OffloadKnob::Fraction(1.0)),
            Offload::Fraction(f) => Some(OffloadKnob::Fraction(f)),
            Offload::Chunks(k) => Some(OffloadKnob::ModelChunks(k)),
        }
    }
}

impl FromStr for Offload {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "none" => Ok(Offload::None),
            "auto" => Ok(Offload::Auto),
            other => {
                let chunks = other.strip_prefix("chunks:").map(str::parse::<u32>);
                match (chunks, other.parse::<f64>()) {
                    (Some(Ok(k)), _) => Ok(Offload::Chunks(k)),
                    (None, Ok(f)) if (0.0..=1.0).contains(&f) => Ok(Offload::Fraction(f)),
                    _ => Err(Error::Config(format!(
                        "offload = {other:?}: use \"none\", \"auto\", a fraction of each \
                         stage's units in [0, 1], or chunks:K (every unit of model chunks 0..K)"
                    ))),
                }
            }
        }
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offload::None => write!(f, "none"),
            Offload::Auto => write!(f, "auto"),
            Offload::Fraction(x) => write!(f, "{x}"),
            Offload::Chunks(k) => write!(f, "chunks:{k}"),
        }
    }
}

/// The TOML/JSON form: `"none"`, `"auto"`, or a number (or its text).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum OffloadText {
    Number(f64),
    Text(String),
}

impl TryFrom<OffloadText> for Offload {
    type Error = Error;

    fn try_from(t: OffloadText) -> Result<Self> {
        match t {
            OffloadText::Number(f) => f.to_string().parse(),
            OffloadText::Text(s) => s.parse(),
        }
    }
}

impl From<Offload> for OffloadText {
    fn from(o: Offload) -> Self {
        match o {
            Offload::Fraction(f) => OffloadText::Number(f),
            other => OffloadText::Text(other.to_string()),
        }
    }
}

/// `schedule` with the planner's `OFFLOAD`/`RELOAD` actions for `cfg.parallel.offload`
/// (unchanged for `none`).
pub fn with_planned_offload(
    schedule: Lowered,
    cfg: &TrainConfig,
    partition: &Partition,
    slices: &[std::ops::Range<usize>],
) -> Result<Lowered> {
    let Some(knob) = cfg.parallel.offload.knob() else {
        return Ok(schedule);
    };
    let costs = UnitCosts::new(1.0, 2.0);
    let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free())?;
    let lives = lives_from_spans(&spans_from_simulation(&sim))?;
    let sizer = unit_sizer(cfg, partition, slices)?;
    let plan = plan_offload(&lives, &sizer, knob, f64::INFINITY)?;
    Ok(Lowered::check(with_offload_actions(&sim, &plan))?)
}

/// Sizes of the units the planner weighs. With an unlimited host link, sizes only label the
/// plan (they set no transfer time), so f64 runs are sized as f32 and an uneven partition by
/// its largest virtual stage.
fn unit_sizer(
    cfg: &TrainConfig,
    partition: &Partition,
    slices: &[std::ops::Range<usize>],
) -> Result<UnitSizer> {
    let mut activation = ActivationModel::new(cfg.model.shape(), Parallelism::new(1, 1, 1)?)?;
    activation.dtype = match cfg.precision.dtype() {
        candle_core::DType::BF16 => Dtype::Bf16,
        _ => Dtype::F32,
    };
    let b = cfg.data.batch as u64;
    Ok(UnitSizer {
        per_microbatch: None,
        activation,
        layers_per_chunk: partition.ranges.iter().map(|r| r.len()).max().unwrap_or(0) as u64,
        slices: slices
            .iter()
            .map(|r| (r.start as u64 * b, r.len() as u64 * b))
            .collect(),
        stages: cfg.parallel.stages as usize,
        chunks: cfg.parallel.chunks,
    })
}
