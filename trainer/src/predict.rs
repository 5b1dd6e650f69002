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
//! (`Held::host`).
//!
//! **Recomputation** (`RECOMPUTE`, before a unit's backward): from its forward to that action
//! a recomputed unit lacks what its stage's granularity drops — selective: both norm outputs
//! and the SwiGLU product, `(2H + F) · a` per token and layer; full: all but the input (and,
//! when later slices read them, the K/V in the cache) of its first `N` layers, and their
//! statistics; from the action on it holds its whole record again.
//!
//! **Model states** ([`stage_states`]): parameters, f32 gradients, f32 AdamW moments and, for
//! bf16, f32 master weights, per stage.

use crate::error::{fail, Error, Result};
use candle_core::DType;
use seqpipe_kernels::AttentionOptions;
use seqpipe_memory::{
    events_from_lives, lives_from_spans, model_states, run_ledger, spans_in_program_order,
    unit_key, ActivationModel, Dtype, LogitsPlacement, MemEvent, MemOp, Parallelism, Precision,
    StageLayout, StageMemory, StageStates, StateOptions, UnitKey, UnitLife, UnitSizer,
};
use seqpipe_schedule::{Action, Op, Schedule};

use crate::config::TrainConfig;
use crate::model::ModelConfig;
use crate::runtime::recompute::{fewest_layers, Recompute};
use crate::runtime::record::computes;
use crate::runtime::worker::Granularity;
use crate::runtime::Partition;

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
    /// The lowered schedule that runs.
    pub schedule: &'a Schedule,
    /// Layers per virtual stage.
    pub partition: &'a Partition,
    /// What the units the schedule recomputes drop after their forward.
    pub recompute: &'a Recompute,
}

impl<'a> PredictInput<'a> {
    /// The input for a training configuration's run of `schedule` over `partition`, its
    /// sequences cut into `slices`.
    pub fn of(
        cfg: &'a TrainConfig,
        schedule: &'a Schedule,
        partition: &'a Partition,
        slices: &'a [std::ops::Range<usize>],
    ) -> Self {
        PredictInput {
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
    /// up to one layer's smaller compute temporaries.
    pub working: f64,
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
}

/// Statistics, accumulators and token ids are 4-byte elements (f32 or u32) in f32 and bf16 runs.
const F32: f64 = 4.0;

/// Bytes per token of the runtime's named terms (see the module header).
#[derive(Debug, Clone, Copy)]
struct PerToken {
    /// One hidden row `H · a`: an activation or gradient between virtual stages.
    row: f64,
    /// Norm statistics and log-sum-exp of one layer: `(2 + heads) · 4`.
    stats_per_layer: f64,
    /// Head record: `2H · a + 2 · 4`.
    head: f64,
    /// Weight-gradient inputs of one layer: `(4H + 2q + 2kv + 3F) · a`.
    weight_inputs_per_layer: f64,
    /// The embedding's weight-gradient inputs: token id `4` plus its output gradient `H · a`.
    embed_inputs: f64,
    /// A layer's K and V in the cache: `2kv · a`.
    kv_per_layer: f64,
    /// Tensors of one layer that are both in the saved record and weight-gradient inputs (the
    /// attention norm output, the FFN norm output, the SwiGLU product): `(2H + F) · a`.
    shared_per_layer: f64,
}

/// What recomputation drops from a unit's forward record until its `RECOMPUTE`.
#[derive(Debug, Clone, Copy)]
struct Dropped {
    /// Layer tensors other than K and V.
    records: f64,
    /// K and V not kept in the cache (full recomputation of a sequence's last slice).
    kv: f64,
    /// Norm statistics and log-sum-exps.
    stats: f64,
}

/// Everything the events need, derived once from the input.
struct Setup<'a> {
    input: &'a PredictInput<'a>,
    sizer: UnitSizer,
    per_token: PerToken,
    layers: f64,
    stages: usize,
    last_vstage: usize,
    /// What each stage's recomputed units drop.
    granularity: Vec<Option<Granularity>>,
}

fn memory_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F32 => Some(Dtype::F32),
        DType::BF16 => Some(Dtype::Bf16),
        _ => None,
    }
}

