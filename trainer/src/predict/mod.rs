//! The `memory` crate's prediction of what the runtime measures: per stage, the saved-activation
//! bytes and the saved plus transient bytes after every action (`runtime::worker::Held`), their
//! peaks, the peak inside actions, and the model states.
//!
//! The time axis is each stage's own program: the runtime measures what a stage holds after
//! each of its actions, and a stage's memory changes only at its own actions, so the ledger
//! runs over the action index (`seqpipe_memory::spans_in_program_order`), not a simulated clock
//! (which puts a send at the instant of the compute before it, and so could not tell a buffer
//! waiting for its send from no buffer at all). Every byte is a named tensor with its formula;
//! per token of a slice (`T = b · len` tokens in a micro-batch of `b` sequences), with `H`
//! hidden, `q = heads·d`, `kv = kv_heads·d`, `F` FFN width, `a` the activation dtype's bytes
//! (4 for f32, 2 for bf16) and statistics in f32 (4 bytes):
//!
//! **Saved** (the forward's record, K/V caches and dK/dV accumulators), from the unit's forward
//! to the end of its *first* backward piece (`B`, or `I` of a split backward: the runtime drops
//! the record and pops the slice's K/V there):
//! - the memory crate's per-token tensors of each layer (input, attention norm out, q, k, v,
//!   attention out, residual, FFN norm out, gate, up, activation, as named in
//!   `ActivationModel::tensors`): `(4H + 2q + 2kv + 3F) · a` per layer, K and V living in the
//!   runtime's KV cache; and its dK/dV accumulator of a sliced sequence (`2·kv · 4` per prefix
//!   token, from a slice's backward to the previous slice's);
//! - **norm statistics and log-sum-exp**: the two RMSNorm inverse RMS values and one attention
//!   log-sum-exp per head, `(2 + heads) · 4` per layer;
//! - **head record instead of logits** (last virtual stage): the fused, vocabulary-blocked
//!   cross-entropy never holds the `V`-wide logits; it keeps the head input and the final-norm
//!   output (`2H · a`), the norm's inverse RMS and one log-sum-exp (`2 · 4`).
//!
//! **Transient** (buffers between a compute and the action that consumes it):
//! - **activation out** `H · a`: from a forward (not on the last virtual stage) to its `SEND_F`
//!   (with one stage, to the next chunk's forward, which takes it in memory);
//! - **activation in** `H · a`: from `RECV_F` to the forward, which keeps it as its input;
//! - **gradient in** `H · a`: from `RECV_B` to the backward (`B` or `I`);
//! - **gradient out** `H · a`: from a backward (not on virtual stage 0) to its `SEND_B` (with one
//!   stage, to the previous chunk's backward);
//! - **weight-gradient inputs** of a split backward, from `I` to `W`: per layer the memory
//!   crate's `ActivationModel::weight_grad_inputs` (`(4H + 2q + 2kv + 3F) · a`: each matrix's
//!   input and output gradient), plus the head record (`2H · a + 2 · 4`) on the last virtual
//!   stage and, on virtual stage 0, the embedding's token ids (`4`, u32) and its output gradient
//!   (`H · a`).
//!
//! **Within a backward** ([`StagePeaks::working`], for a heap measurement, which sees inside
//! actions): when `B` or `I` has run every layer's input half, the stage holds its after-action
//! bytes, plus the unit's saved records until the backward returns, less its K/V (popped layer
//! by layer) and less what they share with the weight-gradient inputs (`(2H + F) · a` per layer:
//! both norm outputs and the SwiGLU product; the head record), plus for `B` the weight-gradient
//! inputs; and while a layer's attention backward runs, its five f32 score tiles
//! (`5 · b · heads · min(len, 128) · min(prefix + len, 128) · 4`).
//!
//! **Offload** (`OFFLOAD`/`RELOAD` in the schedule): a unit's saved records move to the host
//! tier when the executor joins its offload's copy — at the end of the first compute after the
//! `OFFLOAD` (the copy overlaps it), or at the first `RELOAD` if that comes first — and back
//! to the device at its `RELOAD` — the memory crate's activation unit less its
//! K and V (`2kv · a` per token and layer, kept in the device's cache for later slices), and
//! the statistics and head record. [`StagePrediction::host_after_action`] is the host tier
//! (`Held::host`). The compute an offload's copy overlaps runs with the records still on the
//! device (they are freed when it ends), which [`StagePrediction::held_in_action`] and so the
//! working peak count. The host tier's bytes at any instant depend on when copies land:
//! [`StagePeaks::host`] bounds them, each unit counted from its `OFFLOAD` to its reload's join;
//! the joined figures above are the least.
//!
//! **Recomputation** (`RECOMPUTE`, before a unit's backward): from its forward to that action
//! a recomputed unit lacks what its stage's granularity drops — selective: both norm outputs
//! and the SwiGLU product, `(2H + F) · a` per token and layer; full: all but the input (and,
//! when later slices read them, the K/V in the cache) of its first `N` layers, and their
//! statistics; from the action on it holds its whole record again.
//!
//! **Model states** ([`stage_states`]): parameters, f32 gradients, f32 AdamW moments and, for
//! bf16, f32 master weights, per stage.

