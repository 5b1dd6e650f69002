//! Passkey retrieval: a number hidden in filler at a chosen depth, asked for at the end — the
//! standard check that a context extension works (Mohtashami & Jaggi's landmark-attention probe,
//! used by position interpolation, YaRN and LongLoRA).
//!
//! A sequence of `S + 1` tokens is filler with the key's block at `depth` (0: first, 1: last)
//! and ends with a question whose answer is the key; only the answer's tokens are scored. A
//! model answers when every answer token is its most likely next token: with the answer given
//! as context (teacher forcing) that is exactly when greedy decoding would write the key, so one
//! forward scores it.
//!
//! Two prompt forms:
//! - **text**, with a tokenizer: the usual English prompt ("There is an important info hidden
//!   inside a lot of irrelevant text… The pass key is 68127. Remember it…"), each piece
//!   tokenized once and the filler's tokens repeated to length;
//! - **tokens**, without one (a model trained on token ids): digits as `10 · place + value`
//!   (a digit token names its place, so each answer token is one attention hop from its copy
//!   rather than the two-layer induction circuit a bare digit needs; see `retrieval`), a key
//!   marker, a question marker and a fixed 12-token filler cycle: 64 tokens in all.
//!
//! ```text
//!  filler … K d₁ … d₅ filler … Q d₁ … d₅      (mask on the answer d₁ … d₅)
//! ```

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use super::MaskedShape;
use crate::error::{fail, Error, Result};

/// Digits of a key.
pub const DIGITS: usize = 5;
/// Filler tokens of the token form (one "sentence" cycle).
const FILLER_CYCLE: u32 = 12;
/// Key marker of the token form (after the `10 · DIGITS` digit tokens).
const KEY_MARK: u32 = 10 * DIGITS as u32;
/// Question marker of the token form.
const QUESTION_MARK: u32 = KEY_MARK + 1;
/// Vocabulary the token form needs: digits, two markers, the filler cycle.
pub const MIN_VOCAB: usize = (QUESTION_MARK + 1 + FILLER_CYCLE) as usize;

const INTRO: &str = "There is an important info hidden inside a lot of irrelevant text. Find it \
                     and memorize it. I will quiz you about the important information there.";
const FILLER: &str =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const QUESTION: &str = " What is the pass key? The pass key is";

/// One probe sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct PasskeySequence {
    /// `S + 1` tokens.
    pub tokens: Vec<u32>,
    /// `S` target weights: 1 on the answer's tokens.
    pub mask: Vec<f32>,
}

/// The prompt's pieces as token ids.
#[derive(Debug, Clone)]
enum Form {
    Tokens,
    Text {
        tokenizer: Box<Tokenizer>,
        intro: Vec<u32>,
        filler: Vec<u32>,
        question: Vec<u32>,
    },
}

/// A seeded generator of passkey sequences.
#[derive(Debug, Clone)]
pub struct PasskeySource {
    form: Form,
    rng: ChaCha8Rng,
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| Error::Data(format!("tokenizing the passkey prompt: {e}")))?
        .get_ids()
        .to_vec())
}