impl<'a> Setup<'a> {
    /// `None` when the layers are not split evenly over virtual stages (the unit sizer assumes
    /// one chunk size) or the precision is one the memory model does not describe (f64).
    fn new(input: &'a PredictInput<'a>) -> Result<Option<Self>> {
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
        let mut activation = ActivationModel::new(m.shape(), Parallelism::new(1, 1, 1)?)?;
        activation.dtype = saved_dtype;
        // The dK/dV accumulator is kept in f32 for f32 and bf16 activations alike.
        activation.accumulator_dtype = Dtype::F32;
        let b = input.batch as u64;
        let a = saved_dtype.bytes() as f64;
        let row = m.hidden as f64 * a;
        let per_token = PerToken {
            row,
            stats_per_layer: (2 + m.heads) as f64 * F32,
            head: 2.0 * row + 2.0 * F32,
            weight_inputs_per_layer: activation.weight_grad_input_bytes_per_token_layer(),
            embed_inputs: F32 + row,
            kv_per_layer: 2.0 * (m.kv_heads * m.head_dim()) as f64 * a,
            shared_per_layer: (2 * m.hidden + m.ffn_hidden) as f64 * a,
        };
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
        let stages = input.schedule.config.stages as usize;
        let chunks = input.schedule.config.chunks as usize;
        let granularity = (0..stages)
            .map(|s| {
                let fewest = fewest_layers(input.partition, s, stages, chunks);
                input.recompute.granularity(s, fewest)
            })
            .collect::<Result<_>>()?;
        Ok(Some(Setup {
            input,
            sizer,
            per_token,
            layers: chunk_layers as f64,
            stages,
            last_vstage: input.partition.ranges.len() - 1,
            granularity,
        }))
    }

    /// The token range of `unit`'s slice in its sequence.
    fn slice(&self, unit: &UnitKey) -> Result<&std::ops::Range<usize>> {
        self.input
            .slices
            .get(unit.slice as usize)
            .ok_or_else(|| Error::Runtime(format!("slice {} is not in the plan", unit.slice)))
    }

    /// Tokens of `unit`'s slice over the micro-batch.
    fn tokens(&self, unit: &UnitKey) -> Result<f64> {
        Ok((self.slice(unit)?.len() * self.input.batch) as f64)
    }

    /// Bytes a backward of `unit` keeps for its weight half: every layer's matrix inputs and
    /// output gradients, the head record on the last virtual stage, the token ids and the
    /// embedding's output gradient on virtual stage 0.
    fn weight_inputs(&self, stage: usize, unit: &UnitKey) -> Result<f64> {
        let (pt, tokens) = (self.per_token, self.tokens(unit)?);
        let k = self.vstage(stage, unit);
        let mut bytes = pt.weight_inputs_per_layer * self.layers * tokens;
        if k == self.last_vstage {
            bytes += pt.head * tokens;
        }
        if k == 0 {
            bytes += pt.embed_inputs * tokens;
        }
        Ok(bytes)
    }

    /// The f32 score tiles the blockwise attention backward of one layer holds at once for
    /// `unit`: scores `S`, probabilities `P`, `dP`, `dP − δ` and `dS`, each `[b, heads,
    /// min(len, block), min(prefix + len, block)]` (one query block against one key block, the
    /// runtime's `AttentionOptions::causal` block). Computed in f32 whatever the activations'
    /// dtype; the largest compute temporaries of a backward.
    fn attention_backward_tiles(&self, unit: &UnitKey) -> Result<f64> {
        const TILES: f64 = 5.0;
        let range = self.slice(unit)?;
        let block = AttentionOptions::causal(self.input.model.head_dim()).block_size;
        let queries = range.len().min(block);
        let keys = range.end.min(block);
        let heads = self.input.model.heads;
        Ok(TILES * (self.input.batch * heads * queries * keys) as f64 * F32)
    }

    /// Bytes of `unit`'s saved records still referenced when its backward has run every
    /// layer's input half, beyond its weight-gradient inputs: the records live until the
    /// backward returns, but its K and V have left the cache layer by layer, and the tensors
    /// the records share with the weight-gradient inputs are counted there (the attention norm
    /// output, the FFN norm output, the SwiGLU product, the head record):
    /// `unit − (2kv·a + (2H + F)·a − (2 + heads)·4) · T · layers`.
    fn records_beyond_weight_inputs(&self, unit: &UnitKey) -> Result<f64> {
        let (pt, tokens) = (self.per_token, self.tokens(unit)?);
        let released = pt.kv_per_layer + pt.shared_per_layer - pt.stats_per_layer;
        Ok(self.sizer.unit_bytes(unit)? - released * tokens * self.layers)
    }

    /// Bytes of `unit`'s norm statistics and log-sum-exps, and its head record on the last
    /// virtual stage.
    fn statistics_and_head(&self, stage: usize, unit: &UnitKey) -> Result<f64> {
        let (pt, tokens) = (self.per_token, self.tokens(unit)?);
        let mut bytes = pt.stats_per_layer * self.layers * tokens;
        if self.vstage(stage, unit) == self.last_vstage {
            bytes += pt.head * tokens;
        }
        Ok(bytes)
    }

