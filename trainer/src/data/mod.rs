//! Training data: the generated Markov corpus (the default, no files), the synthetic
//! long-context retrieval and passkey tasks, token files, and text or JSONL tokenized with a Hugging Face
//! tokenizer, behind one [`DataSource`].

pub mod markov;
pub mod packing;
pub mod passkey;
pub mod retrieval;
pub mod stream;
pub mod text;

use crate::error::{fail, Error, Result};
use candle_core::{Device, Tensor};
use seqpipe_kernels::Documents;
use std::sync::Arc;

pub use markov::{entropy, MarkovSource, SUCCESSOR_PROBS};
pub use packing::Packing;
pub use passkey::PasskeySource;
pub use retrieval::RetrievalSource;
pub use stream::TokenStream;

use crate::config::{DataConfig, DataKind};

/// Token tensors of a step's micro-batches, with loss masks where the source has them.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Per micro-batch, `[batch, seq_len + 1]` u32 tokens.
    pub tokens: Vec<Tensor>,
    /// Per micro-batch, `[batch, seq_len]` f32 weights of the targets (none: every target counts).
    pub masks: Option<Vec<Tensor>>,
    /// Per micro-batch, the documents packed in its rows (masked packing; none: plain rows).
    pub documents: Option<Vec<Arc<Documents>>>,
}

impl Batch {
    /// Targets that count in micro-batches `range`: the loss normaliser of a mean over them.
    pub fn scored_targets(&self, range: std::ops::Range<usize>) -> Result<f64> {
        match &self.masks {
            Some(masks) => masks[range]
                .iter()
                .map(|m| {
                    Ok(m.sum_all()?
                        .to_dtype(candle_core::DType::F64)?
                        .to_scalar::<f64>()?)
                })
                .sum(),
            None => self.tokens[range]
                .iter()
                .map(|t| {
                    let (b, s1) = t.dims2()?;
                    Ok((b * s1.saturating_sub(1)) as f64)
                })
                .sum(),
        }
    }
}

/// The shape of a masked source's batch.
pub(crate) struct MaskedShape {
    pub microbatches: usize,
    pub batch: usize,
    pub seq_len: usize,
}

impl MaskedShape {
    /// Tokens `[batch, seq_len + 1]` and masks `[batch, seq_len]` per micro-batch, each row one
    /// `(tokens, mask)` from `next`.
    pub fn draw(
        &self,
        device: &Device,
        mut next: impl FnMut() -> Result<(Vec<u32>, Vec<f32>)>,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let (b, s) = (self.batch, self.seq_len);
        let mut all = (Vec::new(), Vec::new());
        for _ in 0..self.microbatches {
            let (mut tokens, mut mask) =
                (Vec::with_capacity(b * (s + 1)), Vec::with_capacity(b * s));
            for _ in 0..b {
                let (t, m) = next()?;
                tokens.extend(t);
                mask.extend(m);
            }
            all.0.push(Tensor::from_vec(tokens, (b, s + 1), device)?);
            all.1.push(Tensor::from_vec(mask, (b, s), device)?);
        }
        Ok(all)
    }
}

/// Any of the data sources, with a position a checkpoint can save.
pub enum DataSource {
    /// Generated first-order Markov text.
    Markov(Box<MarkovSource>),
    /// Generated key–value retrieval sequences, scored on the answers only.
    Retrieval(Box<RetrievalSource>),
    /// Generated passkey sequences, scored on the answers only.
    Passkey(Box<PasskeySource>),
    /// A token file or tokenized text.
    Stream(TokenStream),
    /// A token file or tokenized text whose documents, ended by the token `eos`, are packed
    /// masked from each other ([`packing`]).
    Documents(TokenStream, u32),
}

impl DataSource {
    /// Opens the configured source for a model of `vocab` tokens.
    pub fn open(cfg: &DataConfig, vocab: usize, seed: u64) -> Result<Self> {
        let source = Self::open_plain(cfg, vocab, seed)?;
        match (cfg.packing, source) {
            (Packing::Plain, source) => Ok(source),
            (Packing::Masked, DataSource::Stream(stream)) => {
                let eos = packing::end_of_document(cfg)?;
                stream.check_has(eos, "the end-of-document token")?;
                Ok(DataSource::Documents(stream, eos))
            }
            (Packing::Masked, _) => fail!(
                Config,
                "data.packing = \"masked\" needs documents: data.kind = \"{}\" generates \
                 sequences without any; use data.kind = \"tokens\" or \"text\"",
                format!("{:?}", cfg.kind).to_lowercase()
            ),
        }
    }

