//! Recomputation at run time (InfiniPipe §5.2; Megatron's selective and full): a unit the
//! schedule marks with `RECOMPUTE` keeps less than its whole forward record until that action,
//! which rebuilds the record just before the unit's backward.
//!
//! - **Selective**: every layer drops its norm outputs and SwiGLU product
//!   ([`SelectiveSaved`]), rebuilt from the kept inputs.
//! - **Full**: the first `layers` layers of the unit's chunk keep only their input; each is run
//!   forward again from it against the K/V prefix before the unit's slice
//!   ([`SliceKvCache::without_last`]) with the slice's own K/V, still cached: a checkpointed slice
//!   keeps its K and V for the later slices (SPEC §5.2), and its recomputed K/V are dropped. The
//!   last slice of a sequence (or a whole one) has no later slice: it keeps no K/V, and its
//!   recomputed K/V join the cache for its backward. The loss and the answers are untouched, so
//!   the numbers are those of the run without recomputation.
//!
//! The embedding's token ids and the head record are kept whole: they are not layers.

use std::collections::BTreeMap;

use candle_core::Tensor;
use seqpipe_kernels::SliceKvCache;
use seqpipe_schedule::{Action, Unit};

use super::{unit, IterState, StageWorker};
use crate::error::{fail, Error, Result};
use crate::model::layer::{self, LayerSaved, Place, SelectiveSaved};

/// How much of a checkpointed unit's layer records is dropped after its forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Every layer drops its norm outputs and SwiGLU product.
    Selective,
    /// The first `layers` layers of each chunk keep only their input.
    Full {
        /// Layers per chunk recomputed whole (at least 1).
        layers: usize,
    },
}

/// What a stage's checkpointed units drop after their forward: one granularity for every unit
/// the program recomputes, or one per unit (the adaptive plan's layer counts).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StageRecompute {
    /// The stage recomputes nothing: its program may hold no `RECOMPUTE`.
    #[default]
    Nothing,
    /// Every recomputed unit drops the same.
    Every(Granularity),
    /// Only these units are recomputed, each dropping its own share.
    Units(BTreeMap<Unit, Granularity>),
}

impl StageRecompute {
    /// What `u` drops when the program recomputes it (`None`: the setting gives it nothing).
    pub fn of(&self, u: &Unit) -> Option<Granularity> {
        match self {
            StageRecompute::Nothing => None,
            StageRecompute::Every(g) => Some(*g),
            StageRecompute::Units(units) => units.get(u).copied(),
        }
    }

    /// Whether the setting recomputes `u` (every unit for a stage-wide granularity).
    pub fn recomputes(&self, u: &Unit) -> bool {
        self.of(u).is_some()
    }
}

/// One layer's part of a unit's forward record.
#[derive(Debug, Clone)]
pub(super) enum LayerRecord {
    /// Everything the backward needs.
    Whole(LayerSaved),
    /// Selective recomputation's record.
    Selective(SelectiveSaved),
    /// Full recomputation's record: the layer input, where the slice's tokens lie, and
    /// whether the slice's own K/V stayed in the cache (not on a sequence's last slice).
    Input {
        x: Tensor,
        place: Place,
        kv_cached: bool,
    },
}

impl LayerRecord {
    /// The tensors held.
    pub fn tensors(&self) -> Vec<&Tensor> {
        match self {
            LayerRecord::Whole(s) => s.tensors().to_vec(),
            LayerRecord::Selective(s) => s.tensors().iter().collect(),
            LayerRecord::Input { x, .. } => vec![x],
        }
    }