    /// Bytes a recomputed unit's forward record lacks until its `RECOMPUTE`: selective drops
    /// both norm outputs and the SwiGLU product (`(2H + F) · a` per token and layer); full keeps
    /// of its first `N` layers only the input (and, for a slice with later slices, its K/V in
    /// the cache), dropping `(3H + 2q + 3F) · a`, the K/V `2kv · a` on a sequence's last slice,
    /// and the statistics `(2 + heads) · 4`.
    fn dropped_by_recompute(&self, stage: usize, unit: &UnitKey) -> Result<Dropped> {
        let (pt, tokens) = (self.per_token, self.tokens(unit)?);
        Ok(match self.granularity[stage] {
            None => fail!(
                Runtime,
                "stage {stage} recomputes {unit} but the recomputation setting gives it nothing \
                 to drop"
            ),
            Some(Granularity::Selective) => Dropped {
                records: pt.shared_per_layer * self.layers * tokens,
                kv: 0.0,
                stats: 0.0,
            },
            Some(Granularity::Full { layers }) => {
                // K and V stay cached for the later slices of the sequence, if any.
                let later_slices = (unit.slice as usize) + 1 < self.input.slices.len();
                let n = layers as f64 * tokens;
                Dropped {
                    records: (pt.weight_inputs_per_layer - pt.row - pt.kv_per_layer) * n,
                    kv: if later_slices {
                        0.0
                    } else {
                        pt.kv_per_layer * n
                    },
                    stats: pt.stats_per_layer * n,
                }
            }
        })
    }

    /// Bytes an `OFFLOAD` of `unit` moves, as (records, statistics and head record): its forward
    /// record less the K/V in the device's cache, less what recomputation dropped.
    fn moved(&self, stage: usize, unit: &UnitKey, recomputed: bool) -> Result<(f64, f64)> {
        let records = self.sizer.unit_bytes(unit)? - self.cached_kv(unit)?;
        let stats = self.statistics_and_head(stage, unit)?;
        if !recomputed {
            return Ok((records, stats));
        }
        let dropped = self.dropped_by_recompute(stage, unit)?;
        Ok((records - dropped.records, stats - dropped.stats))
    }

    /// Whether stage `stage`'s program recomputes `unit`.
    fn recomputes(&self, stage: usize, unit: &UnitKey) -> bool {
        self.input.schedule.actions[stage]
            .iter()
            .any(|a| a.op == Op::Recompute && unit_key(a) == *unit)
    }

    /// Bytes of `unit`'s K and V in the cache (which an offload leaves on the device).
    fn cached_kv(&self, unit: &UnitKey) -> Result<f64> {
        Ok(self.per_token.kv_per_layer * self.layers * self.tokens(unit)?)
    }

