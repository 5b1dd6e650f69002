//! Hugging Face Llama checkpoints: `config.json` plus `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Tensor names and the RoPE convention (`rotate_half`) are
//! Hugging Face's own, so a checkpoint from `transformers` loads as is and one we save loads there.

use crate::error::{fail, Context, Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::atomic::{commit_file, temp_path, write_atomic};
use crate::model::params::{param_specs, Holding, TensorMap};
use crate::model::{ModelConfig, RopeScaling};

/// Architectures whose checkpoints this trainer runs (Llama-style decoders).
pub const SUPPORTED: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM"];

fn field(cfg: &Value, name: &str) -> Result<usize> {
    optional_field(cfg, name)?
        .ok_or_else(|| Error::Checkpoint(format!("config.json: missing field `{name}`")))
}

/// An integer field that may be absent (or null); present with another type is an error.
fn optional_field(cfg: &Value, name: &str) -> Result<Option<usize>> {
    match cfg.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| {
                Error::Checkpoint(format!(
                    "config.json: `{name}` = {v} is not a non-negative integer"
                ))
            }),
    }
}

/// A number field that may be absent; present with another type is an error.
fn optional_number(cfg: &Value, name: &str) -> Result<Option<f64>> {
    match cfg.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| {
            Error::Checkpoint(format!("config.json: `{name}` = {v} is not a number"))
        }),
    }
}

/// Fields that change the model's computation in ways this trainer does not implement: a
/// checkpoint that sets them would load and silently compute another model, so it is refused.
fn refuse_unsupported(cfg: &Value) -> Result<()> {
    let set = |name: &str| !matches!(cfg.get(name), None | Some(Value::Null));
    if set("sliding_window") && cfg.get("use_sliding_window") != Some(&Value::Bool(false)) {
        fail!(
            Checkpoint,
            "config.json: sliding_window = {} is not supported (attention here is full causal)",
            cfg["sliding_window"]
        );
    }
    if let Some(p) = optional_number(cfg, "attention_dropout")?.filter(|&p| p != 0.0) {
        fail!(
            Checkpoint,
            "config.json: attention_dropout = {p} is not supported (training here has no dropout)"
        );
    }
    Ok(())
}

/// A `true`/`false` field that may be absent (or null: false); another type is an error.
fn flag(cfg: &Value, name: &str) -> Result<bool> {
    match cfg.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => fail!(
            Checkpoint,
            "config.json: `{name}` = {v} is not true or false"
        ),
    }
}

/// The RoPE base and scaling: top-level `rope_theta` and `rope_scaling` (`transformers` 4), or
/// `rope_parameters` holding both (`transformers` 5).
fn rope(cfg: &Value, max_positions: usize) -> Result<(f64, Option<RopeScaling>)> {
    let present = |name: &str| cfg.get(name).filter(|v| !v.is_null());
    let (legacy, params) = (present("rope_scaling"), present("rope_parameters"));
    let top = optional_number(cfg, "rope_theta")?;
    let nested = params
        .map(|p| optional_number(p, "rope_theta"))
        .transpose()?
        .flatten();
    let theta = match (top, nested) {
        (Some(a), Some(b)) if a != b => fail!(
            Checkpoint,
            "config.json: rope_theta = {a} and rope_parameters.rope_theta = {b} disagree"
        ),
        (a, b) => b.or(a).unwrap_or(10_000.0),
    };
    let scaled = |v: &&Value| rope_type(v) != Some("default");
    let scaling = match params.filter(scaled).or(legacy.filter(scaled)) {
        Some(spec) => Some(rope_scaling(spec, max_positions)?),
        None => None,
    };
    Ok((theta, scaling))
}

/// A RoPE scaling object's type (`rope_type`, or the older `type`).
fn rope_type(spec: &Value) -> Option<&str> {
    spec.get("rope_type")
        .or_else(|| spec.get("type"))
        .and_then(Value::as_str)
}

