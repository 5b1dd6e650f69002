//! Reading shapes from Hugging Face `config.json` text.

use seqpipe_slicing::{preset, shape_from_hf_config, FfnKind};

const LLAMA3_8B: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
  "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": false
}"#;

#[test]
fn llama3_config_matches_preset() {
    assert_eq!(
        shape_from_hf_config(LLAMA3_8B).unwrap(),
        preset("llama3-8b").unwrap()
    );
}

#[test]
fn gpt2_config_uses_its_own_field_names() {
    let s = shape_from_hf_config(
        r#"{"model_type":"gpt2","n_layer":12,"n_embd":768,"n_head":12,"vocab_size":50257}"#,
    )
    .unwrap();
    assert_eq!(
        (s.layers, s.hidden, s.ffn_hidden, s.head_dim, s.ffn),
        (12, 768, 3072, 64, FfnKind::Plain)
    );
}

#[test]
fn unsupported_or_broken_configs_are_errors() {
    let m = shape_from_hf_config(r#"{"architectures":["MambaForCausalLM"],"model_type":"mamba"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("MambaForCausalLM") && m.contains("supported: LlamaForCausalLM"),
        "{m}"
    );
    let m = shape_from_hf_config("{not json").unwrap_err().to_string();
    assert!(m.contains("not valid JSON"), "{m}");
    let m = shape_from_hf_config(r#"{"model_type":"llama","hidden_size":64}"#)
        .unwrap_err()
        .to_string();
    assert!(m.contains("missing field `num_hidden_layers`"), "{m}");
    let m = shape_from_hf_config(&LLAMA3_8B.replace("14336", "-1"))
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("`intermediate_size` must be a non-negative integer"),
        "{m}"
    );
}
