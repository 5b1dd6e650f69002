//! Checkpoints: Hugging Face model files, resumable training checkpoints with checksummed
//! manifests, the run's checkpoint directory, atomic file replacement, and the export of a
//! model as a Hugging Face directory.

pub mod atomic;
pub mod export;
pub mod hf;
pub mod manifest;
pub mod resume;
pub mod store;