/// The scaling a `rope_scaling` / `rope_parameters` object describes; types other than
/// `linear`, `llama3` and `yarn` are refused by name.
fn rope_scaling(spec: &Value, max_positions: usize) -> Result<RopeScaling> {
    let number = |name: &str| optional_number(spec, name);
    let required = |name: &str| {
        number(name)?.ok_or_else(|| {
            Error::Checkpoint(format!("config.json: rope_scaling = {spec} lacks `{name}`"))
        })
    };
    if let Some(p) = number("partial_rotary_factor")?.filter(|&p| p != 1.0) {
        fail!(
            Checkpoint,
            "config.json: partial_rotary_factor = {p} is not supported (RoPE rotates every dim)"
        );
    }
    let original = optional_field(spec, "original_max_position_embeddings")?;
    Ok(match rope_type(spec) {
        Some("linear") => RopeScaling::Linear {
            factor: required("factor")?,
        },
        Some("llama3") => RopeScaling::Llama3 {
            factor: required("factor")?,
            low_freq_factor: required("low_freq_factor")?,
            high_freq_factor: required("high_freq_factor")?,
            original_max_positions: required("original_max_position_embeddings")? as usize,
        },
        Some("yarn") => {
            let original_max_positions = original.unwrap_or(max_positions);
            RopeScaling::Yarn {
                factor: number("factor")?
                    .unwrap_or(max_positions as f64 / original_max_positions as f64),
                original_max_positions,
                beta_fast: number("beta_fast")?.unwrap_or(32.0),
                beta_slow: number("beta_slow")?.unwrap_or(1.0),
                attention_factor: number("attention_factor")?,
                mscale: number("mscale")?,
                mscale_all_dim: number("mscale_all_dim")?,
                truncate: spec
                    .get("truncate")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            }
        }
        other => fail!(
            Checkpoint,
            "config.json: rope_scaling = {spec} has rope_type {:?}, which is not supported (it \
             would change the model's positions in a way this trainer does not run): linear, \
             llama3 and yarn run",
            other.unwrap_or("(none)")
        ),
    })
}

/// The `rope_scaling` object `transformers` reads for `scaling`.
fn rope_scaling_json(scaling: &RopeScaling) -> Value {
    match *scaling {
        RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_positions,
        } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_positions,
        }),
        RopeScaling::Yarn {
            factor,
            original_max_positions,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => json!({
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original_max_positions,
            "beta_fast": beta_fast,
            "beta_slow": beta_slow,
            "attention_factor": attention_factor,
            "mscale": mscale,
            "mscale_all_dim": mscale_all_dim,
            "truncate": truncate,
        }),
    }
}

/// Parses a Hugging Face Llama `config.json`.
pub fn config_from_json(text: &str) -> Result<ModelConfig> {
    let cfg: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
    let archs: Vec<&str> = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !archs.iter().any(|a| SUPPORTED.contains(a)) {
        fail!(
            Checkpoint,
            "config.json: unsupported architecture {archs:?}; this trainer runs {}",
            SUPPORTED.join(", ")
        );
    }
    if let Some(act) = cfg.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            fail!(
                Checkpoint,
                "config.json: hidden_act = {act:?}; only \"silu\" (SwiGLU) is supported"
            );
        }
    }
    let heads = field(&cfg, "num_attention_heads")?;
    let hidden = field(&cfg, "hidden_size")?;
    refuse_unsupported(&cfg)?;
    let max_positions = optional_field(&cfg, "max_position_embeddings")?.unwrap_or(4096);
    let (rope_theta, rope_scaling) = rope(&cfg, max_positions)?;
    let model = ModelConfig {
        vocab: field(&cfg, "vocab_size")?,
        hidden,
        ffn_hidden: field(&cfg, "intermediate_size")?,
        heads,
        kv_heads: optional_field(&cfg, "num_key_value_heads")?.unwrap_or(heads),
        layers: field(&cfg, "num_hidden_layers")?,
        rope_theta,
        norm_eps: optional_number(&cfg, "rms_norm_eps")?.unwrap_or(1e-5),
        max_positions,
        tie_embeddings: flag(&cfg, "tie_word_embeddings")?,
        // Kept only where it differs, so that the usual `hidden / heads` stays implicit.
        head_dim: optional_field(&cfg, "head_dim")?
            .filter(|&d| Some(d) != hidden.checked_div(heads)),
        rope_scaling,
        attention_bias: flag(&cfg, "attention_bias")?,
        mlp_bias: flag(&cfg, "mlp_bias")?,
    };
    let problems = model.problems();
    if !problems.is_empty() {
        fail!(Checkpoint, "config.json: {}", problems.join("; "));
    }
    Ok(model)
}

