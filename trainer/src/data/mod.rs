//! Training data: the generated Markov corpus (the default, no files), token files, and text or
//! JSONL tokenized with a Hugging Face tokenizer, behind one [`DataSource`].

pub mod markov;
pub mod stream;
pub mod text;

use candle_core::{Device, Tensor};

pub use markov::{entropy, MarkovSource, SUCCESSOR_PROBS};
pub use stream::TokenStream;

use crate::config::{DataConfig, DataKind};

/// Any of the data sources, with a position a checkpoint can save.
pub enum DataSource {
    /// Generated first-order Markov text.
    Markov(Box<MarkovSource>),
    /// A token file or tokenized text.
    Stream(TokenStream),
}

impl DataSource {
    /// Opens the configured source for a model of `vocab` tokens.
    pub fn open(cfg: &DataConfig, vocab: usize, seed: u64) -> anyhow::Result<Self> {
        let path = || {
            cfg.path
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("data.kind = {:?} needs data.path", cfg.kind))
        };
        Ok(match cfg.kind {
            DataKind::Markov => DataSource::Markov(Box::new(MarkovSource::new(vocab, seed))),
            DataKind::Tokens => {
                DataSource::Stream(TokenStream::open_file(path()?, cfg.token_bytes, vocab)?)
            }
            DataKind::Text => {
                let tokenizer_path = cfg.tokenizer.as_deref().ok_or_else(|| {
                    anyhow::anyhow!("data.kind = \"text\" needs data.tokenizer (a tokenizer.json)")
                })?;
                let tokenizer = text::load_tokenizer(tokenizer_path)?;
                let docs = text::documents(path()?, &cfg.jsonl_field)?;
                let tokens = text::tokenize(&tokenizer, &docs)?;
                DataSource::Stream(TokenStream::from_tokens(
                    tokens,
                    vocab,
                    path()?.display().to_string(),
                )?)
            }
        })
    }

    /// `microbatches` tensors of `[batch, seq_len + 1]` tokens.
    pub fn batch(
        &mut self,
        microbatches: usize,
        batch: usize,
        seq_len: usize,
        device: &Device,
    ) -> anyhow::Result<Vec<Tensor>> {
        match self {
            DataSource::Markov(m) => Ok(m.batch(microbatches, batch, seq_len, device)?),
            DataSource::Stream(s) => (0..microbatches)
                .map(|_| {
                    let mut rows = Vec::with_capacity(batch * (seq_len + 1));
                    for _ in 0..batch {
                        rows.extend(s.next_window(seq_len + 1)?);
                    }
                    Ok(Tensor::from_vec(rows, (batch, seq_len + 1), device)?)
                })
                .collect(),
        }
    }

    /// Position in the stream (for checkpoints).
    pub fn position(&self) -> u128 {
        match self {
            DataSource::Markov(m) => m.position(),
            DataSource::Stream(s) => s.position(),
        }
    }

    /// Moves to a saved position.
    pub fn seek(&mut self, position: u128) {
        match self {
            DataSource::Markov(m) => m.seek(position),
            DataSource::Stream(s) => s.seek(position),
        }
    }
}
