//! The activation store: every tensor a stage keeps from one action to a later one — a unit's
//! saved forward records until its backward, the inputs of a pending weight backward, the K/V
//! prefixes and dK/dV accumulators of each (micro-batch, chunk), and the activation and gradient
//! buffers between a compute and its send (or a receive and its compute). The memory figures
//! ([`Held`]) are counted from it alone, so what is stored is what is measured.

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;
use seqpipe_kernels::SliceKvCache;
use seqpipe_schedule::Unit;

use crate::model::ends::HeadSaved;
use crate::model::layer::{self, LayerSaved, WeightGradInputs};

/// What the backward of a unit left for its weight half.
#[derive(Debug, Default)]
pub(super) struct PendingWeight {
    pub layers: Vec<(usize, WeightGradInputs)>,
    pub head: Option<HeadSaved>,
    pub embed: Option<(Tensor, Tensor)>,
}

/// What the forward of a unit keeps until its backward.
#[derive(Debug)]
pub(super) struct UnitSaved {
    pub layers: Vec<LayerSaved>,
    pub head: Option<HeadSaved>,
    pub tokens: Option<Tensor>,
}

/// Which buffer of a unit: the activation or gradient received for it or produced by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Slot {
    /// The activation received for its forward.
    ActIn,
    /// The activation its forward produced, until sent (or read by the next chunk with p = 1).
    ActOut,
    /// The output gradient received for its backward.
    GradIn,
    /// The input gradient its backward produced, until sent.
    GradOut,
}

/// Byte sizes the K/V accounting needs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct KvSizes {
    /// Elements of one token's K (or V) over the micro-batch: `b · kv_heads · head_dim`.
    pub row_elems: usize,
    /// Bytes of a cached K/V element (the compute dtype).
    pub elem_bytes: usize,
    /// Bytes of a dK/dV accumulator element (f32, or f64 for f64 runs).
    pub grad_elem_bytes: usize,
}

/// The tensors a stage holds during one iteration (see the module docs).
#[derive(Default)]
pub(super) struct ActivationStore {
    caches: HashMap<(u32, u32), Vec<SliceKvCache>>,
    saved: HashMap<Unit, UnitSaved>,
    pending: HashMap<Unit, PendingWeight>,
    buffers: HashMap<(Slot, Unit), Tensor>,
    sizes: KvSizes,
}

impl ActivationStore {
    /// An empty store for one iteration.
    pub fn new(sizes: KvSizes) -> Self {
        ActivationStore {
            sizes,
            ..ActivationStore::default()
        }
    }

    /// The K/V caches of (micro-batch, chunk), one per layer, made empty on first use.
    pub fn caches(&mut self, u: &Unit, layers: usize) -> &mut Vec<SliceKvCache> {
        self.caches
            .entry((u.mb.0, u.chunk.0))
            .or_insert_with(|| vec![SliceKvCache::new(); layers])
    }

    /// The existing K/V caches of (micro-batch, chunk), if its forwards ran.
    pub fn existing_caches(&mut self, u: &Unit) -> Option<&mut Vec<SliceKvCache>> {
        self.caches.get_mut(&(u.mb.0, u.chunk.0))
    }

    /// Frees the caches of (micro-batch, chunk) once its backward walk has emptied them.
    pub fn release_emptied_caches(&mut self, u: &Unit) {
        let key = (u.mb.0, u.chunk.0);
        if self.caches[&key].iter().all(|c| c.slices() == 0) {
            self.caches.remove(&key);
        }
    }

    /// Keeps a unit's forward records until its backward.
    pub fn save(&mut self, u: Unit, saved: UnitSaved) {
        self.saved.insert(u, saved);
    }

    /// A unit's forward records, leaving the store.
    pub fn take_saved(&mut self, u: &Unit) -> Option<UnitSaved> {
        self.saved.remove(u)
    }

    /// Keeps the inputs of a unit's weight backward until it runs.
    pub fn park(&mut self, u: Unit, pending: PendingWeight) {
        self.pending.insert(u, pending);
    }

    /// The inputs of a unit's weight backward, leaving the store.
    pub fn take_pending(&mut self, u: &Unit) -> Option<PendingWeight> {
        self.pending.remove(u)
    }

    /// Puts a unit's buffer in `slot`.
    pub fn put(&mut self, slot: Slot, u: Unit, t: Tensor) {
        self.buffers.insert((slot, u), t);
    }

    /// A unit's buffer in `slot`, leaving the store.
    pub fn take(&mut self, slot: Slot, u: &Unit) -> Option<Tensor> {
        self.buffers.remove(&(slot, *u))
    }

    /// Whether no unit holds records or pending weight inputs (the end of an iteration).
    pub fn is_drained(&self) -> bool {
        self.saved.is_empty() && self.pending.is_empty()
    }
}

/// Activation bytes a stage holds, by kind; each tensor counted once however many records
/// share it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    /// Saved records of forwards awaiting their backward, the KV caches and the dK/dV
    /// accumulators: what the memory model predicts.
    pub saved: usize,
    /// Inputs of pending weight-gradient halves (zero-bubble schedules) and activation/gradient
    /// buffers between a compute and its send or after a receive.
    pub transient: usize,
}

impl ActivationStore {
    /// The bytes held now, by kind.
    pub fn held(&self) -> Held {
        held_bytes(self)
    }
}

fn held_bytes(st: &ActivationStore) -> Held {
    let mut seen = HashSet::new();
    let mut sum = |tensors: &mut dyn Iterator<Item = &Tensor>| {
        tensors
            .filter(|t| seen.insert(t.id()))
            .map(layer::bytes)
            .sum::<usize>()
    };
    let saved = sum(&mut st.saved.values().flat_map(|s| {
        s.layers
            .iter()
            .flat_map(LayerSaved::tensors)
            .chain(s.head.iter().flat_map(HeadSaved::tensors))
    }));
    let pending = sum(&mut st.pending.values().flat_map(|p| {
        let layers = p.layers.iter().flat_map(|(_, w)| w.tensors());
        let head = p.head.iter().flat_map(HeadSaved::tensors);
        layers
            .chain(head)
            .chain(p.embed.iter().flat_map(|(ids, dx)| [ids, dx]))
    }));
    let buffers = sum(&mut st.buffers.values());
    // K and V of every cached token, and the dK/dV accumulators (compute precision) of the slices
    // whose backward has begun: [b, kv_heads, tokens, head_dim] each.
    let row = st.sizes.row_elems;
    let caches: usize = st
        .caches
        .values()
        .flatten()
        .map(|c| {
            2 * row
                * (c.cached_tokens() * st.sizes.elem_bytes
                    + c.pending_grad_tokens() * st.sizes.grad_elem_bytes)
        })
        .sum();
    Held {
        saved: saved + caches,
        transient: pending + buffers,
    }
}