/// The `config.json` text of a model.
pub fn config_to_json(model: &ModelConfig, dtype: DType) -> String {
    let torch_dtype = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    };
    let mut cfg = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": model.vocab,
        "hidden_size": model.hidden,
        "intermediate_size": model.ffn_hidden,
        "num_attention_heads": model.heads,
        "num_key_value_heads": model.kv_heads,
        "num_hidden_layers": model.layers,
        "head_dim": model.head_dim(),
        "max_position_embeddings": model.max_positions,
        "rms_norm_eps": model.norm_eps,
        "rope_theta": model.rope_theta,
        "tie_word_embeddings": model.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": model.attention_bias,
        "mlp_bias": model.mlp_bias,
        "torch_dtype": torch_dtype,
    });
    if let Some(scaling) = &model.rope_scaling {
        cfg["rope_scaling"] = rope_scaling_json(scaling);
    }
    serde_json::to_string_pretty(&cfg).expect("a JSON value serialises")
}

/// Saves `params` (the whole model) as `dir/config.json` and `dir/model.safetensors`, each
/// written atomically.
pub fn save(dir: &Path, model: &ModelConfig, params: &TensorMap) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dtype = params.values().next().map_or(DType::F32, Tensor::dtype);
    let tensors: HashMap<String, Tensor> =
        params.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
    let weights = dir.join("model.safetensors");
    let tmp = temp_path(&weights);
    candle_core::safetensors::save(&tensors, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    commit_file(&tmp, &weights)?;
    write_atomic(
        &dir.join("config.json"),
        config_to_json(model, dtype).as_bytes(),
    )?;
    Ok(())
}

/// The safetensors files of a checkpoint directory: the index's shards, or the single file.
fn weight_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("reading {}", index.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::Checkpoint(format!("{}: no `weight_map` object", index.display()))
            })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if !single.exists() {
        fail!(
            Checkpoint,
            "{} has neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        );
    }
    Ok(vec![single])
}

/// Loads a checkpoint directory: its config and every parameter the model needs, converted to
/// `dtype`. Missing or mis-shaped tensors are errors naming them; extra tensors (e.g. rotary
/// `inv_freq` buffers of a `transformers` checkpoint) are ignored.
pub fn load(dir: &Path, dtype: DType) -> Result<(ModelConfig, TensorMap)> {
    load_with_extras(dir, dtype).map(|(model, params, _)| (model, params))
}

/// [`load`], also returning the names of the tensors the model does not use (sorted), for
/// callers that must refuse them (seqpipe's own checkpoints hold exactly the model's tensors).
pub fn load_with_extras(dir: &Path, dtype: DType) -> Result<(ModelConfig, TensorMap, Vec<String>)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let model = config_from_json(&text).with_context(|| format!("in {}", config_path.display()))?;
    let mut found: BTreeMap<String, Tensor> = BTreeMap::new();
    for file in weight_files(dir)? {
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu).with_context(|| {
            format!(
                "{} is not a readable safetensors file (truncated or corrupt?)",
                file.display()
            )
        })?;
        found.extend(tensors);
    }
    let whole = Holding {
        layers: std::iter::once(0..model.layers).collect(),
        embedding: true,
        head: true,
        vocab_rows: None,
    };
    let mut params = TensorMap::new();
    for spec in param_specs(&model, &whole) {
        let t = found.remove(&spec.name).ok_or_else(|| {
            Error::Checkpoint(format!(
                "checkpoint {} lacks tensor {}",
                dir.display(),
                spec.name
            ))
        })?;
        if t.dims() != spec.shape.as_slice() {
            fail!(
                Checkpoint,
                "tensor {} has shape {:?}; the config implies {:?}",
                spec.name,
                t.dims(),
                spec.shape
            );
        }
        params.insert(spec.name, t.to_dtype(dtype)?);
    }
    // A bias the config does not enable would be dropped silently: another model's math.
    if let Some(bias) = found.keys().find(|n| n.ends_with(".bias")) {
        fail!(
            Checkpoint,
            "checkpoint {} holds tensor {bias}, but its config.json has attention_bias = {} and \
             mlp_bias = {}: the bias would be ignored",
            dir.display(),
            model.attention_bias,
            model.mlp_bias
        );
    }
    Ok((model, params, found.into_keys().collect()))
}
