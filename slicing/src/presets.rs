//! Named model shapes, each from a source cited in its description (which `seqpipe slice
//! --list-models` prints): Seq1F1B's GPT shapes and the Llama family.
//!
//! Seq1F1B's GPT shapes are the authors' experiment scripts' (`thunlp/Seq1F1B`, `exp.sh` and
//! `exp2.sh`, arrays `config_1_3b` … `config_30b`; layers, hidden and heads). Their launcher
//! (`run.sh`) sets no FFN width, SwiGLU or GQA, so Megatron's defaults hold: a plain FFN of `4H`
//! and as many K/V heads as query heads. The vocabulary is GPT-2's BPE (50257 tokens) padded to a
//! multiple of 128, 50304; Megatron pads further to `128 · TP` at run time (51200 for the 30B
//! run at TP 8), which the planner's `1/TP` sharding of the tables does not model. The Llama shapes
//! are the Hugging Face `config.json` files of `meta-llama/Llama-2-{7b,13b,70b}-hf` and
//! `meta-llama/Meta-Llama-3-8B`.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::{preset, PRESETS};
//! let llama = preset("Llama-70B").unwrap(); // case-insensitive
//! assert_eq!((llama.layers, llama.heads, llama.kv_heads), (80, 64, 8));
//! assert_eq!(PRESETS.len(), 9);
//! assert!(preset("gpt-5").unwrap_err().to_string().contains("known presets: gpt-1.3b"));
//! ```

use crate::error::{Result, SlicingError};
use crate::shape::{FfnKind, ModelShape};

/// A named shape with a one-line description.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    /// Name used on the command line.
    pub name: &'static str,
    /// Where the shape comes from.
    pub description: &'static str,
    /// The shape.
    pub shape: ModelShape,
}

const GPT_VOCAB: u64 = 50304;
const LLAMA_VOCAB: u64 = 32000;

const fn gpt(layers: u64, hidden: u64, heads: u64) -> ModelShape {
    ModelShape {
        layers,
        hidden,
        ffn_hidden: 4 * hidden,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads,
        vocab: GPT_VOCAB,
        ffn: FfnKind::Plain,
    }
}

const fn llama(
    layers: u64,
    hidden: u64,
    ffn_hidden: u64,
    heads: u64,
    kv_heads: u64,
    vocab: u64,
) -> ModelShape {
    ModelShape {
        layers,
        hidden,
        ffn_hidden,
        heads,
        kv_heads,
        head_dim: hidden / heads,
        vocab,
        ffn: FfnKind::Gated,
    }
}

/// Every preset, in the order `--list-models` prints them.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "gpt-1.3b",
        description: "Seq1F1B GPT 1.3B (thunlp/Seq1F1B exp.sh config_1_3b)",
        shape: gpt(24, 2048, 16),
    },
    Preset {
        name: "gpt-2.7b",
        description: "Seq1F1B GPT 2.7B (thunlp/Seq1F1B exp.sh config_2_7b)",
        shape: gpt(32, 2560, 32),
    },
    Preset {
        name: "gpt-7b",
        description: "Seq1F1B GPT 7B (thunlp/Seq1F1B exp.sh config_7b)",
        shape: gpt(32, 4096, 32),
    },
    Preset {
        name: "gpt-13b",
        description: "Seq1F1B GPT 13B (thunlp/Seq1F1B exp.sh config_13b)",
        shape: gpt(40, 5120, 40),
    },
    Preset {
        name: "gpt-30b",
        description: "Seq1F1B GPT 30B, head dim 96 (thunlp/Seq1F1B exp.sh config_30b)",
        shape: gpt(64, 6144, 64),
    },
    Preset {
        name: "llama-7b",
        description: "Llama-2 7B (meta-llama/Llama-2-7b-hf config.json)",
        shape: llama(32, 4096, 11008, 32, 32, LLAMA_VOCAB),
    },
    Preset {
        name: "llama-13b",
        description: "Llama-2 13B (meta-llama/Llama-2-13b-hf config.json)",
        shape: llama(40, 5120, 13824, 40, 40, LLAMA_VOCAB),
    },
    Preset {
        name: "llama-70b",
        description: "Llama-2 70B, GQA with 8 KV heads (meta-llama/Llama-2-70b-hf config.json)",
        shape: llama(80, 8192, 28672, 64, 8, LLAMA_VOCAB),
    },
    Preset {
        name: "llama3-8b",
        description: "Llama-3 8B, GQA with 8 KV heads (meta-llama/Meta-Llama-3-8B config.json)",
        shape: llama(32, 4096, 14336, 32, 8, 128256),
    },
];

/// Looks a preset up by name (case-insensitive).
pub fn preset(name: &str) -> Result<ModelShape> {
    PRESETS
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.shape)
        .ok_or_else(|| SlicingError::UnknownPreset {
            name: name.to_string(),
            known: PRESETS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}
