//! GPU presets and PipeOffload's `k` criterion (SPEC §5.1).
//!
//! `k = T_offload / T_compute = 10 / (3·(6H + s)) · (B_c / B_o)` per layer, with the achieved
//! compute `B_c` and host-link bandwidth `B_o`. `k ≤ 1` means every activation can be moved out and
//! back behind compute; with `k > 1` only about a `1/k` share can. The presets carry the authors'
//! constants (A100 220 TFLOP/s, 15 GB/s; H100 440 TFLOP/s, 21 GB/s); H200 has the H100's compute
//! die and host link, so it takes the H100 constants (adopted) with its larger memory; H800 is the
//! H100 with NVLink cut to 400 GB/s. Each ships in its DGX node ([`Interconnect`]). Every field
//! is public: override what you measured.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::gpu_preset;
//! use seqpipe_slicing::preset;
//! let h100 = gpu_preset("H100").unwrap(); // case-insensitive
//! assert_eq!((h100.achieved_flops, h100.host_link_bytes_per_s), (440e12, 21e9));
//! // k = 10 / (3·(6H + s)) · B_c / B_o for Llama-7B (H = 4096) at s = 4096.
//! let llama = preset("llama-7b").unwrap();
//! let k = h100.offload_k(&llama, 4096).unwrap();
//! assert_eq!(format!("{k:.3}"), "2.436"); // k > 1: not every transfer can hide
//! let hidden = h100.hidden_offload_fraction(&llama, 4096).unwrap();
//! assert_eq!(format!("{hidden:.3}"), "0.411"); // 1/k
//! ```

use seqpipe_slicing::ModelShape;
use serde::{Deserialize, Serialize};

use crate::comm::Interconnect;
use crate::error::{MemoryError, Result};

/// One accelerator as the planners see it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpuPreset {
    /// Name used on the command line.
    pub name: &'static str,
    /// Peak dense bf16 FLOP/s (the MFU denominator).
    pub peak_flops: f64,
    /// Achieved FLOP/s `B_c` used by the offload criterion.
    pub achieved_flops: f64,
    /// Host-link bandwidth `B_o`, bytes/s, each direction.
    pub host_link_bytes_per_s: f64,
    /// Nominal memory capacity in bytes (10⁹-byte GB as sold; usable memory is a little less).
    pub memory_bytes: f64,
    /// HBM bandwidth, bytes/s: the time of memory-bound work such as selective recomputation.
    pub memory_bytes_per_s: f64,
    /// The links of the node it ships in and of the network between nodes (the planner's
    /// communication model, `crate::comm`).
    pub interconnect: Interconnect,
}

/// Every GPU preset.
pub const GPU_PRESETS: &[GpuPreset] = &[
    GpuPreset {
        name: "a100",
        peak_flops: 312e12,
        achieved_flops: 220e12,
        host_link_bytes_per_s: 15e9,
        memory_bytes: 80e9,
        memory_bytes_per_s: 2.039e12,
        interconnect: Interconnect::DGX_A100,
    },
    GpuPreset {
        name: "h100",
        peak_flops: 989e12,
        achieved_flops: 440e12,
        host_link_bytes_per_s: 21e9,
        memory_bytes: 80e9,
        memory_bytes_per_s: 3.35e12,
        interconnect: Interconnect::DGX_H100,
    },
    GpuPreset {
        name: "h200",
        peak_flops: 989e12,
        achieved_flops: 440e12,
        host_link_bytes_per_s: 21e9,
        memory_bytes: 141e9,
        memory_bytes_per_s: 4.8e12,
        interconnect: Interconnect::DGX_H100,
    },
    GpuPreset {
        name: "h800",
        peak_flops: 989e12,
        achieved_flops: 440e12,
        host_link_bytes_per_s: 21e9,
        memory_bytes: 80e9,
        memory_bytes_per_s: 3.35e12,
        interconnect: Interconnect::DGX_H800,
    },
];

/// Looks a GPU preset up by name (case-insensitive).
pub fn gpu_preset(name: &str) -> Result<GpuPreset> {
    GPU_PRESETS
        .iter()
        .find(|g| g.name.eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| MemoryError::UnknownGpu {
            name: name.to_string(),
            known: GPU_PRESETS
                .iter()
                .map(|g| g.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl GpuPreset {
    /// PipeOffload's `k` for a model of hidden size `H` at sequence length `s` on this device.
    pub fn offload_k(&self, shape: &ModelShape, seq_len: u64) -> Result<f64> {
        for (what, value) in [
            ("achieved FLOP/s", self.achieved_flops),
            ("host-link bandwidth", self.host_link_bytes_per_s),
        ] {
            if !value.is_finite() || value <= 0.0 {
                return Err(MemoryError::OutOfRange {
                    what,
                    value,
                    range: "(0, ∞)",
                });
            }
        }
        let per_layer = 10.0 / (3.0 * (6.0 * shape.hidden as f64 + seq_len as f64));
        Ok(per_layer * self.achieved_flops / self.host_link_bytes_per_s)
    }

    /// The share of activations that can be offloaded with every transfer hidden: `min(1, 1/k)`.
    pub fn hidden_offload_fraction(&self, shape: &ModelShape, seq_len: u64) -> Result<f64> {
        Ok((1.0 / self.offload_k(shape, seq_len)?).min(1.0))
    }
}