    /// The source `cfg` names, its rows plain.
    fn open_plain(cfg: &DataConfig, vocab: usize, seed: u64) -> Result<Self> {
        let path = || {
            cfg.path
                .as_deref()
                .ok_or_else(|| Error::Config(format!("data.kind = {:?} needs data.path", cfg.kind)))
        };
        Ok(match cfg.kind {
            DataKind::Markov => DataSource::Markov(Box::new(MarkovSource::new(vocab, seed))),
            DataKind::Retrieval => {
                DataSource::Retrieval(Box::new(RetrievalSource::new(vocab, seed)?))
            }
            DataKind::Passkey => DataSource::Passkey(Box::new(match cfg.tokenizer.as_deref() {
                Some(path) => PasskeySource::text(text::load_tokenizer(path)?, seed)?,
                None => PasskeySource::tokens(vocab, seed)?,
            })),
            DataKind::Tokens => {
                DataSource::Stream(TokenStream::open_file(path()?, cfg.token_bytes, vocab)?)
            }
            DataKind::Text => {
                let tokenizer_path = cfg.tokenizer.as_deref().ok_or_else(|| {
                    Error::Config(
                        "data.kind = \"text\" needs data.tokenizer (a tokenizer.json)".into(),
                    )
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

    /// `microbatches` tensors of `[batch, seq_len + 1]` tokens, and the loss masks of sources
    /// that score only some targets.
    pub fn draw(
        &mut self,
        microbatches: usize,
        batch: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<Batch> {
        let masked = match self {
            DataSource::Retrieval(r) => Some(r.batch(microbatches, batch, seq_len, device)?),
            DataSource::Passkey(p) => Some(p.batch(microbatches, batch, seq_len, device)?),
            _ => None,
        };
        if let Some((tokens, masks)) = masked {
            return Ok(Batch {
                tokens,
                masks: Some(masks),
                documents: None,
            });
        }
        let tokens = self.batch(microbatches, batch, seq_len, device)?;
        let DataSource::Documents(_, eos) = self else {
            return Ok(Batch {
                tokens,
                masks: None,
                documents: None,
            });
        };
        let packed = tokens
            .iter()
            .map(|t| packing::pack_masked(t, *eos))
            .collect::<Result<Vec<_>>>()?;
        let (documents, masks) = packed.into_iter().map(|p| (p.documents, p.mask)).unzip();
        Ok(Batch {
            tokens,
            masks: Some(masks),
            documents: Some(documents),
        })
    }

    /// `microbatches` tensors of `[batch, seq_len + 1]` tokens (a masked source's masks dropped).
    pub fn batch(
        &mut self,
        microbatches: usize,
        batch: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<Vec<Tensor>> {
        match self {
            DataSource::Markov(m) => Ok(m.batch(microbatches, batch, seq_len, device)?),
            DataSource::Retrieval(r) => Ok(r.batch(microbatches, batch, seq_len, device)?.0),
            DataSource::Passkey(p) => Ok(p.batch(microbatches, batch, seq_len, device)?.0),
            DataSource::Stream(s) | DataSource::Documents(s, _) => (0..microbatches)
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

    /// Whole documents for one elastic iteration: documents in stream order until they hold at
    /// least `budget` tokens, each at most `max_len` tokens (a longer one is cut, its pieces
    /// trained as documents of their own). Only a source of documents has them.
    pub fn next_documents(&mut self, budget: usize, max_len: usize) -> Result<Vec<Vec<u32>>> {
        let DataSource::Documents(stream, eos) = self else {
            fail!(
                Config,
                "elastic pipelines train documents: set data.packing = \"masked\" over a token \
                 file or text corpus"
            );
        };
        if max_len == 0 {
            fail!(
                Config,
                "documents of at most 0 tokens: data.seq_len must be at least 1"
            );
        }
        let (mut docs, mut tokens) = (Vec::new(), 0);
        while tokens < budget {
            let doc = stream.next_document(*eos, max_len);
            tokens += doc.len();
            docs.push(doc);
        }
        Ok(docs)
    }

    /// Position in the stream (for checkpoints).
    pub fn position(&self) -> u128 {
        match self {
            DataSource::Markov(m) => m.position(),
            DataSource::Retrieval(r) => r.position(),
            DataSource::Passkey(p) => p.position(),
            DataSource::Stream(s) | DataSource::Documents(s, _) => s.position(),
        }
    }

    /// Moves to a saved position; a position this source cannot have reached is an error (the
    /// generated sources' ChaCha stream counts 2^68 words, then wraps; a token stream ends).
    pub fn seek(&mut self, position: u128) -> Result<()> {
        const CHACHA_WORDS: u128 = 1 << 68;
        match self {
            DataSource::Markov(_) | DataSource::Retrieval(_) | DataSource::Passkey(_)
                if position >= CHACHA_WORDS =>
            {
                fail!(
                    Data,
                    "data position {position} is past the generated stream's end (2^68 words): \
                     the checkpoint's data_position is corrupt"
                )
            }
            DataSource::Markov(m) => m.seek(position),
            DataSource::Retrieval(r) => r.seek(position),
            DataSource::Passkey(p) => p.seek(position),
            DataSource::Stream(s) | DataSource::Documents(s, _) => s.seek(position)?,
        }
        Ok(())
    }
}
