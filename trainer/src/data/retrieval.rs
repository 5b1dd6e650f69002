//! A synthetic long-context task: multi-query key–value retrieval (associative recall).
//!
//! Each sequence of `S + 1` tokens opens with a context of `P` *fact* tokens, each binding one of
//! `n` keys to one of `n` values (distinct keys, distinct values, drawn afresh per sequence),
//! followed by queries that fill the rest: a *query* token naming a key, then the *answer* token
//! of the value the context bound it to. Only answers are scored (the loss mask is 1 on targets
//! that are answers). The binding exists nowhere but in that sequence's context, which can be
//! the whole sequence away, so a model that ignores the context scores chance, `1/n`; one that
//! looks the key up scores 100 %.
//!
//! ```text
//!  f(k₁,v₁) f(k₂,v₂) … f(k_P,v_P) | q(kq₁) a(vq₁) q(kq₂) a(vq₂) …   (mask on a(vq₁), a(vq₂), …)
//! ```
//!
//! A fact is one token (`n + k·n + v`) rather than a key token followed by a value token: then
//! one attention hop (query → the fact that holds its key) answers, instead of the two-layer
//! induction circuit a split pair needs, which small CPU models take millions of sequences to
//! form. The vocabulary is `n` query tokens, `n²` fact tokens and `n` answer tokens, with `n` the
//! largest that fits the model's vocabulary; the remaining tokens are unused.

use super::MaskedShape;
use crate::error::{fail, Result};
use candle_core::{Device, Tensor};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Smallest vocabulary the task supports: two keys, two values (2 + 4 + 2 tokens).
pub const MIN_VOCAB: usize = 8;
/// Smallest sequence: one fact and one query pair (`S + 1 ≥ 3`).
pub const MIN_SEQ_LEN: usize = 2;

/// One sequence and its loss mask.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalSequence {
    /// `S + 1` tokens.
    pub tokens: Vec<u32>,
    /// `S` weights, one per target `tokens[i + 1]`: 1 on answers, 0 elsewhere.
    pub mask: Vec<f32>,
}

/// A seeded generator of retrieval sequences over `vocab` tokens.
#[derive(Debug, Clone)]
pub struct RetrievalSource {
    /// Keys (and values) per sequence.
    n: usize,
    rng: ChaCha8Rng,
}

impl RetrievalSource {
    /// The generator for a model of `vocab` tokens, or an error naming what would be valid.
    pub fn new(vocab: usize, seed: u64) -> Result<Self> {
        if vocab < MIN_VOCAB {
            fail!(Config,
                "the retrieval task needs model.vocab ≥ {MIN_VOCAB} (n queries + n² facts + n answers, n ≥ 2), got {vocab}"
            );
        }
        let n = (2..)
            .take_while(|n| n * n + 2 * n <= vocab)
            .last()
            .unwrap_or(2);
        Ok(RetrievalSource {
            n,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// Keys (and values) the task draws from.
    pub fn keys(&self) -> usize {
        self.n
    }

    /// The query token of key `k`.
    pub fn query(&self, k: usize) -> u32 {
        k as u32
    }

    /// The fact token binding key `k` to value `v`.
    pub fn fact(&self, k: usize, v: usize) -> u32 {
        (self.n + k * self.n + v) as u32
    }

    /// The answer token of value `v`.
    pub fn answer(&self, v: usize) -> u32 {
        (self.n + self.n * self.n + v) as u32
    }

    /// Facts in a sequence of `seq_len` (+1) tokens: a quarter of it, at most one per key.
    pub fn context_facts(&self, seq_len: usize) -> usize {
        ((seq_len + 1) / 4).clamp(1, self.n)
    }

    /// Chance accuracy of a model that ignores the context.
    pub fn chance(&self) -> f64 {
        1.0 / self.n as f64
    }

    /// Position in the stream (for checkpoints).
    pub fn position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// Moves to a saved position.
    pub fn seek(&mut self, position: u128) {
        self.rng.set_word_pos(position);
    }

    /// One sequence of `seq_len + 1` tokens (`seq_len ≥ 2`).
    pub fn sequence(&mut self, seq_len: usize) -> Result<RetrievalSequence> {
        if seq_len < MIN_SEQ_LEN {
            fail!(Config,
                "the retrieval task needs data.seq_len ≥ {MIN_SEQ_LEN} (one fact and one query), got {seq_len}"
            );
        }
        let (n, facts) = (self.n, self.context_facts(seq_len));
        let keys = sample(&mut self.rng, n, facts).into_vec();
        let values = sample(&mut self.rng, n, facts).into_vec();
        let mut tokens: Vec<u32> = keys
            .iter()
            .zip(&values)
            .map(|(&k, &v)| self.fact(k, v))
            .collect();
        let mut mask = vec![0f32; seq_len];
        while tokens.len() < seq_len + 1 {
            let i = self.rng.random_range(0..facts);
            tokens.push(self.query(keys[i]));
            if tokens.len() < seq_len + 1 {
                // Target index `t` scores `tokens[t + 1]`: this answer's target index is len − 1.
                mask[tokens.len() - 1] = 1.0;
                tokens.push(self.answer(values[i]));
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
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let shape = MaskedShape {
            microbatches,
            batch,
            seq_len,
        };
        shape.draw(device, || {
            self.sequence(seq_len).map(|s| (s.tokens, s.mask))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scored_target_is_the_value_its_key_has_in_the_context() {
        let mut src = RetrievalSource::new(64, 3).unwrap();
        let n = src.keys();
        assert_eq!(n, 7, "7 + 49 + 7 = 63 ≤ 64 < 8 + 64 + 8");
        for seq_len in [2, 3, 4, 7, 64, 255] {
            let s = src.sequence(seq_len).unwrap();
            assert_eq!((s.tokens.len(), s.mask.len()), (seq_len + 1, seq_len));
            let facts = src.context_facts(seq_len);
            let bound: Vec<(u32, u32)> = s.tokens[..facts]
                .iter()
                .map(|&f| {
                    let kv = f as usize - n;
                    assert!(kv < n * n, "the context holds fact tokens only");
                    ((kv / n) as u32, (kv % n) as u32)
                })
                .collect();
            let mut keys: Vec<u32> = bound.iter().map(|b| b.0).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), facts, "context keys are distinct");
            let scored: Vec<usize> = (0..seq_len).filter(|&i| s.mask[i] == 1.0).collect();
            assert!(!scored.is_empty());
            for i in scored {
                assert!(i >= facts, "only answers after the context are scored");
                let (query, answer) = (s.tokens[i], s.tokens[i + 1]);
                let value = bound.iter().find(|b| b.0 == query).unwrap().1;
                assert_eq!(answer, src.answer(value as usize));
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
        let e = RetrievalSource::new(7, 0).unwrap_err().to_string();
        assert!(e.contains("model.vocab ≥ 8") && e.contains("got 7"), "{e}");
        let e = RetrievalSource::new(8, 0).unwrap().sequence(1).unwrap_err();
        assert!(e.to_string().contains("data.seq_len ≥ 2"), "{e}");
    }
}
