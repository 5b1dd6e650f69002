//! What a step spends communicating, per GPU, that compute does not hide: tensor-parallel
//! collectives, context-parallel ring passes, pipeline sends and data-parallel gradient sync,
//! over a cluster's links ([`Interconnect`]).
//!
//! Ranks are laid out as Megatron-LM lays them out: TP innermost, then CP, then DP, then PP. A
//! group of `g` ranks `s` apart stays inside one NVLink domain when `g·s` ranks fit in a node;
//! otherwise it crosses the network. A ring all-gather or reduce-scatter of `B` bytes over `g`
//! ranks takes `(g−1)/g · B / bandwidth + (g−1) · latency` (all-reduce is the two). Activations and
//! gradients travel in bf16 (2 bytes); gradients are reduced in fp32 (4 bytes).
//!
//! - **TP** with sequence parallelism: per layer and micro-batch an all-gather and a
//!   reduce-scatter around attention and around the MLP, each of the `[s/c, H]` activation, in
//!   forward and again in backward (and in full recomputation's repeated forward); once per slice,
//!   so slicing pays the latency `n` times. Not overlapped (Megatron's default), so it stretches
//!   every unit and the bubble with it.
//! - **CP** (ring attention): per layer and micro-batch `c − 1` passes of the local K and V shard
//!   in forward, and of K, V, dK and dV in backward, overlapped with the layer's attention: only
//!   what exceeds the attention's time is exposed.
//! - **PP**: each unit's boundary activation `[s/(n·t·c), H]` crosses stages; only the fill and
//!   drain, `2(p·v − 1)` transfers, lie on the critical path.
//! - **DP** (distributed optimizer): a reduce-scatter of the fp32 gradients and an all-gather of
//!   the bf16 weights of the stage's `P/(p·t)` parameters, overlapped with one micro-batch's
//!   compute.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::comm::{ring_time, Interconnect};
//! let dgx_h100 = Interconnect::DGX_H100;
//! // 1 GB reduce-scattered over the 8 GPUs of a node: 7/8 of it crosses NVLink at 450 GB/s.
//! let t = ring_time(&dgx_h100, 1e9, 8, 1);
//! assert!((t - (0.875 * 1e9 / 450e9 + 7.0 * dgx_h100.latency_s)).abs() < 1e-12);
//! // The same over 8 ranks 8 apart crosses nodes, at the network's 50 GB/s.
//! assert!(ring_time(&dgx_h100, 1e9, 8, 8) > 8.0 * t);
//! ```

use seqpipe_slicing::{CostModel, ModelShape};
use serde::{Deserialize, Serialize};

use crate::activation::RecomputePolicy;
use crate::search::Candidate;

/// Bytes of a bf16 activation, gradient or weight element.
const BF16: f64 = 2.0;
/// Bytes of an fp32 gradient element, as the distributed optimizer reduces them.
const FP32: f64 = 4.0;

/// How the GPUs of a cluster connect: nominal figures per GPU, each direction; override them
/// with measured ones (NCCL's bus bandwidth).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interconnect {
    /// GPUs per node: the NVLink domain.
    pub gpus_per_node: u64,
    /// NVLink bandwidth per GPU, bytes/s.
    pub nvlink_bytes_per_s: f64,
    /// Network bandwidth per GPU between nodes (one NIC per GPU), bytes/s.
    pub network_bytes_per_s: f64,
    /// Time per message hop, seconds.
    pub latency_s: f64,
}

impl Interconnect {
    /// DGX A100: NVLink 3 (600 GB/s both ways), 8 × HDR 200 Gb/s.
    pub const DGX_A100: Interconnect = Interconnect {
        gpus_per_node: 8,
        nvlink_bytes_per_s: 300e9,
        network_bytes_per_s: 25e9,
        latency_s: 5e-6,
    };
    /// DGX H100 and H200: NVLink 4 (900 GB/s both ways), 8 × NDR 400 Gb/s.
    pub const DGX_H100: Interconnect = Interconnect {
        gpus_per_node: 8,
        nvlink_bytes_per_s: 450e9,
        network_bytes_per_s: 50e9,
        latency_s: 5e-6,
    };
    /// DGX H800: NVLink cut to 400 GB/s both ways, 8 × NDR 400 Gb/s.
    pub const DGX_H800: Interconnect = Interconnect {
        gpus_per_node: 8,
        nvlink_bytes_per_s: 200e9,
        network_bytes_per_s: 50e9,
        latency_s: 5e-6,
    };

