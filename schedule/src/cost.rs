//! Ready-made cost functions for [`crate::simulate`]: equal units (for the closed forms) and a
//! table of per-(micro-batch, slice) costs (for real slicing plans and heterogeneous micro-batches).
//!
//! Any `Fn(&Action) -> f64` works as a cost function; these are conveniences, and they are where
//! the schedule crate meets numbers from `slicing` — as plain numbers, never as a model.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{Action, CostTable, Op, Stage, Unit, UnitCosts};
//! let b = Action::new(Stage(0), Unit::new(1, 1, 0), Op::Backward); // micro-batch 1, slice 1
//! let units = UnitCosts::new(1.0, 2.0);
//! assert_eq!((units.cost(&b), units.cost(&b.with_op(Op::BackwardInput))), (2.0, 1.0));
//! // Two micro-batches of two slices: the second slice's forward costs 3, messages are 8 bytes.
//! let table = CostTable::repeated(2, &[1.0, 3.0], &[8.0, 8.0], 2.0);
//! assert_eq!(table.cost(&b), 6.0);
//! assert_eq!(table.cost(&b.with_op(Op::BackwardWeight)), 3.0); // half of the backward
//! assert_eq!(table.message_bytes(&b), 8.0);
//! ```

use serde::{Deserialize, Serialize};

use crate::action::{Action, Op};

/// The same duration for every unit: `F`, `I`, `W` (full backward = `I + W`), memory ops and the
/// local part of sends/receives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UnitCosts {
    /// Forward.
    pub forward: f64,
    /// Input-gradient backward.
    pub backward_input: f64,
    /// Weight-gradient backward.
    pub backward_weight: f64,
    /// Local time of a send or receive (the transfer itself is [`crate::P2p`]'s).
    pub comm: f64,
    /// Offload.
    pub offload: f64,
    /// Reload.
    pub reload: f64,
    /// Recompute (usually the forward's cost).
    pub recompute: f64,
    /// A vocabulary-parallel op (`EMBED`, `HEAD`, `EMBED_B`): one stage's vocabulary share.
    pub vocab: f64,
}

impl UnitCosts {
    /// Forward `forward`, full backward `backward` split evenly into `I` and `W`, everything else
    /// free and recompute = forward.
    pub fn new(forward: f64, backward: f64) -> Self {
        UnitCosts {
            forward,
            backward_input: backward / 2.0,
            backward_weight: backward / 2.0,
            comm: 0.0,
            offload: 0.0,
            reload: 0.0,
            recompute: forward,
            vocab: 0.0,
        }
    }

    /// Duration of an action.
    pub fn cost(&self, a: &Action) -> f64 {
        match a.op {
            Op::Forward => self.forward,
            Op::Backward => self.backward_input + self.backward_weight,
            Op::BackwardInput => self.backward_input,
            Op::BackwardWeight => self.backward_weight,
            Op::SendAct | Op::RecvAct | Op::SendGrad | Op::RecvGrad => self.comm,
            Op::Offload => self.offload,
            Op::Reload => self.reload,
            Op::Recompute => self.recompute,
            Op::VocabEmbed | Op::VocabHead | Op::VocabEmbedGrad => self.vocab,
        }
    }
}

/// Per-(micro-batch, slice) forward durations of one virtual stage and message sizes; backward
/// pieces are multiples of the forward. Units may differ (slices of a causal sequence, packed
/// micro-batches), which is what makes uniform slicing's bubble visible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostTable {
    /// `forward[mb][slice]`: forward duration of that slice on any one virtual stage.
    pub forward: Vec<Vec<f64>>,
    /// `bytes[mb][slice]`: bytes of the activation (or gradient) message of that slice.
    pub bytes: Vec<Vec<f64>>,
    /// Full backward ÷ forward (2 for transformers).
    pub backward_factor: f64,
    /// Share of the backward that is the weight gradient `W` (the rest is `I`).
    pub weight_share: f64,
}

impl CostTable {
    /// Every micro-batch sliced alike: `forward[slice]` and `bytes[slice]` repeated `m` times.
    pub fn repeated(
        microbatches: u32,
        forward: &[f64],
        bytes: &[f64],
        backward_factor: f64,
    ) -> Self {
        CostTable {
            forward: vec![forward.to_vec(); microbatches as usize],
            bytes: vec![bytes.to_vec(); microbatches as usize],
            backward_factor,
            weight_share: 0.5,
        }
    }

    fn forward_of(&self, a: &Action) -> f64 {
        // A unit outside the table has no defined cost: NaN makes the simulator name it.
        self.forward
            .get(a.mb.index())
            .and_then(|row| row.get(a.slice.index()))
            .copied()
            .unwrap_or(f64::NAN)
    }

    /// Duration of an action: compute from the table, communication and memory ops free.
    pub fn cost(&self, a: &Action) -> f64 {
        let f = self.forward_of(a);
        let b = f * self.backward_factor;
        match a.op {
            Op::Forward | Op::Recompute => f,
            Op::Backward => b,
            Op::BackwardInput => b * (1.0 - self.weight_share),
            Op::BackwardWeight => b * self.weight_share,
            _ => 0.0,
        }
    }

    /// Bytes of the message a send carries.
    pub fn message_bytes(&self, a: &Action) -> f64 {
        self.bytes
            .get(a.mb.index())
            .and_then(|row| row.get(a.slice.index()))
            .copied()
            .unwrap_or(f64::NAN)
    }
}
