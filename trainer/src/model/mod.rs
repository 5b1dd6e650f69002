//! The Llama-style model with explicit forward and backward: config, parameter names and
//! initialisation, one decoder layer, and the embedding and head ends.

pub mod config;
pub mod ends;
pub mod layer;
pub mod names;
pub mod params;
pub mod rope_scaling;

pub use config::ModelConfig;
pub use params::{Holding, TensorMap};
pub use rope_scaling::RopeScaling;
