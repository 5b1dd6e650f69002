//! The activation store: every tensor a stage keeps from one action to a later one — a unit's
//! saved forward records until its backward, the inputs of a pending weight backward, the K/V
//! prefixes and dK/dV accumulators of each (micro-batch, chunk), and the activation and gradient
//! buffers between a compute and its send (or a receive and its compute). The memory figures
//! ([`Held`]) are counted from it alone, so what is stored is what is measured.
//!
//! A unit's saved records have a [`Residence`]: on the compute device from its forward, on the
//! host between an `OFFLOAD` and its `RELOAD`. Its backward takes them only from the device, so a
//! schedule that reloads too late fails naming the unit (the validator refuses such a schedule
//! before the run). K/V caches stay on the device: later slices' forwards read them.

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;
use seqpipe_kernels::SliceKvCache;
use seqpipe_schedule::Unit;

use super::recompute::LayerRecord;
use crate::error::{fail, Result};
use crate::model::ends::HeadSaved;
use crate::model::layer::{self, WeightGradInputs};

/// What the backward of a unit left for its weight half.
#[derive(Debug, Default)]
pub(super) struct PendingWeight {
    pub layers: Vec<(usize, WeightGradInputs)>,
    pub head: Option<HeadSaved>,
    pub embed: Option<(Tensor, Tensor)>,
}

/// What the forward of a unit keeps until its backward (its layers' records reduced until a
/// `RECOMPUTE` when the unit is checkpointed).
#[derive(Debug, Clone)]
pub(super) struct UnitSaved {
    pub layers: Vec<LayerRecord>,
    pub head: Option<HeadSaved>,
    pub tokens: Option<Tensor>,
}

impl UnitSaved {
    /// The records with `to` applied to every tensor (a move between memory tiers).
    pub fn map(
        &self,
        to: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Self> {
        Ok(UnitSaved {
            layers: self
                .layers
                .iter()
                .map(|l| l.map(to))
                .collect::<candle_core::Result<_>>()?,
            head: self.head.as_ref().map(|h| h.map(to)).transpose()?,
            tokens: self.tokens.as_ref().map(to).transpose()?,
        })
    }

    /// The tensors held (token ids aside: they are the embedding's, counted as its input).
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.layers
            .iter()
            .flat_map(LayerRecord::tensors)
            .chain(self.head.iter().flat_map(HeadSaved::tensors))
    }
}

/// Where a unit's saved records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residence {
    /// On the stage's compute device, where its backward reads them.
    Device,
    /// Being copied to host memory by `OFFLOAD`: still on the device until the copy is joined.
    ToHost,
    /// In host memory, moved by `OFFLOAD` until its `RELOAD`.
    Host,
    /// Being copied back by `RELOAD`: on the device from the action on (its bytes are taken
    /// there), readable once the copy is joined.
    ToDevice,
}

/// A unit's saved records and where they are.
#[derive(Debug)]
struct Kept {
    residence: Residence,
    saved: UnitSaved,
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
    saved: HashMap<Unit, Kept>,
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

    /// Keeps a unit's forward records, on the device, until its backward.
    pub fn save(&mut self, u: Unit, saved: UnitSaved) {
        let residence = Residence::Device;
        self.saved.insert(u, Kept { residence, saved });
    }

    /// A unit's forward records, leaving the store; they must be on the device.
    pub fn take_saved(&mut self, u: &Unit) -> Result<UnitSaved> {
        match self.saved.get(u).map(|k| k.residence) {
            None => fail!(Runtime, "backward of {u:?} before its forward"),
            Some(Residence::Device) => Ok(self.saved.remove(u).expect("present").saved),
            Some(other) => fail!(
                Runtime,
                "backward of {u:?} while its activations are {other:?}: RELOAD them and join \
                 the copy first"
            ),
        }
    }

    /// Starts a unit's move between tiers (`OFFLOAD`: from the device, `RELOAD`: from the
    /// host): its records, for the host link to copy.
    pub fn begin_move(&mut self, u: &Unit, to: Residence) -> Result<UnitSaved> {
        let (from, moving) = match to {
            Residence::Host => (Residence::Device, Residence::ToHost),
            _ => (Residence::Host, Residence::ToDevice),
        };
        let kept = self.kept_in(u, from, to)?;
        kept.residence = moving;
        Ok(kept.saved.clone())
    }

    /// Ends a unit's move: `copied` are its records in their new tier, the old ones go.
    pub fn finish_move(&mut self, u: &Unit, to: Residence, copied: UnitSaved) -> Result<()> {
        let moving = match to {
            Residence::Host => Residence::ToHost,
            _ => Residence::ToDevice,
        };
        let kept = self.kept_in(u, moving, to)?;
        kept.saved = copied;
        kept.residence = to;
        Ok(())
    }

    /// A unit's records, which must be in `from` to move to `to`.
    fn kept_in(&mut self, u: &Unit, from: Residence, to: Residence) -> Result<&mut Kept> {
        let Some(kept) = self.saved.get_mut(u) else {
            fail!(Runtime, "{u:?} holds no activations to move to the {to:?}");
        };
        if kept.residence != from {
            fail!(
                Runtime,
                "{u:?}'s activations are {:?}, not {from:?}, so they cannot move to the {to:?}",
                kept.residence
            );
        }
        Ok(kept)
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
    /// Saved records offloaded to host memory (not in `saved`).
    pub host: usize,
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
    // Records in flight count on the device: an offload's device copy lives until its copy is
    // joined, a reload's device bytes are taken when it starts.
    let on_host = |host: bool| {
        st.saved
            .values()
            .filter(move |k| (k.residence == Residence::Host) == host)
    };
    let saved = sum(&mut on_host(false).flat_map(|k| k.saved.tensors()));
    let host = sum(&mut on_host(true).flat_map(|k| k.saved.tensors()));
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
        host,
    }
}
