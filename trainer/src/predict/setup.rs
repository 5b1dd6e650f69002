//! The runtime's named byte terms per token and per unit, derived once from a [`super::PredictInput`]: what a unit's record, its statistics, a recomputation and an offload hold.

use candle_core::DType;
use seqpipe_kernels::AttentionOptions;
use seqpipe_memory::{unit_key, ActivationModel, Dtype, Parallelism, UnitKey, UnitSizer};
use seqpipe_schedule::{Chunk, MicroBatch, Op, Slice, Unit};

use super::PredictInput;
use crate::error::{fail, Error, Result};
use crate::runtime::recompute::fewest_layers;
use crate::runtime::worker::{Granularity, StageRecompute};

/// Statistics, accumulators and token ids are 4-byte elements (f32 or u32) in f32 and bf16 runs.
pub(super) const F32: f64 = 4.0;

/// Bytes per token of the runtime's named terms (see the module header).
#[derive(Debug, Clone, Copy)]
pub(super) struct PerToken {
    /// One hidden row `H · a`: an activation or gradient between virtual stages.
    pub(super) row: f64,
    /// Norm statistics and log-sum-exp of one layer: `(2 + heads) · 4`.
    pub(super) stats_per_layer: f64,
    /// Head record: `2H · a + 2 · 4`.
    pub(super) head: f64,
    /// Weight-gradient inputs of one layer: `(4H + 2q + 2kv + 3F) · a`.
    pub(super) weight_inputs_per_layer: f64,
    /// The embedding's weight-gradient inputs: token id `4` plus its output gradient `H · a`.
    pub(super) embed_inputs: f64,
    /// A layer's K and V in the cache: `2kv · a`.
    pub(super) kv_per_layer: f64,
    /// Tensors of one layer that are both in the saved record and weight-gradient inputs (the
    /// attention norm output, the FFN norm output, the SwiGLU product): `(2H + F) · a`.
    pub(super) shared_per_layer: f64,
}

/// What recomputation drops from a unit's forward record until its `RECOMPUTE`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dropped {
    /// Layer tensors other than K and V.
    pub(super) records: f64,
    /// K and V not kept in the cache (full recomputation of a sequence's last slice).
    pub(super) kv: f64,
    /// Norm statistics and log-sum-exps.
    pub(super) stats: f64,
}

/// Everything the events need, derived once from the input.
pub(super) struct Setup<'a> {
    pub(super) input: &'a PredictInput<'a>,
    pub(super) sizer: UnitSizer,
    pub(super) per_token: PerToken,
    pub(super) layers: f64,
    pub(super) stages: usize,
    pub(super) last_vstage: usize,
    /// What each stage's recomputed units drop.
    pub(super) granularity: Vec<StageRecompute>,
    /// The schedule shards the embedding and head over the stages (it has vocabulary ops): no
    /// head record on the last virtual stage, no embedding inputs on the first.
    pub(super) vocab_parallel: bool,
}

pub(super) fn memory_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F32 => Some(Dtype::F32),
        DType::BF16 => Some(Dtype::Bf16),
        _ => None,
    }
}