mod events;
mod setup;

use std::collections::HashMap;

use candle_core::DType;
use seqpipe_memory::{
    lives_from_spans, model_states, run_ledger, spans_in_program_order, unit_key, LogitsPlacement,
    MemEvent, Parallelism, Precision, StageLayout, StateOptions, UnitKey,
};
use seqpipe_schedule::{Op, Schedule, Unit};

use crate::config::TrainConfig;
use crate::error::Result;
use crate::model::ModelConfig;
use crate::runtime::recompute::Recompute;
use crate::runtime::worker::Granularity;
use crate::runtime::Partition;
use events::{
    after_each_action, held_in_actions, host_bound, memory_op_events, recompute_events,
    saved_events, transient_events,
};
use setup::Setup;

/// What to predict for.
#[derive(Clone, Copy)]
pub struct PredictInput<'a> {
    /// Model sizes.
    pub model: &'a ModelConfig,
    /// Parameter/activation dtype.
    pub dtype: DType,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Slice token ranges.
    pub slices: &'a [std::ops::Range<usize>],
    /// Per micro-batch, its own slices (elastic pipelines; `slices` is then not read).
    pub ragged: Option<&'a [Vec<std::ops::Range<usize>>]>,
    /// The lowered schedule that runs.
    pub schedule: &'a Schedule,
    /// Layers per virtual stage.
    pub partition: &'a Partition,
    /// What the units the schedule recomputes drop after their forward.
    pub recompute: &'a Recompute,
}

impl<'a> PredictInput<'a> {
    /// The slices of micro-batch `mb`.
    pub fn slices_of(&self, mb: usize) -> &'a [std::ops::Range<usize>] {
        match self.ragged {
            Some(all) => all.get(mb).map_or(&[], Vec::as_slice),
            None => self.slices,
        }
    }

    /// The input for a training configuration's run of `schedule` over `partition`, its
    /// sequences cut into `slices`.
    pub fn of(
        cfg: &'a TrainConfig,
        schedule: &'a Schedule,
        partition: &'a Partition,
        slices: &'a [std::ops::Range<usize>],
    ) -> Self {
        PredictInput {
            ragged: None,
            model: &cfg.model,
            dtype: cfg.precision.dtype(),
            batch: cfg.data.batch,
            slices,
            schedule,
            partition,
            recompute: &cfg.parallel.recompute,
        }
    }
}

