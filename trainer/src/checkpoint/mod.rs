//! Checkpoints: Hugging Face model files, resumable training checkpoints, atomic replacement.

pub mod atomic;
pub mod hf;
pub mod resume;
