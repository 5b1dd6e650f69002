//! Checkpoints: Hugging Face model files, resumable training checkpoints with checksummed
//! manifests, the run's checkpoint directory, atomic file replacement.

pub mod atomic;
pub mod hf;
pub mod manifest;
pub mod resume;
pub mod store;
