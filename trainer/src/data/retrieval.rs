//! A synthetic long-context task: multi-query key–value retrieval (associative recall).
//!
//! Each sequence of `S + 1` tokens is a context of `D = (S + 1) / 4` key–value pairs followed by
//! query pairs that fill the rest. Keys come from the lower half of the vocabulary, values from
//! the upper half; the keys of one context are distinct, and every query repeats a context key,
//! drawn uniformly, followed by the value it had. Only the query values are scored (the loss mask
//! is 1 on the targets that are query values, 0 elsewhere). A query key and its answer can be the
//! whole context apart, and the answer exists nowhere but in that context, so a model that does
//! not use its long context scores chance, `1 / (V/2)`; one that does can reach 100 %.
//!
//! ```text
//!  k₁ v₁ k₂ v₂ … k_D v_D | kq₁ vq₁ kq₂ vq₂ …      (mask on the targets vq₁, vq₂, …)
//! ```

use candle_core::{Device, Tensor};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Smallest vocabulary the task supports: at least two keys and two values.
pub const MIN_VOCAB: usize = 4;
/// Smallest sequence: one context pair and one query pair (`S + 1 ≥ 4`).
pub const MIN_SEQ_LEN: usize = 3;

/// One sequence and its loss mask.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalSequence {
    /// `S + 1` tokens.
    pub tokens: Vec<u32>,
    /// `S` weights, one per target `tokens[i + 1]`: 1 on query values, 0 elsewhere.
    pub mask: Vec<f32>,
}

/// A seeded generator of retrieval sequences over `vocab` tokens.
#[derive(Debug, Clone)]
pub struct RetrievalSource {
    vocab: usize,
    rng: ChaCha8Rng,
}

impl RetrievalSource {
    /// The generator for a model of `vocab` tokens, or an error naming what would be valid.
    pub fn new(vocab: usize, seed: u64) -> anyhow::Result<Self> {
        if vocab < MIN_VOCAB {
            anyhow::bail!(
                "the retrieval task needs model.vocab ≥ {MIN_VOCAB} (half keys, half values), got {vocab}"
            );
        }
        Ok(RetrievalSource {
            vocab,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    fn keys(&self) -> usize {
        self.vocab / 2
    }

    /// Context pairs in a sequence of `seq_len` (+1) tokens: half the tokens, at most one pair per
    /// distinct key.
    pub fn context_pairs(&self, seq_len: usize) -> usize {
        ((seq_len + 1) / 4).clamp(1, self.keys())
    }

    /// Chance accuracy of a model that ignores the context.
    pub fn chance(&self) -> f64 {
        1.0 / (self.vocab - self.keys()) as f64
    }

    /// Position in the stream (for checkpoints).
    pub fn position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// Moves to a saved position.
    pub fn seek(&mut self, position: u128) {
        self.rng.set_word_pos(position);
    }

    /// One sequence of `seq_len + 1` tokens (`seq_len ≥ 3`).
    pub fn sequence(&mut self, seq_len: usize) -> anyhow::Result<RetrievalSequence> {
        if seq_len < MIN_SEQ_LEN {
            anyhow::bail!(
                "the retrieval task needs data.seq_len ≥ {MIN_SEQ_LEN} (one pair and one query), got {seq_len}"
            );
        }
        let (keys, pairs) = (self.keys(), self.context_pairs(seq_len));
        let values = (self.vocab - keys) as u32;
        let context_keys = sample(&mut self.rng, keys, pairs).into_vec();
        let context: Vec<(u32, u32)> = context_keys
            .into_iter()
            .map(|k| (k as u32, keys as u32 + self.rng.random_range(0..values)))
            .collect();
        let mut tokens = Vec::with_capacity(seq_len + 1);
        let mut mask = vec![0f32; seq_len];
        for &(k, v) in &context {
            tokens.extend([k, v]);
        }
        while tokens.len() < seq_len + 1 {
            let (k, v) = context[self.rng.random_range(0..pairs)];
            tokens.push(k);
            if tokens.len() < seq_len + 1 {
                // Target index `i` scores `tokens[i + 1]`: this value's target index is len − 1.
                mask[tokens.len() - 1] = 1.0;
                tokens.push(v);
            }
        }
        Ok(RetrievalSequence { tokens, mask })
    }

    /// `microbatches` pairs of (tokens `[batch, seq_len + 1]` u32, mask `[batch, seq_len]` f32).
    pub fn batch(
        &mut self,
        microbatches: usize,
        batch: usize,
        seq_len: usize,
        device: &Device,
    ) -> anyhow::Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut all_tokens = Vec::with_capacity(microbatches);
        let mut all_masks = Vec::with_capacity(microbatches);
        for _ in 0..microbatches {
            let mut tokens = Vec::with_capacity(batch * (seq_len + 1));
            let mut mask = Vec::with_capacity(batch * seq_len);
            for _ in 0..batch {
                let seq = self.sequence(seq_len)?;
                tokens.extend(seq.tokens);
                mask.extend(seq.mask);
            }
            all_tokens.push(Tensor::from_vec(tokens, (batch, seq_len + 1), device)?);
            all_masks.push(Tensor::from_vec(mask, (batch, seq_len), device)?);
        }
        Ok((all_tokens, all_masks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scored_target_is_the_value_of_its_key_in_the_context() {
        let mut src = RetrievalSource::new(64, 3).unwrap();
        for seq_len in [3, 4, 7, 64, 255] {
            let s = src.sequence(seq_len).unwrap();
            assert_eq!((s.tokens.len(), s.mask.len()), (seq_len + 1, seq_len));
            let pairs = src.context_pairs(seq_len);
            let context: Vec<(u32, u32)> = s.tokens[..2 * pairs]
                .chunks(2)
                .map(|c| (c[0], c[1]))
                .collect();
            let mut keys: Vec<u32> = context.iter().map(|c| c.0).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), pairs, "context keys are distinct");
            assert!(context
                .iter()
                .all(|&(k, v)| k < 32 && (32..64).contains(&v)));
            let scored: Vec<usize> = (0..seq_len).filter(|&i| s.mask[i] == 1.0).collect();
            assert!(!scored.is_empty());
            for i in scored {
                assert!(i >= 2 * pairs, "only queries are scored");
                let (key, answer) = (s.tokens[i], s.tokens[i + 1]);
                assert_eq!(context.iter().find(|c| c.0 == key).unwrap().1, answer);
            }
        }
    }

    #[test]
    fn same_seed_same_stream_and_seek_replays_it() {
        let mut a = RetrievalSource::new(32, 9).unwrap();
        let at = a.position();
        let first = a.sequence(40).unwrap();
        let mut b = RetrievalSource::new(32, 9).unwrap();
        assert_eq!(b.sequence(40).unwrap(), first);
        a.seek(at);
        assert_eq!(a.sequence(40).unwrap(), first);
        assert_ne!(
            RetrievalSource::new(32, 10).unwrap().sequence(40).unwrap(),
            first
        );
    }

    #[test]
    fn too_small_vocab_or_sequence_is_an_error_naming_it() {
        let e = RetrievalSource::new(3, 0).unwrap_err().to_string();
        assert!(e.contains("model.vocab ≥ 4") && e.contains("got 3"), "{e}");
        let e = RetrievalSource::new(8, 0).unwrap().sequence(2).unwrap_err();
        assert!(e.to_string().contains("data.seq_len ≥ 3"), "{e}");
    }
}