/// Predicted peaks of one stage, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StagePeaks {
    /// Largest saved bytes after any action (the runtime's `Held::saved`).
    pub saved: f64,
    /// Largest saved plus transient bytes after any action (`Held::saved + Held::transient`).
    pub total: f64,
    /// Largest activation bytes *inside* an action, which the after-action bookkeeping cannot
    /// see: a backward's peak (the module header's "within a backward"). What a heap
    /// measurement of a step should see on top of the model states and the process's baseline,
    /// up to one layer's smaller compute temporaries; a compute that overlaps an offload's copy
    /// runs with the offloaded records still on the device.
    pub working: f64,
    /// Most host-tier bytes at any moment, whatever the link's speed (a copy may land as soon
    /// as its `OFFLOAD` is issued and lives until its reload is joined): what a heap
    /// measurement of the host tier should see at most.
    pub host: f64,
}

/// The prediction for one stage: its peaks and what it holds after each action of its program.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StagePrediction {
    /// Peaks over the program.
    pub peaks: StagePeaks,
    /// `(saved, saved + transient)` device bytes after each action, in program order.
    pub after_action: Vec<(f64, f64)>,
    /// Offloaded bytes in host memory after each action (the runtime's `Held::host`).
    pub host_after_action: Vec<f64>,
    /// The largest device bytes during each action (after it, or inside a backward), in
    /// program order; their maximum is [`StagePeaks::working`].
    pub held_in_action: Vec<f64>,
}

/// Predicted saved and total bytes of every stage, peaks and after each action, or `None` when
/// the layers are not split evenly over virtual stages or the precision is f64.
pub fn predict(input: &PredictInput) -> Result<Option<Vec<StagePrediction>>> {
    let Some(setup) = Setup::new(input)? else {
        return Ok(None);
    };
    let lives = lives_from_spans(&spans_in_program_order(input.schedule))?;
    let mut saved = saved_events(&setup, &lives)?;
    saved.extend(memory_op_events(&setup)?);
    recompute_events(&setup, &lives, &mut saved)?;
    let transient = transient_events(&setup)?;
    let floor = vec![0.0; setup.stages];
    let saved_ledger = run_ledger(&floor, &saved)?;
    let all: Vec<MemEvent> = saved.into_iter().chain(transient).collect();
    let total_ledger = run_ledger(&floor, &all)?;
    let mut stages = Vec::with_capacity(setup.stages);
    for ((s, t), program) in saved_ledger
        .stages
        .iter()
        .zip(&total_ledger.stages)
        .zip(&input.schedule.actions)
    {
        let saved = after_each_action(s, program.len());
        let total = after_each_action(t, program.len());
        let total_device: Vec<f64> = total.iter().map(|&(device, _)| device).collect();
        let stage = stages.len();
        let held = held_in_actions(&setup, stage, program, &total_device)?;
        // Releases sort before acquisitions at an action's index, so the ledger peaks at the end
        // of an action, which `held` has: `t.peak` adds only a curve before the first action.
        let working = held.iter().copied().fold(t.peak, f64::max);
        stages.push(StagePrediction {
            peaks: StagePeaks {
                saved: s.peak,
                total: t.peak,
                working,
                host: host_bound(&setup, stage, program)?,
            },
            after_action: saved
                .iter()
                .zip(&total_device)
                .map(|(s, &t)| (s.0, t))
                .collect(),
            host_after_action: saved.iter().map(|&(_, host)| host).collect(),
            held_in_action: held,
        });
    }
    Ok(Some(stages))
}

/// Bytes an `OFFLOAD` of `unit` on `stage` moves to the host (and its `RELOAD` back): its
/// forward record less the K/V kept in the device's cache and what recomputation dropped, with
/// its statistics and head record. `None` where [`predict`] makes no prediction.
pub fn moved_bytes(input: &PredictInput, stage: usize, unit: &UnitKey) -> Result<Option<f64>> {
    let Some(setup) = Setup::new(input)? else {
        return Ok(None);
    };
    let (records, extra) = setup.moved(stage, unit, setup.recomputes(stage, unit))?;
    Ok(Some(records + extra))
}