    /// The record with `to` applied to every tensor (a move between memory tiers).
    pub fn map(
        &self,
        to: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Self> {
        Ok(match self {
            LayerRecord::Whole(s) => LayerRecord::Whole(s.map(to)?),
            LayerRecord::Selective(s) => LayerRecord::Selective(s.map(to)?),
            LayerRecord::Input {
                x,
                place,
                kv_cached,
            } => LayerRecord::Input {
                x: to(x)?,
                place: place.clone(),
                kv_cached: *kv_cached,
            },
        })
    }

    /// Whether the record lacks something its backward needs.
    pub fn is_checkpointed(&self) -> bool {
        !matches!(self, LayerRecord::Whole(_))
    }
}

/// Whether layer `i` of a chunk is recomputed whole under `granularity`.
pub(super) fn recomputed_whole(granularity: Option<Granularity>, i: usize) -> bool {
    matches!(granularity, Some(Granularity::Full { layers }) if i < layers)
}

/// A chunk's layer records after its forward: whole, or reduced by `granularity`;
/// `kv_cached[i]` says whether layer `i`'s K/V of the slice stayed in the cache.
pub(super) fn checkpoint(
    saved: Vec<LayerSaved>,
    granularity: Option<Granularity>,
    kv_cached: &[bool],
) -> Vec<LayerRecord> {
    saved
        .into_iter()
        .zip(kv_cached)
        .enumerate()
        .map(|(i, (s, &kv_cached))| match granularity {
            Some(Granularity::Selective) => LayerRecord::Selective(s.without_cheap()),
            _ if recomputed_whole(granularity, i) => LayerRecord::Input {
                x: s.x,
                place: s.place,
                kv_cached,
            },
            _ => LayerRecord::Whole(s),
        })
        .collect()
}

/// The whole layer records a backward runs on, or an error naming the first checkpointed one.
pub(super) fn whole_records(u: &Unit, records: Vec<LayerRecord>) -> Result<Vec<LayerSaved>> {
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            LayerRecord::Whole(s) => Ok(s),
            _ => Err(Error::Runtime(format!(
                "backward of {u:?}: layer {i} of its chunk is checkpointed and no RECOMPUTE ran \
                 before it"
            ))),
        })
        .collect()
}

impl StageWorker {
    /// `RECOMPUTE`: rebuilds a checkpointed unit's whole record on the device, layer by layer.
    pub(super) fn recompute(&mut self, st: &mut IterState, a: &Action) -> Result<()> {
        let u = unit(a);
        let mut saved = st.store.take_saved(&u)?;
        if !saved.layers.iter().any(LayerRecord::is_checkpointed) {
            fail!(Runtime, "RECOMPUTE of {u:?}, whose forward record is whole");
        }
        let chunk = a.chunk.index();
        let caches = st
            .store
            .existing_caches(&u)
            .ok_or_else(|| Error::Runtime(format!("RECOMPUTE of {u:?}: no K/V cache")))?;
        let ctx = self.ctx();
        let records = std::mem::take(&mut saved.layers);
        let mut rebuilt = Vec::with_capacity(records.len());
        let layers = records.into_iter().zip(&self.weights[chunk]);
        for ((record, w), cache) in layers.zip(caches.iter_mut()) {
            rebuilt.push(LayerRecord::Whole(match record {
                LayerRecord::Whole(s) => s,
                LayerRecord::Selective(s) => s.restore(&ctx, w)?,
                LayerRecord::Input {
                    x,
                    place,
                    kv_cached,
                } => rerun_layer(&ctx, w, cache, &x, &place, kv_cached)?,
            }));
        }
        saved.layers = rebuilt;
        st.store.save(u, saved);
        Ok(())
    }
}

/// A layer's forward record, computed again from its input. With the slice's own K/V still
/// cached, against the prefix before them (the recomputed K/V equal the cached ones and are
/// dropped); without, against the whole cache, and the recomputed K/V join it for the backward.
fn rerun_layer(
    ctx: &layer::LayerCtx,
    w: &layer::LayerWeights,
    cache: &mut SliceKvCache,
    x: &Tensor,
    place: &Place,
    kv_cached: bool,
) -> Result<LayerSaved> {
    let (offset, len, cached) = (place.offset, x.dim(1)?, cache.cached_tokens());
    let expected = if kv_cached { offset + len } else { offset };
    if cached != expected {
        fail!(
            Runtime,
            "recomputing tokens {offset}..{} with {cached} tokens of K/V cached; expected \
             {expected}",
            offset + len
        );
    }
    if kv_cached {
        let (_, saved, _) = layer::forward(ctx, w, &cache.without_last()?, x, place)?;
        return Ok(saved);
    }
    let (_, saved, kv) = layer::forward(ctx, w, cache, x, place)?;
    cache.append(&kv.k, &kv.v)?;
    Ok(saved)
}
