//! Each action of a schedule priced in FLOPs: a compute runs its virtual stage's layers over its
//! slice's tokens (SPEC §1: linear work per token, attention per causal query–key pair), the
//! last virtual stage also the LM head; a backward costs twice a forward (its input-gradient
//! and weight pieces once each). With the head vocabulary-parallel, each stage's `HEAD` carries
//! its `1/p` share of the head's forward and backward instead. The same prices serve the
//! planner's simulations and the trainer's (its summary, the exchange's pairing).

use std::ops::Range;

use seqpipe_schedule::{Action, Op};
use seqpipe_slicing::{CostModel, CostUnit, ModelShape};

/// The FLOP prices of one pipeline's actions.
#[derive(Debug, Clone)]
pub struct FlopCosts {
    layer: CostModel,
    /// Layers per virtual stage.
    layers: Vec<f64>,
    /// Token ranges of a sequence's slices.
    slices: Vec<Range<u64>>,
    stages: u32,
    /// The LM head's forward FLOPs per token.
    head: f64,
    vocab_parallel: bool,
}

impl FlopCosts {
    /// Prices for `shape` on `stages` physical stages holding `layers[k]` layers on virtual
    /// stage `k`, sequences cut into `slices`.
    pub fn new(
        shape: &ModelShape,
        stages: u32,
        layers: &[usize],
        slices: &[Range<u64>],
        vocab_parallel: bool,
    ) -> Self {
        FlopCosts {
            layer: CostModel {
                per_pair: shape.layer_attention_flops_per_pair(),
                per_token: shape.layer_linear_flops_per_token(),
                per_slice: 0.0,
                backward_factor: 2.0,
                unit: CostUnit::Flops,
            },
            layers: layers.iter().map(|&l| l as f64).collect(),
            slices: slices.to_vec(),
            stages,
            head: 2.0 * (shape.hidden * shape.vocab) as f64,
            vocab_parallel,
        }
    }

    fn tokens(&self, a: &Action) -> f64 {
        let r = &self.slices[a.slice.index()];
        (r.end - r.start) as f64
    }

    fn forward(&self, a: &Action) -> f64 {
        let r = &self.slices[a.slice.index()];
        let k = a.virtual_stage(self.stages).index();
        let last = k + 1 == self.layers.len();
        let head = if last && !self.vocab_parallel {
            self.head * self.tokens(a)
        } else {
            0.0
        };
        self.layers[k] * self.layer.forward(r.start, r.end) + head
    }

    /// `a`'s FLOPs.
    pub fn cost(&self, a: &Action) -> f64 {
        match a.op {
            Op::Forward | Op::BackwardInput | Op::BackwardWeight => self.forward(a),
            Op::Backward => 2.0 * self.forward(a),
            Op::VocabHead => 3.0 * self.head * self.tokens(a) / f64::from(self.stages),
            _ => 0.0,
        }
    }

    /// What one token of its prefix costs `a`: its slice's queries against one key in every
    /// layer of its virtual stage, the scores and their gradients in a backward (the attention
    /// exchange moves such columns).
    pub fn column(&self, a: &Action) -> f64 {
        let weight = match a.op {
            Op::Forward => 1.0,
            op if op.makes_input_grad() => 2.0,
            _ => 0.0,
        };
        let k = a.virtual_stage(self.stages).index();
        weight * self.layers[k] * self.layer.per_pair * self.tokens(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqpipe_schedule::{Stage, Unit};

    /// A backward costs twice its forward; sharding the head moves it off the last stage's
    /// forward into the stages' `HEAD`s, which together carry its forward and backward.
    #[test]
    fn the_head_moves_into_the_shares_and_backwards_cost_double() {
        let shape = seqpipe_slicing::preset("llama-7b").unwrap();
        let slices = [0..512u64, 512..1024];
        let whole = FlopCosts::new(&shape, 2, &[16, 16], &slices, false);
        let shared = FlopCosts::new(&shape, 2, &[16, 16], &slices, true);
        let on = |stage, op| Action::new(Stage(stage), Unit::new(0, 1, 0), op);
        let (f, b) = (on(1, Op::Forward), on(1, Op::Backward));
        assert_eq!(whole.cost(&b), 2.0 * whole.cost(&f));
        let head = 2.0 * (shape.hidden * shape.vocab) as f64 * 512.0;
        assert!((whole.cost(&f) - shared.cost(&f) - head).abs() < 1e-6 * head);
        let shares: f64 = (0..2).map(|r| shared.cost(&on(r, Op::VocabHead))).sum();
        assert!((shares - 3.0 * head).abs() < 1e-6 * head);
        // One prefix token: the slice's 512 queries in 16 layers, twice in a backward.
        let per_pair = shape.layer_attention_flops_per_pair();
        assert_eq!(whole.column(&f), 16.0 * per_pair * 512.0);
        assert_eq!(whole.column(&b), 2.0 * whole.column(&f));
    }
}
