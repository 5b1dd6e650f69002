//! Generated training data (no downloads): a random first-order Markov source.
//!
//! Each token allows only four next tokens with fixed probabilities (0.55, 0.25, 0.12, 0.08), so
//! the best achievable loss is the source's entropy (≈ 1.13 nats) while a model that ignores the
//! context is stuck at `ln V` (5.55 for 256 tokens). The table has `V` rows, small enough that a
//! tiny model learns it within a few dozen steps: a clearly falling loss. (An order-2 table has
//! `V²` rows and needs far more data than a demo sees.)

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Probabilities of the four allowed successors.
pub const SUCCESSOR_PROBS: [f64; 4] = [0.55, 0.25, 0.12, 0.08];

/// Entropy of the source in nats: the loss floor.
pub fn entropy() -> f64 {
    -SUCCESSOR_PROBS.iter().map(|p| p * p.ln()).sum::<f64>()
}

/// A seeded first-order Markov source over `vocab` tokens.
#[derive(Debug, Clone)]
pub struct MarkovSource {
    vocab: usize,
    successors: Vec<[u32; 4]>,
    rng: ChaCha8Rng,
}

impl MarkovSource {
    /// The source for `vocab` tokens; `seed` fixes both the transition table and the stream.
    pub fn new(vocab: usize, seed: u64) -> Self {
        let mut table_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_7ab1e);
        let successors = (0..vocab * vocab)
            .map(|_| std::array::from_fn(|_| table_rng.random_range(0..vocab as u32)))
            .collect();
        MarkovSource {
            vocab,
            successors,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    fn next_token(&mut self, previous: u32) -> u32 {
        let options = self.successors[previous as usize];
        let mut u: f64 = self.rng.random();
        for (token, p) in options.iter().zip(SUCCESSOR_PROBS) {
            if u < p {
                return *token;
            }
            u -= p;
        }
        options[3]
    }

    /// Position in the token stream (ChaCha word position): saved in checkpoints so a resumed run
    /// draws exactly the batches an uninterrupted one would.
    pub fn position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// Moves the stream to a position from [`MarkovSource::position`].
    pub fn seek(&mut self, position: u128) {
        self.rng.set_word_pos(position);
    }

    /// One sequence of `len` tokens.
    pub fn sequence(&mut self, len: usize) -> Vec<u32> {
        let mut seq = Vec::with_capacity(len);
        let mut previous = self.rng.random_range(0..self.vocab as u32);
        for _ in 0..len {
            previous = self.next_token(previous);
            seq.push(previous);
        }
        seq
    }

    /// `microbatches` tensors of `[batch, seq_len + 1]` tokens (inputs and shifted targets).
    pub fn batch(
        &mut self,
        microbatches: usize,
        batch: usize,
        seq_len: usize,
        device: &Device,
    ) -> candle_core::Result<Vec<Tensor>> {
        (0..microbatches)
            .map(|_| {
                let rows: Vec<u32> = (0..batch)
                    .flat_map(|_| self.sequence(seq_len + 1))
                    .collect();
                Tensor::from_vec(rows, (batch, seq_len + 1), device)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_tokens_in_range() {
        let mut a = MarkovSource::new(50, 7);
        let mut b = MarkovSource::new(50, 7);
        let (sa, sb) = (a.sequence(200), b.sequence(200));
        assert_eq!(sa, sb);
        assert!(sa.iter().all(|&t| t < 50));
        assert_ne!(sa, MarkovSource::new(50, 8).sequence(200));
    }

    #[test]
    fn entropy_is_well_below_uniform() {
        assert!((entropy() - 1.1319).abs() < 1e-3, "{}", entropy());
        assert!(entropy() < (256f64).ln() / 4.0);
    }
}
