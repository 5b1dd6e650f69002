//! Compute-balanced slices (Seq1F1B) for a model given as a Hugging Face `config.json`.
//!
//! `cargo run -p seqpipe-slicing --example hf_config_slices [config.json] [sequence length]`
//! (default: Llama-2-7B's config, 32768 tokens, 4 slices).

use seqpipe_slicing::{balanced, shape_from_hf_config, uniform, CostModel, Padding};

/// Llama-2-7B's `config.json` (the fields the shape needs).
const LLAMA_2_7B: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
  "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
  "num_hidden_layers": 32, "vocab_size": 32000, "hidden_act": "silu"}"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config = match args.next() {
        Some(path) => std::fs::read_to_string(path)?,
        None => LLAMA_2_7B.to_string(),
    };
    let seq: u64 = args.next().map_or(Ok(32_768), |s| s.parse())?;
    let shape = shape_from_hf_config(&config)?;
    let cost = CostModel::flops(&shape)?;
    let even = uniform(seq, 4, 1, Padding::None, &cost)?;
    let fair = balanced(seq, 4, 1, &cost)?;
    println!(
        "{} layers, hidden {}, {seq} tokens in 4 slices",
        shape.layers, shape.hidden
    );
    println!(
        "uniform : {:?}, slowest/fastest {:.3}",
        even.lengths(),
        even.max_min_cost_ratio()
    );
    println!(
        "balanced: {:?}, slowest/fastest {:.3}",
        fair.lengths(),
        fair.max_min_cost_ratio()
    );
    Ok(())
}
