//! Reading a [`ModelShape`] from the text of a Hugging Face `config.json`.
//!
//! Takes the text, not a path: the slicing crate does no IO. Llama-style architectures (Llama,
//! Mistral, Qwen2) and GPT-2 are understood; anything else is refused by name.
//!
//! # Example
//!
//! ```
//! use seqpipe_slicing::{shape_from_hf_config, FfnKind};
//! let json = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
//!   "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
//!   "num_key_value_heads": 8, "vocab_size": 128256}"#;
//! let shape = shape_from_hf_config(json).unwrap();
//! assert_eq!((shape.layers, shape.kv_heads, shape.head_dim), (32, 8, 128));
//! assert_eq!(shape.ffn, FfnKind::Gated);
//! ```

use serde_json::Value;

use crate::error::{Result, SlicingError};
use crate::shape::{FfnKind, ModelShape};

/// Architectures whose `config.json` we can read, with their FFN kind.
pub const SUPPORTED_ARCHITECTURES: &[(&str, FfnKind)] = &[
    ("LlamaForCausalLM", FfnKind::Gated),
    ("MistralForCausalLM", FfnKind::Gated),
    ("Qwen2ForCausalLM", FfnKind::Gated),
    ("GPT2LMHeadModel", FfnKind::Plain),
];

fn bad(msg: impl Into<String>) -> SlicingError {
    SlicingError::HfConfig(msg.into())
}

fn field(cfg: &Value, names: &[&str]) -> Result<Option<u64>> {
    for name in names {
        match cfg.get(*name) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return v.as_u64().map(Some).ok_or_else(|| {
                    bad(format!(
                        "field `{name}` must be a non-negative integer, got {v}"
                    ))
                })
            }
        }
    }
    Ok(None)
}

fn required(cfg: &Value, names: &[&str]) -> Result<u64> {
    field(cfg, names)?.ok_or_else(|| bad(format!("missing field `{}`", names.join("` or `"))))
}

/// Which supported architecture a config describes, from `architectures` or `model_type`.
fn architecture(cfg: &Value) -> Result<(&'static str, FfnKind)> {
    let listed: Vec<String> = match cfg.get("architectures") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    let by_type = match model_type {
        "llama" => Some("LlamaForCausalLM"),
        "mistral" => Some("MistralForCausalLM"),
        "qwen2" => Some("Qwen2ForCausalLM"),
        "gpt2" => Some("GPT2LMHeadModel"),
        _ => None,
    };
    let wanted: Vec<&str> = listed.iter().map(String::as_str).chain(by_type).collect();
    for name in &wanted {
        if let Some(found) = SUPPORTED_ARCHITECTURES.iter().find(|(a, _)| a == name) {
            return Ok(*found);
        }
    }
    let supported: Vec<&str> = SUPPORTED_ARCHITECTURES.iter().map(|(a, _)| *a).collect();
    Err(bad(format!(
        "unsupported architecture (architectures = {listed:?}, model_type = {model_type:?}); supported: {}",
        supported.join(", ")
    )))
}

/// Parses the text of a Hugging Face `config.json` into a shape.
pub fn shape_from_hf_config(json: &str) -> Result<ModelShape> {
    let cfg: Value = serde_json::from_str(json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let (_, ffn) = architecture(&cfg)?;
    let layers = required(&cfg, &["num_hidden_layers", "n_layer"])?;
    let hidden = required(&cfg, &["hidden_size", "n_embd"])?;
    let heads = required(&cfg, &["num_attention_heads", "n_head"])?;
    let ffn_hidden = match ffn {
        FfnKind::Gated => required(&cfg, &["intermediate_size"])?,
        FfnKind::Plain => {
            field(&cfg, &["n_inner", "intermediate_size"])?.unwrap_or(hidden.saturating_mul(4))
        }
    };
    let kv_heads = field(&cfg, &["num_key_value_heads"])?.unwrap_or(heads);
    let head_dim = match field(&cfg, &["head_dim"])? {
        Some(d) => d,
        None if heads > 0 && hidden % heads != 0 => {
            return Err(bad(format!(
                "hidden size {hidden} is not a multiple of the {heads} attention heads, and no \
                 head_dim is given"
            )))
        }
        None => hidden.checked_div(heads).unwrap_or(0),
    };
    let vocab = required(&cfg, &["vocab_size"])?;
    let shape = ModelShape {
        layers,
        hidden,
        ffn_hidden,
        heads,
        kv_heads,
        head_dim,
        vocab,
        ffn,
    };
    shape.validate()?;
    Ok(shape)
}
