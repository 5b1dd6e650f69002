//! `--model` resolution shared by subcommands: a preset name or a path to a `config.json`.

use std::path::Path;

use anyhow::Context;
use seqpipe_slicing::{preset, shape_from_hf_config, ModelShape};

/// A preset name, or a path to a Hugging Face `config.json` (anything that exists as a file or
/// ends in `.json`).
pub fn resolve_model(spec: &str) -> anyhow::Result<ModelShape> {
    let path = Path::new(spec);
    if path.is_file() || spec.ends_with(".json") {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading model config {spec}"))?;
        return shape_from_hf_config(&text).with_context(|| format!("in {spec}"));
    }
    Ok(preset(spec)?)
}

/// One line describing a shape.
pub fn describe(shape: &ModelShape) -> String {
    format!(
        "L={} H={} F={} heads={} kv_heads={} head_dim={} V={} ffn={:?} params={:.2}B",
        shape.layers,
        shape.hidden,
        shape.ffn_hidden,
        shape.heads,
        shape.kv_heads,
        shape.head_dim,
        shape.vocab,
        shape.ffn,
        shape.parameters() as f64 / 1e9
    )
}
