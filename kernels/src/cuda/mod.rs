//! Hand-written CUDA kernels behind the `cuda` feature (`cuda/*.cu`, PTX built by `build.rs`).
//!
//! Every public op checks its inputs as on the CPU path and then asks this module first: a
//! function here returns `Ok(None)` when the tensors are not on a CUDA device or the dtype has no
//! kernel (f64, the oracle dtype, keeps the candle-op path, which runs on CUDA too), so callers
//! fall through to the portable code. f32 and bf16 inputs run our kernels with f32 arithmetic.
//!
//! Launching a kernel is `unsafe` in cudarc: the kernel's argument list must match its C
//! signature, which `cuda/LAUNCH.md` and the `.cu` headers state. This module is the only place
//! in the crate that needs `unsafe`.

#![allow(unsafe_code)]

mod attention;
mod cross_entropy;
mod launch;
mod pointwise;

pub(crate) use attention::{attention_backward, attention_forward};
pub(crate) use cross_entropy::{lse_update, softmax_grad};
pub use launch::poison_outputs;
pub(crate) use pointwise::{
    rms_norm_backward, rms_norm_forward, rope, swiglu_backward, swiglu_forward,
};

/// PTX of each `.cu` file, compiled by `build.rs`.
mod ptx {
    pub const RMS_NORM: &str = include_str!(concat!(env!("OUT_DIR"), "/rms_norm.ptx"));
    pub const ROPE: &str = include_str!(concat!(env!("OUT_DIR"), "/rope.ptx"));
    pub const SWIGLU: &str = include_str!(concat!(env!("OUT_DIR"), "/swiglu.ptx"));
    pub const ATTENTION: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
    pub const CROSS_ENTROPY: &str = include_str!(concat!(env!("OUT_DIR"), "/cross_entropy.ptx"));
}