/// Bytes each layer recomputed whole removes from each unit's record on each stage (the
/// recomputation program's prices, [`seqpipe_memory::schedule_program`]): the layer's tensors
/// but its input, its statistics and, on a sequence's last slice, its K/V. `None` where
/// [`predict`] makes no prediction.
pub fn recompute_savings(input: &PredictInput) -> Result<Option<Vec<HashMap<Unit, f64>>>> {
    let Some(setup) = Setup::new(input)? else {
        return Ok(None);
    };
    let one_layer = Granularity::Full { layers: 1 };
    let mut savings = vec![HashMap::new(); setup.stages];
    for (stage, program) in input.schedule.actions.iter().enumerate() {
        for a in program.iter().filter(|a| a.op == Op::Forward) {
            let saved = setup.dropped(one_layer, &unit_key(a))?.total();
            savings[stage].insert(a.unit(), saved);
        }
    }
    Ok(Some(savings))
}

/// Model-state bytes of every stage as the runtime keeps them (the `memory` crate's per-stage
/// states): parameters in the run's dtype, f32 gradients and two f32 AdamW moments, plus an f32
/// master copy of bf16 parameters: `16` bytes per parameter in f32 (`4 + 4 + 8`), `18` in bf16
/// (`2 + 4 + 12`). A stage's parameters are its layers (`2H·q + 2H·kv + 3H·F + 2H` each,
/// plus their biases where the model has them), the embedding on the first stage and the LM head
/// and final norm on the last. `None` for f64.
pub fn stage_states(
    model: &ModelConfig,
    dtype: DType,
    stages: u32,
    chunks: u32,
) -> Result<Option<Vec<f64>>> {
    let precision = match dtype {
        DType::F32 => Precision::FP32,
        DType::BF16 => Precision::MIXED_BF16,
        _ => return Ok(None),
    };
    let options = StateOptions {
        precision,
        // Every stage keeps the whole optimizer state of its own parameters.
        distributed_optimizer: false,
        vocab: LogitsPlacement::LastStage,
    };
    let layout = StageLayout::new(stages.into(), chunks.into())?;
    let states = model_states(
        &model.shape(),
        &layout,
        &Parallelism::new(1, 1, 1)?,
        &options,
    )?;
    // The planners' shape has no biases: each stage adds its layers' at the same bytes per
    // parameter as the rest of its states.
    let biases = (model.layers / stages as usize) as f64 * model.bias_parameters_per_layer();
    let per_parameter =
        (precision.weight_bytes + precision.grad_bytes + precision.optimizer_bytes) as f64;
    Ok(Some(
        states
            .iter()
            .map(|s| s.total() + biases * per_parameter)
            .collect(),
    ))
}

/// Predicted peak saved-activation bytes per stage (see [`predict`]).
pub fn predicted_peaks(input: &PredictInput) -> Result<Option<Vec<f64>>> {
    Ok(predict(input)?.map(|p| p.iter().map(|s| s.peaks.saved).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::param_specs;
    use crate::runtime::rank::holding;
    use crate::runtime::Partition;

    /// The states the runtime holds: every parameter of the stage (from the same specs the
    /// stages are built from) at 16 bytes in f32.
    fn held(model: &ModelConfig, stages: usize) -> Vec<f64> {
        let partition = Partition::even(model.layers, stages).unwrap();
        (0..stages)
            .map(|s| {
                let specs = param_specs(model, &holding(&partition, (s, stages), 1, None));
                let count: usize = specs
                    .iter()
                    .map(|p| p.shape.iter().product::<usize>())
                    .sum();
                16.0 * count as f64
            })
            .collect()
    }

    #[test]
    fn model_states_count_the_biases_the_stages_hold() {
        for (attention_bias, mlp_bias) in [(false, false), (true, false), (true, true)] {
            let model = ModelConfig {
                attention_bias,
                mlp_bias,
                ..ModelConfig::tiny()
            };
            let predicted = stage_states(&model, DType::F32, 4, 1).unwrap().unwrap();
            assert_eq!(predicted, held(&model, 4), "{attention_bias} {mlp_bias}");
        }
    }
}