impl<'a> Setup<'a> {
    /// `None` when the layers are not split evenly over virtual stages (the unit sizer assumes
    /// one chunk size) or the precision is one the memory model does not describe (f64).
    pub(super) fn new(input: &'a PredictInput<'a>) -> Result<Option<Self>> {
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
            slices: scaled(input.slices, b),
            per_microbatch: input
                .ragged
                .map(|all| all.iter().map(|s| scaled(s, b)).collect()),
            stages: input.schedule.config.stages as usize,
            chunks: input.schedule.config.chunks,
        };
        let stages = input.schedule.config.stages as usize;
        let chunks = input.schedule.config.chunks as usize;
        let granularity = (0..stages)
            .map(|s| {
                let fewest = fewest_layers(input.partition, s, stages, chunks);
                input.recompute.stage(s, fewest)
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
            vocab_parallel: input.schedule.iter().any(|a| a.op.is_vocab()),
        }))
    }

    /// The token range of `unit`'s slice in its sequence.
    pub(super) fn slice(&self, unit: &UnitKey) -> Result<&std::ops::Range<usize>> {
        self.input
            .slices_of(unit.mb as usize)
            .get(unit.slice as usize)
            .ok_or_else(|| Error::Runtime(format!("slice {} is not in the plan", unit.slice)))
    }

    /// Tokens of `unit`'s slice over the micro-batch.
    pub(super) fn tokens(&self, unit: &UnitKey) -> Result<f64> {
        Ok((self.slice(unit)?.len() * self.input.batch) as f64)
    }

    /// Bytes a backward of `unit` keeps for its weight half: every layer's matrix inputs and
    /// output gradients, the head record on the last virtual stage, the token ids and the
    /// embedding's output gradient on virtual stage 0.
    pub(super) fn weight_inputs(&self, stage: usize, unit: &UnitKey) -> Result<f64> {
        let (pt, tokens) = (self.per_token, self.tokens(unit)?);
        let k = self.vstage(stage, unit);
        let mut bytes = pt.weight_inputs_per_layer * self.layers * tokens;
        if k == self.last_vstage && !self.vocab_parallel {
            bytes += pt.head * tokens;
        }
        if k == 0 && !self.vocab_parallel {
            bytes += pt.embed_inputs * tokens;
        }
        Ok(bytes)
    }

    /// The f32 score tiles the blockwise attention backward of one layer holds at once for
    /// `unit`: scores `S`, probabilities `P`, `dP`, `dP − δ` and `dS`, each `[b, heads,
    /// min(len, block), min(prefix + len, block)]` (one query block against one key block, the
    /// runtime's `AttentionOptions::causal` block). Computed in f32 whatever the activations'
    /// dtype; the largest compute temporaries of a backward.
    pub(super) fn attention_backward_tiles(&self, unit: &UnitKey) -> Result<f64> {
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
    pub(super) fn records_beyond_weight_inputs(&self, unit: &UnitKey) -> Result<f64> {
        let (pt, tokens) = (self.per_token, self.tokens(unit)?);
        let released = pt.kv_per_layer + pt.shared_per_layer - pt.stats_per_layer;
        Ok(self.sizer.unit_bytes(unit)? - released * tokens * self.layers)
    }

    /// Bytes of `unit`'s norm statistics and log-sum-exps, and its head record on the last
    /// virtual stage.
    pub(super) fn statistics_and_head(&self, stage: usize, unit: &UnitKey) -> Result<f64> {
        let (pt, tokens) = (self.per_token, self.tokens(unit)?);
        let mut bytes = pt.stats_per_layer * self.layers * tokens;
        if self.vstage(stage, unit) == self.last_vstage && !self.vocab_parallel {
            bytes += pt.head * tokens;
        }
        Ok(bytes)
    }

    /// Bytes a recomputed unit's forward record lacks until its `RECOMPUTE`: selective drops
    /// both norm outputs and the SwiGLU product (`(2H + F) · a` per token and layer); full keeps
    /// of its first `N` layers only the input (and, for a slice with later slices, its K/V in
    /// the cache), dropping `(3H + 2q + 3F) · a`, the K/V `2kv · a` on a sequence's last slice,
    /// and the statistics `(2 + heads) · 4`.
    pub(super) fn dropped_by_recompute(&self, stage: usize, unit: &UnitKey) -> Result<Dropped> {
        match self.granularity[stage].of(&as_unit(unit)) {
            Some(g) => self.dropped(g, unit),
            None => fail!(
                Runtime,
                "stage {stage} recomputes {unit} but the recomputation setting gives it nothing \
                 to drop"
            ),
        }
    }

    /// What `granularity` drops from `unit`'s record (see [`Setup::dropped_by_recompute`]).
    pub(super) fn dropped(&self, granularity: Granularity, unit: &UnitKey) -> Result<Dropped> {
        let (pt, tokens) = (self.per_token, self.tokens(unit)?);
        Ok(match granularity {
            Granularity::Selective => Dropped {
                records: pt.shared_per_layer * self.layers * tokens,
                kv: 0.0,
                stats: 0.0,
            },
            Granularity::Full { layers } => {
                // K and V stay cached for the later slices of the sequence, if any.
                let later_slices =
                    (unit.slice as usize) + 1 < self.input.slices_of(unit.mb as usize).len();
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
    pub(super) fn moved(
        &self,
        stage: usize,
        unit: &UnitKey,
        recomputed: bool,
    ) -> Result<(f64, f64)> {
        let records = self.sizer.unit_bytes(unit)? - self.cached_kv(unit)?;
        let stats = self.statistics_and_head(stage, unit)?;
        if !recomputed {
            return Ok((records, stats));
        }
        let dropped = self.dropped_by_recompute(stage, unit)?;
        Ok((records - dropped.records, stats - dropped.stats))
    }

    /// Whether stage `stage`'s program recomputes `unit`.
    pub(super) fn recomputes(&self, stage: usize, unit: &UnitKey) -> bool {
        self.input.schedule.actions[stage]
            .iter()
            .any(|a| a.op == Op::Recompute && unit_key(a) == *unit)
    }

    /// Bytes of `unit`'s K and V in the cache (which an offload leaves on the device).
    pub(super) fn cached_kv(&self, unit: &UnitKey) -> Result<f64> {
        Ok(self.per_token.kv_per_layer * self.layers * self.tokens(unit)?)
    }

    pub(super) fn vstage(&self, stage: usize, unit: &UnitKey) -> usize {
        unit.chunk as usize * self.stages + stage
    }
}

impl Dropped {
    /// Every dropped byte.
    pub(super) fn total(&self) -> f64 {
        self.records + self.kv + self.stats
    }
}

/// The schedule's unit of a ledger key.
pub(super) fn as_unit(u: &UnitKey) -> Unit {
    Unit {
        mb: MicroBatch(u.mb),
        slice: Slice(u.slice),
        chunk: Chunk(u.chunk),
    }
}

/// `(start, len)` of each slice over a micro-batch of `b` sequences (`b` times the tokens of
/// every per-token term).
fn scaled(slices: &[std::ops::Range<usize>], b: u64) -> Vec<(u64, u64)> {
    slices
        .iter()
        .map(|r| (r.start as u64 * b, r.len() as u64 * b))
        .collect()
}
