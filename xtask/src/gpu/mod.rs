//! The CUDA path's automation: `gpu-build` on the CPU-only build machine, and — in the xtask
//! binary that `gpu-build` makes with the `cuda` feature — `gpu-test` and `bench gpu` on the GPU
//! machine, which has no Rust toolchain.
//!
//! `gpu-test` runs every kernel on the GPU against the CPU path and against PyTorch on the same
//! inputs (outputs poisoned first), the trainer's oracle on CUDA (stages as threads on one GPU)
//! and the NCCL checks one machine allows; `bench gpu` times attention against PyTorch's SDPA,
//! one Llama-7B-shaped layer against the measured matmul ceiling, and a sliced training step.

pub mod gpu_build;
pub mod link_stubs;
pub mod toolkit;

#[cfg(feature = "cuda")]
pub mod bench_gpu;
#[cfg(feature = "cuda")]
pub mod bench_step;
#[cfg(feature = "cuda")]
pub mod cases;
#[cfg(feature = "cuda")]
pub mod gpu_test;
#[cfg(feature = "cuda")]
pub mod nccl_check;
#[cfg(feature = "cuda")]
pub mod oracle;
#[cfg(feature = "cuda")]
pub mod report;
#[cfg(feature = "cuda")]
pub mod torch;

/// What `gpu-test` and `bench gpu` say when this xtask was built without the `cuda` feature.
pub const NEEDS_CUDA_BUILD: &str = "this xtask was built without the `cuda` feature: run \
    `cargo xtask gpu-build` on the build machine, carry target/gpu/bin/ (and gpu/*.py) to the \
    GPU machine and run `target/gpu/bin/xtask gpu-test` there";
