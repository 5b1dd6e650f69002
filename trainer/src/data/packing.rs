//! Masked packing: rows of a token stream hold several documents, and each is trained as its own
//! causal sequence.
//!
//! Documents end with an end-of-document token (EOS). In a row of `seq_len + 1` tokens, a token
//! after an EOS starts the next document: attention stays inside each document, RoPE positions
//! restart at its first token ([`Documents`]), and the target after an EOS (the next
//! document's first token) is not scored. A row therefore computes exactly the loss of its
//! pieces run one by one. A document cut by the end of a row continues, from position 0, in the
//! next row (as Megatron-LM's `reset_position_ids` / `reset_attention_mask` do); two EOS tokens
//! in a row make an empty document, which scores nothing.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use seqpipe_kernels::Documents;
use serde::{Deserialize, Serialize};

use crate::config::{DataConfig, DataKind};
use crate::error::{fail, Error, Result};

use super::text;

/// How the documents of a token stream share a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Packing {
    /// Back to back, attending across document boundaries (GPT-2 / nanoGPT style): the tokens
    /// are one long text.
    #[default]
    Plain,
    /// Back to back, each document masked from the others, with its own positions.
    Masked,
}

/// The documents and the loss mask of one micro-batch of packed rows.
#[derive(Debug, Clone)]
pub struct PackedRows {
    /// Where each row's documents start.
    pub documents: Arc<Documents>,
    /// `[rows, seq_len]` f32: 0 for a target after an EOS (it starts another document).
    pub mask: Tensor,
}

/// Cuts `tokens [rows, seq_len + 1]` into documents after every `eos`.
pub fn pack_masked(tokens: &Tensor, eos: u32) -> Result<PackedRows> {
    let (rows, s1) = tokens.dims2()?;
    if s1 < 2 {
        fail!(
            Data,
            "packed rows of {s1} tokens: a row needs an input and a target"
        );
    }
    let len = s1 - 1;
    let inputs: Vec<u32> = tokens.narrow(1, 0, len)?.flatten_all()?.to_vec1()?;
    let documents = Documents::after_eos(&inputs, rows, len, eos)?;
    let weights: Vec<f32> = inputs
        .iter()
        .map(|&t| if t == eos { 0.0 } else { 1.0 })
        .collect();
    let mask = Tensor::from_vec(weights, (rows, len), &Device::Cpu)?.to_dtype(DType::F32)?;
    Ok(PackedRows {
        documents: Arc::new(documents),
        mask: mask.to_device(tokens.device())?,
    })
}

/// The end-of-document token of masked packing: `data.eos`, else a text corpus's tokenizer's
/// end-of-text token (the one put between its documents).
pub fn end_of_document(cfg: &DataConfig) -> Result<u32> {
    if let Some(eos) = cfg.eos {
        return Ok(eos);
    }
    match (cfg.kind, &cfg.tokenizer) {
        (DataKind::Text, Some(path)) => {
            text::end_of_text(&text::load_tokenizer(path)?).ok_or_else(|| {
                Error::Config(format!(
                    "data.packing = \"masked\": the tokenizer {} has none of the end-of-text \
                     tokens {:?}; set data.eos",
                    path.display(),
                    text::EOS_NAMES
                ))
            })
        }
        _ => fail!(
            Config,
            "data.packing = \"masked\" over a token file needs data.eos, the id that ends each \
             document (e.g. 50256 for GPT-2's <|endoftext|>)"
        ),
    }
}