    fn vstage(&self, stage: usize, unit: &UnitKey) -> usize {
        unit.chunk as usize * self.stages + stage
    }
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
        let working = working_peak(&setup, program, &total_device)?.max(t.peak);
        stages.push(StagePrediction {
            peaks: StagePeaks {
                saved: s.peak,
                total: t.peak,
                working,
            },
            after_action: saved
                .iter()
                .zip(&total_device)
                .map(|(s, &t)| (s.0, t))
                .collect(),
            host_after_action: saved.iter().map(|&(_, host)| host).collect(),
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

/// The largest bytes inside a backward over a stage's program (see [`StagePeaks::working`]):
/// when the input halves of every layer have run, the stage holds what it holds after the
/// action, plus the unit's records not yet dropped, plus (full backward `B`) the weight-gradient
/// inputs its weight half is about to use; on top, one layer's attention-backward tiles.
fn working_peak(setup: &Setup, program: &[Action], total: &[f64]) -> Result<f64> {
    let mut peak: f64 = 0.0;
    for (action, after) in program.iter().zip(total) {
        let unit = unit_key(action);
        let inside = match action.op {
            Op::Backward => setup.weight_inputs(action.stage.index(), &unit)?,
            Op::BackwardInput => 0.0,
            _ => continue,
        };
        let records = setup.records_beyond_weight_inputs(&unit)?;
        let tiles = setup.attention_backward_tiles(&unit)?;
        peak = peak.max(after + records + inside + tiles);
    }
    Ok(peak)
}

/// Model-state bytes of every stage as the runtime keeps them (the `memory` crate's per-stage
/// states): parameters in the run's dtype, f32 gradients and two f32 AdamW moments, plus an f32
/// master copy of bf16 parameters: `16` bytes per parameter in f32 (`4 + 4 + 8`), `18` in bf16
/// (`2 + 4 + 12`). A stage's parameters are its layers (`2H·q + 2H·kv + 3H·F + 2H` each), the
/// embedding on the first stage and the LM head and final norm on the last. `None` for f64.
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
    Ok(Some(states.iter().map(StageStates::total).collect()))
}

/// Predicted peak saved-activation bytes per stage (see [`predict`]).
pub fn predicted_peaks(input: &PredictInput) -> Result<Option<Vec<f64>>> {
    Ok(predict(input)?.map(|p| p.iter().map(|s| s.peaks.saved).collect()))
}

/// The ledger's (device, host) bytes after each of `actions` actions: its curve is a step
/// function with a point at every action index where something changed.
fn after_each_action(stage: &StageMemory, actions: usize) -> Vec<(f64, f64)> {
    let mut points = stage.curve.iter().peekable();
    let mut now = (stage.model_states, 0.0);
    (0..actions)
        .map(|index| {
            while let Some(p) = points.next_if(|p| p.time <= index as f64) {
                now = (p.device, p.host);
            }
            now
        })
        .collect()
}

fn event(time: f64, stage: usize, op: MemOp, unit: String, bytes: f64) -> MemEvent {
    MemEvent {
        time,
        stage,
        op,
        unit,
        bytes,
    }
}

/// The memory crate's units (activations and dK/dV accumulators) plus the runtime's statistics
/// and head record, each held from the forward to the end of the first backward piece.
fn saved_events(setup: &Setup, lives: &[UnitLife]) -> Result<Vec<MemEvent>> {
    // The runtime drops a unit's record and pops its K/V at `I`; what `W` needs is the transient
    // weight-gradient-inputs term. For a full backward the two ends are the same action.
    let dropped_at_input_grad: Vec<UnitLife> = lives
        .iter()
        .map(|l| UnitLife {
            release: l.backward.1,
            ..*l
        })
        .collect();
    let mut events: Vec<MemEvent> = events_from_lives(&dropped_at_input_grad, &setup.sizer)?
        .into_iter()
        // The fused cross-entropy holds no logits; its record is the head term below.
        .filter(|e| !e.unit.starts_with("logits "))
        .collect();
    for life in lives {
        let bytes = setup.statistics_and_head(life.stage, &life.unit)?;
        let name = statistics_and_head(&life.unit);
        events.push(event(
            life.forward.0,
            life.stage,
            MemOp::Allocate,
            name.clone(),
            bytes,
        ));
        events.push(event(life.backward.1, life.stage, MemOp::Free, name, 0.0));
    }
    Ok(events)
}

/// A recomputed unit holds, from its forward to its `RECOMPUTE`, its record less what the
/// stage's granularity drops ([`Setup::dropped_by_recompute`]); from its `RECOMPUTE` to its
/// backward, the whole record again (the dropped part is its own "recomputed" term).
fn recompute_events(setup: &Setup, lives: &[UnitLife], events: &mut Vec<MemEvent>) -> Result<()> {
    for (stage, program) in setup.input.schedule.actions.iter().enumerate() {
        for (index, action) in program.iter().enumerate() {
            if action.op != Op::Recompute {
                continue;
            }
            let u = unit_key(action);
            let life = lives
                .iter()
                .find(|l| l.stage == stage && l.unit == u)
                .ok_or_else(|| Error::Runtime(format!("RECOMPUTE of {u} without a forward")))?;
            let dropped = setup.dropped_by_recompute(stage, &u)?;
            let forward = |e: &MemEvent| {
                e.stage == stage && e.op == MemOp::Allocate && e.time == life.forward.0
            };
            for e in events.iter_mut().filter(|e| forward(e)) {
                if e.unit == format!("act {u}") {
                    e.bytes -= dropped.records + dropped.kv;
                } else if e.unit == statistics_and_head(&u) {
                    e.bytes -= dropped.stats;
                }
            }
            let name = format!("recomputed {u}");
            let bytes = dropped.records + dropped.kv + dropped.stats;
            events.push(event(
                index as f64,
                stage,
                MemOp::Allocate,
                name.clone(),
                bytes,
            ));
            events.push(event(life.backward.1, stage, MemOp::Free, name, 0.0));
        }
    }
    Ok(())
}

fn statistics_and_head(u: &UnitKey) -> String {
    format!("statistics and head record {u}")
}

/// `OFFLOAD` and `RELOAD` move a unit's forward records between device and host at their
/// action's index: the memory crate's `act` unit less its K and V (which stay in the device's
/// cache for later slices), and the statistics and head record.
fn memory_op_events(setup: &Setup) -> Result<Vec<MemEvent>> {
    let mut events = Vec::new();
    for (stage, program) in setup.input.schedule.actions.iter().enumerate() {
        for (index, action) in program.iter().enumerate() {
            let op = match action.op {
                Op::Offload => MemOp::Offload,
                Op::Reload => MemOp::Reload,
                _ => continue,
            };
            let u = unit_key(action);
            let (records, extra) = setup.moved(stage, &u, setup.recomputes(stage, &u))?;
            let time = match op {
                MemOp::Offload => offload_joined_at(program, index),
                _ => index,
            } as f64;
            events.push(event(time, stage, op, format!("act {u}"), records));
            events.push(event(time, stage, op, statistics_and_head(&u), extra));
        }
    }
    Ok(events)
}

/// Where the executor joins the offload at `index` and frees its device copy: at the end of
/// the first compute after it, or at the first `RELOAD` after it if that comes first
/// (`worker::tiers`).
fn offload_joined_at(program: &[Action], index: usize) -> usize {
    program
        .iter()
        .enumerate()
        .skip(index + 1)
        .find(|(_, a)| computes(a.op) || a.op == Op::Reload)
        .map_or(program.len() - 1, |(j, _)| j)
}

/// Names of the transient buffers of a unit.
fn activation_out(u: &UnitKey) -> String {
    format!("activation out {u}")
}
fn gradient_out(u: &UnitKey) -> String {
    format!("gradient out {u}")
}

/// The buffer a unit's forward takes its input from: what `RECV_F` received, or with one stage
/// the previous chunk's output, passed in memory.
fn forward_input(setup: &Setup, u: &UnitKey) -> String {
    match (setup.stages, u.chunk) {
        (1, c) if c > 0 => activation_out(&UnitKey { chunk: c - 1, ..*u }),
        _ => format!("activation in {u}"),
    }
}

/// The buffer a unit's backward takes its output gradient from.
fn backward_input(setup: &Setup, u: &UnitKey) -> String {
    match setup.stages {
        1 => gradient_out(&UnitKey {
            chunk: u.chunk + 1,
            ..*u
        }),
        _ => format!("gradient in {u}"),
    }
}

/// Buffers between a compute and its consumer, and the weight-gradient inputs from `I` to `W`,
/// at each action's index in its stage's program.
fn transient_events(setup: &Setup) -> Result<Vec<MemEvent>> {
    let mut events = Vec::new();
    for (stage, program) in setup.input.schedule.actions.iter().enumerate() {
        for (index, action) in program.iter().enumerate() {
            transient_at(setup, stage, index as f64, action, &mut events)?;
        }
    }
    Ok(events)
}

fn transient_at(
    setup: &Setup,
    stage: usize,
    time: f64,
    action: &Action,
    events: &mut Vec<MemEvent>,
) -> Result<()> {
    let u = unit_key(action);
    let k = setup.vstage(stage, &u);
    let (first, last) = (k == 0, k == setup.last_vstage);
    let tokens = setup.tokens(&u)?;
    let pt = setup.per_token;
    let row = pt.row * tokens;
    let mut alloc = |name: String, bytes: f64| {
        events.push(event(time, stage, MemOp::Allocate, name, bytes));
    };
    let mut frees = Vec::new();
    match action.op {
        Op::Forward => {
            if !first {
                frees.push(forward_input(setup, &u));
            }
            if !last {
                alloc(activation_out(&u), row);
            }
        }
        Op::Backward | Op::BackwardInput => {
            if !last {
                frees.push(backward_input(setup, &u));
            }
            if !first {
                alloc(gradient_out(&u), row);
            }
            if action.op == Op::BackwardInput {
                alloc(
                    format!("weight-gradient inputs {u}"),
                    setup.weight_inputs(stage, &u)?,
                );
            }
        }
        Op::BackwardWeight => frees.push(format!("weight-gradient inputs {u}")),
        Op::SendAct => frees.push(activation_out(&u)),
        Op::RecvAct => alloc(format!("activation in {u}"), row),
        Op::RecvGrad => alloc(format!("gradient in {u}"), row),
        Op::SendGrad => frees.push(gradient_out(&u)),
        // Moves and rebuilds of saved records: `memory_op_events`, `recompute_events`.
        Op::Offload | Op::Reload | Op::Recompute => {}
    }
    events.extend(
        frees
            .into_iter()
            .map(|name| event(time, stage, MemOp::Free, name, 0.0)),
    );
    Ok(())
}
