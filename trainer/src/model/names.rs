//! Parameter names: Hugging Face Llama's, so checkpoints load and save without renaming.

/// The embedding matrix `[V, H]`.
pub const EMBED: &str = "model.embed_tokens.weight";
/// The final RMSNorm weight `[H]`.
pub const FINAL_NORM: &str = "model.norm.weight";
/// The LM head `[V, H]` (absent when tied to the embedding).
pub const LM_HEAD: &str = "lm_head.weight";

/// The nine weights of one layer, in [`crate::model::layer::LayerWeights`] order.
pub const LAYER_PARTS: [&str; 9] = [
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
];

/// The biases of the seven projections, in the layer's `MATRIX_SLOTS` order (q, k, v, o, gate,
/// up, down); which exist is the model's `attention_bias` / `mlp_bias`.
pub const LAYER_BIASES: [&str; 7] = [
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.bias",
    "mlp.gate_proj.bias",
    "mlp.up_proj.bias",
    "mlp.down_proj.bias",
];

/// Full name of part `part` of layer `layer`.
pub fn layer_param(layer: usize, part: &str) -> String {
    format!("model.layers.{layer}.{part}")
}
