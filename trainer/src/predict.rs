//! The `memory` crate's prediction of what the runtime measures: per-stage peak saved-activation
//! bytes for the executed schedule.
//!
//! The prediction is the memory ledger over the simulated schedule, with the `memory` crate's
//! activation model for this model and precision. The runtime keeps a few tensors that the model
//! does not name, or names differently; each is added here as its own named term, so the
//! comparison is exact rather than "close":
//! - **norm statistics and log-sum-exp**: per layer and token, the two RMSNorm inverse RMS values
//!   and one attention log-sum-exp per head (`2 + heads` elements, compute precision);
//! - **head saved tensors instead of logits**: the fused, vocabulary-blocked cross-entropy never
//!   holds the `V`-wide logits; it keeps the head input, the final-norm output, its inverse RMS and
//!   one log-sum-exp per token (`2H + 2` elements) from the forward to the backward.

use candle_core::DType;
use seqpipe_memory::{
    events_from_lives, lives_from_spans, run_ledger, spans_from_simulation, ActivationModel, Dtype,
};
use seqpipe_memory::{MemEvent, MemOp, Parallelism, UnitSizer};
use seqpipe_schedule::{simulate, Action, Op, P2p, Schedule};

use crate::model::ModelConfig;
use crate::runtime::Partition;

/// What to predict for.
pub struct PredictInput<'a> {
    /// Model sizes.
    pub model: &'a ModelConfig,
    /// Parameter/activation dtype.
    pub dtype: DType,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Slice token ranges.
    pub slices: &'a [std::ops::Range<usize>],
    /// The lowered schedule that runs.
    pub schedule: &'a Schedule,
    /// Layers per virtual stage.
    pub partition: &'a Partition,
}

fn memory_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F32 => Some(Dtype::F32),
        DType::BF16 => Some(Dtype::Bf16),
        _ => None,
    }
}

/// Predicted peak saved-activation bytes per stage, or `None` when the layers are not split
/// evenly over virtual stages (the ledger's unit sizer assumes one chunk size) or the precision
/// is one the memory model does not describe (f64).
pub fn predicted_peaks(input: &PredictInput) -> anyhow::Result<Option<Vec<f64>>> {
    let chunk_layers = input.partition.ranges[0].len();
    let Some(saved_dtype) = memory_dtype(input.dtype) else {
        return Ok(None);
    };
    if input
        .partition
        .ranges
        .iter()
        .any(|r| r.len() != chunk_layers)
    {
        return Ok(None);
    }
    let m = input.model;
    // Order matters, not durations: every stage runs its program in order in both worlds.
    let cost = |a: &Action| if a.op.is_compute() { 1.0 } else { 0.0 };
    let sim = simulate(input.schedule, cost, &P2p::free())?;
    let lives = lives_from_spans(&spans_from_simulation(&sim))?;
    // Statistics and accumulators are kept in f32 for f32 and bf16 activations alike.
    let compute = Dtype::F32;
    let mut activation = ActivationModel::new(m.shape(), Parallelism::new(1, 1, 1)?)?;
    activation.dtype = saved_dtype;
    activation.accumulator_dtype = compute;
    let b = input.batch as u64;
    let sizer = UnitSizer {
        activation,
        layers_per_chunk: chunk_layers as u64,
        // A micro-batch of b sequences is b times the tokens of every per-token term.
        slices: input
            .slices
            .iter()
            .map(|r| (r.start as u64 * b, r.len() as u64 * b))
            .collect(),
        stages: input.schedule.config.stages as usize,
        chunks: input.schedule.config.chunks,
    };
    let mut events: Vec<MemEvent> = events_from_lives(&lives, &sizer)?
        .into_iter()
        .filter(|e| !e.unit.starts_with("logits"))
        .collect();
    let p = input.schedule.config.stages;
    let last_vstage = input.partition.ranges.len() - 1;
    let stats_per_token_layer = ((2 + m.heads) * compute.bytes() as usize) as f64;
    let head_per_token = ((2 * m.hidden + 2) * compute.bytes() as usize) as f64;
    for life in &lives {
        let tokens = (input.slices[life.unit.slice as usize].len() * input.batch) as f64;
        let vstage = (life.unit.chunk * p) as usize + life.stage;
        let mut extra = stats_per_token_layer * tokens * chunk_layers as f64;
        if vstage == last_vstage {
            extra += head_per_token * tokens;
        }
        let name = format!("runtime extras {}", life.unit);
        events.push(MemEvent {
            time: life.forward.0,
            stage: life.stage,
            op: MemOp::Allocate,
            unit: name.clone(),
            bytes: extra,
        });
        events.push(MemEvent {
            time: life.release,
            stage: life.stage,
            op: MemOp::Free,
            unit: name,
            bytes: 0.0,
        });
    }
    let report = run_ledger(&vec![0.0; p as usize], &events)?;
    Ok(Some(report.stages.iter().map(|s| s.peak).collect()))
}

/// Whether a schedule splits backwards into I and W (the runtime then holds the weight half's
/// inputs, not the saved record, between the two: the ledger does not model that difference).
pub fn splits_backward(schedule: &Schedule) -> bool {
    schedule.iter().any(|a| a.op == Op::BackwardWeight)
}
