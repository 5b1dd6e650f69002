//! Transformer ops with explicit forward and backward (skeleton).
//!
//! Will hold RMSNorm, RoPE, SwiGLU, sliced attention, blockwise cross-entropy and split linear
//! layers over candle tensors (issue #5). Nothing is implemented yet.
