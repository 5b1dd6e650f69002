//! The data flags `train` and `eval` share.

use std::path::PathBuf;

use clap::Args;
use seqpipe_trainer::config::{DataConfig, DataKind};
use seqpipe_trainer::data::Packing;

/// Where the tokens come from.
#[derive(Args, Debug, Default)]
pub struct DataArgs {
    /// Data source: generated Markov text, the generated key–value retrieval or passkey task, a
    /// token file, or text/JSONL with a tokenizer.
    #[arg(long, value_enum)]
    pub data_kind: Option<DataKind>,
    /// Token file (`.bin`) or text/JSONL corpus.
    #[arg(long)]
    pub data_path: Option<PathBuf>,
    /// Hugging Face tokenizer.json for text corpora (and the passkey task in words).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// How documents share a row: `plain` (attending across them) or `masked` (each document
    /// its own causal sequence, RoPE from 0; needs end-of-document tokens).
    #[arg(long, value_enum)]
    pub packing: Option<Packing>,
    /// The token id that ends each document (masked packing of a token file).
    #[arg(long)]
    pub eos: Option<u32>,
}

impl DataArgs {
    /// Sets the fields of `data` these flags give.
    pub fn apply(&self, data: &mut DataConfig) {
        if let Some(v) = self.data_kind {
            data.kind = v;
        }
        if let Some(v) = &self.data_path {
            data.path = Some(v.clone());
        }
        if let Some(v) = &self.tokenizer {
            data.tokenizer = Some(v.clone());
        }
        if let Some(v) = self.packing {
            data.packing = v;
        }
        if let Some(v) = self.eos {
            data.eos = Some(v);
        }
    }
}