impl PasskeySource {
    /// The token form for a model of `vocab` tokens, or an error naming what would be valid.
    pub fn tokens(vocab: usize, seed: u64) -> Result<Self> {
        if vocab < MIN_VOCAB {
            fail!(
                Config,
                "the passkey task without a tokenizer needs model.vocab ≥ {MIN_VOCAB} \
                 ({DIGITS} places × 10 digits, two markers, {FILLER_CYCLE} filler tokens), got \
                 {vocab}"
            );
        }
        Ok(PasskeySource {
            form: Form::Tokens,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The text form, tokenized with `tokenizer`.
    pub fn text(tokenizer: Tokenizer, seed: u64) -> Result<Self> {
        let intro = encode(&tokenizer, INTRO)?;
        let filler = encode(&tokenizer, FILLER)?;
        let question = encode(&tokenizer, QUESTION)?;
        if filler.is_empty() {
            fail!(
                Data,
                "the tokenizer encodes the passkey filler as no tokens"
            );
        }
        Ok(PasskeySource {
            form: Form::Text {
                tokenizer: Box::new(tokenizer),
                intro,
                filler,
                question,
            },
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// Position in the stream (for checkpoints).
    pub fn position(&self) -> u128 {
        self.rng.get_word_pos()
    }

    /// Moves to a saved position.
    pub fn seek(&mut self, position: u128) {
        self.rng.set_word_pos(position);
    }

    /// The key's digits, the first not 0 (a five-digit number).
    fn draw_key(&mut self) -> [u32; DIGITS] {
        let mut key = [0; DIGITS];
        for (i, d) in key.iter_mut().enumerate() {
            *d = self.rng.random_range(u32::from(i == 0)..10);
        }
        key
    }

    /// The blocks around the filler: `(before, key block, question, answer)`.
    fn blocks(&self, key: &[u32; DIGITS]) -> Result<[Vec<u32>; 4]> {
        Ok(match &self.form {
            Form::Tokens => {
                let digits: Vec<u32> = (0..DIGITS as u32)
                    .map(|i| 10 * i + key[i as usize])
                    .collect();
                let keyed = std::iter::once(KEY_MARK)
                    .chain(digits.iter().copied())
                    .collect();
                [Vec::new(), keyed, vec![QUESTION_MARK], digits]
            }
            Form::Text {
                tokenizer,
                intro,
                question,
                ..
            } => {
                let number: String = key.iter().map(|d| char::from(b'0' + *d as u8)).collect();
                let keyed =
                    format!(" The pass key is {number}. Remember it. {number} is the pass key.");
                let answer = encode(tokenizer, &format!(" {number}"))?;
                // A tokenizer that cannot spell the key (unknown tokens) would make the probe
                // score a guess at `[UNK]`.
                let spelled = tokenizer
                    .decode(&answer, true)
                    .map_err(|e| Error::Data(format!("decoding the pass key: {e}")))?;
                if spelled.replace(' ', "") != number {
                    fail!(
                        Data,
                        "the tokenizer cannot spell the pass key {number}: its tokens {answer:?} \
                         decode as {spelled:?}"
                    );
                }
                [
                    intro.clone(),
                    encode(tokenizer, &keyed)?,
                    question.clone(),
                    answer,
                ]
            }
        })
    }

    /// Filler token `i` (the filler repeated without end).
    fn filler(&self, i: usize) -> u32 {
        match &self.form {
            Form::Tokens => KEY_MARK + 2 + (i as u32 % FILLER_CYCLE),
            Form::Text { filler, .. } => filler[i % filler.len()],
        }
    }

    /// One sequence of `seq_len + 1` tokens with a fresh key at `depth` (0 to 1) of the filler.
    pub fn sequence_at(&mut self, seq_len: usize, depth: f64) -> Result<PasskeySequence> {
        if !(0.0..=1.0).contains(&depth) {
            fail!(
                Config,
                "passkey depth {depth} is not in 0 to 1 (0: the start, 1: the end)"
            );
        }
        let key = self.draw_key();
        let [intro, keyed, question, answer] = self.blocks(&key)?;
        let fixed = intro.len() + keyed.len() + question.len() + answer.len();
        let Some(filler) = (seq_len + 1).checked_sub(fixed) else {
            fail!(
                Config,
                "a passkey sequence needs at least {} tokens (its prompt without filler), got \
                 seq_len {seq_len}",
                fixed - 1
            );
        };
        let before = (depth * filler as f64).round() as usize;
        let mut tokens = intro;
        tokens.extend((0..before).map(|i| self.filler(i)));
        tokens.extend(keyed);
        tokens.extend((before..filler).map(|i| self.filler(i)));
        tokens.extend(question);
        let answer_at = tokens.len();
        tokens.extend(answer);
        // Target `t` predicts `tokens[t + 1]`: the answer's targets are `answer_at − 1 ..`.
        let mask = (0..seq_len)
            .map(|t| f32::from(u8::from(t + 1 >= answer_at)))
            .collect();
        Ok(PasskeySequence { tokens, mask })
    }

    /// One sequence at a depth drawn uniformly (training data).
    pub fn sequence(&mut self, seq_len: usize) -> Result<PasskeySequence> {
        let depth = self.rng.random_range(0.0..=1.0);
        self.sequence_at(seq_len, depth)
    }
}

impl PasskeySource {
    /// `microbatches` pairs of (tokens `[batch, seq_len + 1]` u32, mask `[batch, seq_len]` f32),
    /// each sequence at a random depth.
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
    fn the_answer_is_the_key_and_only_the_answer_is_scored() {
        let mut src = PasskeySource::tokens(64, 5).unwrap();
        for (seq_len, depth) in [(11, 0.0), (11, 1.0), (40, 0.5), (200, 0.25), (200, 1.0)] {
            let s = src.sequence_at(seq_len, depth).unwrap();
            assert_eq!((s.tokens.len(), s.mask.len()), (seq_len + 1, seq_len));
            let at = s.tokens.iter().position(|&t| t == KEY_MARK).unwrap();
            let key = &s.tokens[at + 1..at + 1 + DIGITS];
            assert_eq!(
                &s.tokens[seq_len + 1 - DIGITS..],
                key,
                "the answer repeats the key"
            );
            assert_eq!(s.tokens[seq_len - DIGITS], QUESTION_MARK);
            let scored: Vec<usize> = (0..seq_len).filter(|&t| s.mask[t] == 1.0).collect();
            assert_eq!(scored, (seq_len - DIGITS..seq_len).collect::<Vec<_>>());
            // The key sits at `depth` of the filler.
            let filler = seq_len + 1 - 2 * (DIGITS + 1);
            assert_eq!(
                at,
                (depth * filler as f64).round() as usize,
                "{seq_len} {depth}"
            );
            assert!(key.iter().enumerate().all(|(i, &d)| d / 10 == i as u32));
        }
    }

    #[test]
    fn bad_depths_lengths_and_vocabularies_are_named() {
        let mut src = PasskeySource::tokens(64, 5).unwrap();
        let e = src.sequence_at(10, 0.5).unwrap_err().to_string();
        assert!(e.contains("at least 11") && e.contains("seq_len 10"), "{e}");
        let e = src.sequence_at(64, 1.5).unwrap_err().to_string();
        assert!(e.contains("depth 1.5"), "{e}");
        let e = PasskeySource::tokens(63, 1).unwrap_err().to_string();
        assert!(e.contains("≥ 64") && e.contains("63"), "{e}");
    }

    /// A word-level tokenizer that knows the prompt's words, and digits one by one unless
    /// `digits` is false.
    fn prompt_tokenizer(digits: bool) -> Tokenizer {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::{digits::Digits, sequence::Sequence};
        use tokenizers::pre_tokenizers::{whitespace::Whitespace, PreTokenizerWrapper};
        let text = [INTRO, FILLER, QUESTION, " The pass key is Remember it"].concat();
        let mut words: Vec<String> = text
            .split(|c: char| c.is_whitespace() || c == '.' || c == '?')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        words.extend([".", "?", "[UNK]"].map(String::from));
        if digits {
            words.extend((0..10).map(|d| d.to_string()));
        }
        words.sort();
        words.dedup();
        let vocab = words
            .into_iter()
            .enumerate()
            .map(|(i, w)| (w, i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            PreTokenizerWrapper::Whitespace(Whitespace {}),
            PreTokenizerWrapper::Digits(Digits::new(true)),
        ])));
        tokenizer
    }

    #[test]
    fn the_text_prompt_hides_the_key_and_asks_for_it() {
        let tokenizer = prompt_tokenizer(true);
        let mut src = PasskeySource::text(tokenizer.clone(), 3).unwrap();
        for depth in [0.0, 0.5, 1.0] {
            let s = src.sequence_at(300, depth).unwrap();
            assert_eq!(s.tokens.len(), 301);
            let scored: Vec<u32> = (0..300)
                .filter(|&t| s.mask[t] == 1.0)
                .map(|t| s.tokens[t + 1])
                .collect();
            assert_eq!(scored.len(), DIGITS, "five digit tokens are scored");
            let text = tokenizer.decode(&s.tokens, true).unwrap();
            let key = tokenizer.decode(&scored, true).unwrap().replace(' ', "");
            assert!(text.starts_with("There is an important info"), "{text}");
            // The word-level decoder puts a space between tokens, digits included.
            let spaced: Vec<String> = key.chars().map(String::from).collect();
            let spaced = spaced.join(" ");
            assert!(
                text.contains(&format!("The pass key is {spaced}")),
                "{text}"
            );
            let question = format!("What is the pass key ? The pass key is {spaced}");
            assert!(text.ends_with(&question), "{text}");
        }
        let e = PasskeySource::text(prompt_tokenizer(false), 3)
            .unwrap()
            .sequence_at(300, 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot spell the pass key"), "{e}");
    }

    #[test]
    fn same_seed_same_keys_and_seek_replays_them() {
        let mut a = PasskeySource::tokens(64, 9).unwrap();
        let at = a.position();
        let first = a.sequence(50).unwrap();
        let mut b = PasskeySource::tokens(64, 9).unwrap();
        assert_eq!(b.sequence(50).unwrap(), first);
        a.seek(at);
        assert_eq!(a.sequence(50).unwrap(), first);
        assert_ne!(
            a.sequence(50).unwrap(),
            first,
            "the next key is another draw"
        );
    }
}