    /// Bandwidth of a group of `group` ranks `stride` apart.
    fn bandwidth(&self, group: u64, stride: u64) -> f64 {
        match group.saturating_mul(stride) <= self.gpus_per_node {
            true => self.nvlink_bytes_per_s,
            false => self.network_bytes_per_s,
        }
    }
}

/// One ring all-gather or reduce-scatter of `bytes` (the whole buffer) over `group` ranks
/// `stride` apart; 0 for a group of one.
pub fn ring_time(net: &Interconnect, bytes: f64, group: u64, stride: u64) -> f64 {
    if group <= 1 {
        return 0.0;
    }
    let g = group as f64;
    (g - 1.0) / g * bytes / net.bandwidth(group, stride) + (g - 1.0) * net.latency_s
}

/// Exposed communication time of one step on one GPU, by kind, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CommTime {
    /// Tensor-parallel collectives (not overlapped).
    pub tp: f64,
    /// Context-parallel ring passes beyond the attention they overlap.
    pub cp: f64,
    /// Pipeline sends on the critical path (fill and drain).
    pub pp: f64,
    /// Data-parallel gradient and weight sync beyond one micro-batch's compute.
    pub dp: f64,
}

impl CommTime {
    /// The sum over kinds.
    pub fn total(&self) -> f64 {
        self.tp + self.cp + self.pp + self.dp
    }
}

/// The exposed communication of one step of `c` for `shape` at `seq_len` tokens per sequence,
/// with kernels running at `flops_per_s` and one step's compute taking `compute_s` per GPU.
pub fn step_comm(
    shape: &ModelShape,
    seq_len: u64,
    c: &Candidate,
    net: &Interconnect,
    flops_per_s: f64,
    compute_s: f64,
) -> CommTime {
    let (t, cp, d, p) = (c.parallel.tp, c.parallel.cp, c.parallel.dp, c.stages);
    let (n, v, m) = (c.kind.slices(), c.kind.chunks(), c.microbatches as f64);
    let layers = shape.layers as f64 / p as f64;
    let s = seq_len as f64;
    let h = shape.hidden as f64;
    // TP: 4 collectives per pass, 2 passes, a third under full recomputation; per slice.
    let passes = match c.recompute {
        RecomputePolicy::Full => 3.0,
        _ => 2.0,
    };
    let per_slice = ring_time(net, s / (cp * n) as f64 * h * BF16, t, 1);
    let tp = layers * m * passes * 4.0 * n as f64 * per_slice;
    // CP: K and V forward, K, V, dK, dV backward, against the layer's attention.
    let kv = s / cp as f64 * 2.0 * shape.kv_width() as f64 / t as f64 * BF16;
    let passes_cp = ring_time(net, kv * cp as f64, cp, t) * 3.0;
    let pairs = CostModel::attention_pairs(0, seq_len);
    let attention = 3.0 * shape.layer_attention_flops_per_pair() * pairs / (t * cp) as f64;
    let cp_time = layers * m * (passes_cp - attention / flops_per_s).max(0.0);
    // PP: fill and drain of the units' boundary activations.
    let unit = s / (n * t * cp) as f64 * h * BF16;
    let stride = t * cp * d;
    let hop = match stride < net.gpus_per_node {
        true => unit / net.nvlink_bytes_per_s,
        false => unit / net.network_bytes_per_s,
    } + net.latency_s;
    let pp = match p {
        1 => 0.0,
        _ => 2.0 * (p * v - 1) as f64 * hop,
    };
    // DP: reduce-scatter fp32 gradients, all-gather bf16 weights, behind one micro-batch.
    let params = shape.parameters() as f64 / (p * t) as f64;
    let sync = ring_time(net, params * FP32, d, t * cp) + ring_time(net, params * BF16, d, t * cp);
    let dp = (sync - compute_s / m).max(0.0);
    CommTime {
        tp,
        cp: cp_time,
        pp,
        dp,
    }
}
