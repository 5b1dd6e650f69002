//! The planner's search: every (PP, TP×CP, schedule kind, slices, chunks, offload fraction,
//! recomputation) that divides the model and the cluster, scored by the static peak per stage and a
//! predicted MFU.
//!
//! Predicted step time = (model compute per GPU × (1 + recompute overhead) ÷ (efficiency × peak
//! FLOP/s) + TP and exposed CP communication) ÷ (1 − bubble) + exposed offload time + PP fill and
//! drain + exposed DP sync, the communication over the GPU preset's interconnect (`comm`).
//! Offloaded bytes also cost their HBM traffic out and back in, at HBM speed. Full recomputation repeats the layers' forward
//! (+⅓ of their fwd+bwd); selective recomputation repeats only elementwise ops and norms, charged
//! their bytes at HBM speed. An offload of fraction `f` is hidden while `f·k ≤ 1` (SPEC §5.1) and otherwise
//! exposes `(f·k − 1)` of the compute time. Ties go to the smaller `t·c`. MFU =
//! `3·T(s)·sequences ÷ (step time × GPUs × peak FLOP/s)`. The search bounds TP and CP
//! (`max_tp`, `max_cp`) and plans at least `min_stages` pipeline stages.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{gpu_preset, search, PipelineKind, SearchSpace};
//! use seqpipe_slicing::preset;
//! let h100 = gpu_preset("h100").unwrap();
//! let space = SearchSpace {
//!     shape: preset("llama-7b").unwrap(), seq_len: 32 * 1024, gpus: 8, global_batch: 8,
//!     gpu: h100, budget_bytes: h100.memory_bytes, efficiency: 0.5.into(),
//!     max_tp: 8, max_cp: 1, min_stages: 2,
//! };
//! let ranked = search(&space).unwrap(); // fitting plans first, by predicted MFU
//! let best = &ranked[0];
//! assert!(best.fits());
//! assert_eq!(best.candidate.kind, PipelineKind::SlimPipe { slices: 128, chunks: 8 });
//! assert_eq!((best.candidate.stages, best.candidate.parallel.dp), (4, 2));
//! assert_eq!(format!("{:.2}", best.mfu), "0.50");
//! ```

use std::cmp::Ordering;

use seqpipe_slicing::{CostModel, ModelShape};
use serde::{Deserialize, Serialize};

use crate::activation::{ActivationModel, LogitsPlacement, Parallelism, RecomputePolicy};
use crate::error::{positive, Result};
use crate::gpu::GpuPreset;
use crate::peak::StaticConfig;
use crate::pipeline::PipelineKind;
use crate::states::StateOptions;

/// The fraction of peak FLOP/s the kernels reach, per kind of op: the matrix products of the
/// linear layers, embedding and head, and the attention core (flash attention runs at a
/// different share of peak than a GEMM, and the two weigh differently at every context length).
/// Measured values replace the defaults (`seqpipe plan --efficiency`, `--attention-efficiency`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Efficiency {
    /// Matrix products of the linear layers, embedding and LM head.
    pub linear: f64,
    /// The attention core (scores, softmax, weighted sum; forward and backward).
    pub attention: f64,
}

impl Efficiency {
    /// The same share of peak for every op.
    pub fn uniform(efficiency: f64) -> Self {
        Efficiency {
            linear: efficiency,
            attention: efficiency,
        }
    }

    /// Seconds per FLOP at `peak` FLOP/s of a workload whose attention core is `attention` of
    /// its FLOPs.
    pub fn seconds_per_flop(&self, peak: f64, attention: f64) -> f64 {
        ((1.0 - attention) / self.linear + attention / self.attention) / peak
    }
}

impl From<f64> for Efficiency {
    fn from(efficiency: f64) -> Self {
        Efficiency::uniform(efficiency)
    }
}

/// What to search over.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SearchSpace {
    /// Model shape.
    pub shape: ModelShape,
    /// Tokens per sequence (one sequence per micro-batch).
    pub seq_len: u64,
    /// GPUs in all.
    pub gpus: u64,
    /// Sequences per iteration over all data-parallel replicas.
    pub global_batch: u64,
    /// The device.
    pub gpu: GpuPreset,
    /// Memory per GPU the plan may use, bytes.
    pub budget_bytes: f64,
    /// Assumed fraction of peak FLOP/s the kernels reach, per kind of op.
    pub efficiency: Efficiency,
    /// Largest TP size (one node's GPUs).
    pub max_tp: u64,
    /// Largest CP size.
    pub max_cp: u64,
    /// Fewest pipeline stages (2: plan a pipeline, not pure TP×CP).
    pub min_stages: u64,
}

/// One configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Schedule kind with its `n` and `v`.
    pub kind: PipelineKind,
    /// Pipeline stages.
    pub stages: u64,
    /// TP, CP and DP sizes.
    pub parallel: Parallelism,
    /// Micro-batches per pipeline per iteration.
    pub microbatches: u64,
    /// Recomputation policy.
    pub recompute: RecomputePolicy,
    /// Fraction of offloadable units kept on host.
    pub offload_fraction: f64,
}

/// A scored configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The configuration.
    pub candidate: Candidate,
    /// Stage with the highest peak.
    pub worst_stage: usize,
    /// Its peak, bytes.
    pub peak_bytes: f64,
    /// Model states of that stage, bytes.
    pub states_bytes: f64,
    /// Bubble ratio.
    pub bubble: f64,
    /// Where the bubble comes from.
    pub bubble_source: BubbleSource,
    /// Predicted step time, seconds.
    pub step_time: f64,
    /// Predicted MFU.
    pub mfu: f64,
    /// Exposed communication per step, by kind (`crate::comm`).
    pub comm: crate::comm::CommTime,
    /// Bytes over the budget (≤ 0 when it fits).
    pub over_bytes: f64,
}

/// Where an [`Evaluation`]'s bubble comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BubbleSource {
    /// The kind's closed form, which assumes steps of equal cost: a lower bound of the
    /// simulated bubble (tested over the planner's matrix), so the MFU it gives is an upper
    /// bound.
    ClosedForm,
    /// The simulation of the exact schedule the trainer runs ([`crate::simulated_bubbles`]).
    Simulated,
    /// The same with SlimPipe's attention exchange (every pair), which shortens this one: the
    /// plan turns the exchange on.
    SimulatedWithExchange,
}

impl Evaluation {
    /// Whether every stage fits the budget.
    pub fn fits(&self) -> bool {
        self.over_bytes <= 0.0
    }
}

fn divisors(x: u64) -> Vec<u64> {
    (1..=x).filter(|d| x % d == 0).collect()
}

/// Schedule kinds for `p` stages with `L/p` layers per stage.
fn kinds(p: u64, layers_per_stage: u64) -> Vec<PipelineKind> {
    let mut out = vec![PipelineKind::OneF1B];
    let chunk_options: Vec<u64> = divisors(layers_per_stage)
        .into_iter()
        .filter(|&v| v > 1)
        .collect();
    for &v in &chunk_options {
        out.push(PipelineKind::Interleaved { chunks: v });
    }
    for n in [2u64, 4, 8, 16, 32, 64] {
        out.push(PipelineKind::Seq1F1B { slices: n });
    }
    for n in [8u64, 16, 32, 64, 128] {
        if n < p {
            continue;
        }
        out.push(PipelineKind::SlimPipe {
            slices: n,
            chunks: 1,
        });
        for &v in &chunk_options {
            out.push(PipelineKind::SlimPipe {
                slices: n,
                chunks: v,
            });
        }
    }
    out
}

/// Every candidate the cluster and model allow.
pub fn candidates(space: &SearchSpace) -> Vec<Candidate> {
    let mut out = Vec::new();
    let l = space.shape.layers;
    let stages = divisors(l)
        .into_iter()
        .filter(|&p| p <= space.gpus && p >= space.min_stages);
    for p in stages {
        for t in (0..7).map(|i| 1u64 << i).filter(|&t| t <= space.max_tp) {
            for c in (0..9).map(|i| 1u64 << i).filter(|&c| c <= space.max_cp) {
                let per_replica = p * t * c;
                if space.gpus % per_replica != 0 || space.shape.heads % t != 0 {
                    continue;
                }
                let dp = space.gpus / per_replica;
                if space.global_batch % dp != 0 {
                    continue;
                }
                let m = space.global_batch / dp;
                let Ok(parallel) = Parallelism::new(t, c, dp) else {
                    continue;
                };
                for kind in kinds(p, l / p) {
                    for recompute in [
                        RecomputePolicy::None,
                        RecomputePolicy::Selective,
                        RecomputePolicy::Full,
                    ] {
                        for offload_fraction in [0.0, 0.25, 0.5, 0.75, 1.0] {
                            out.push(Candidate {
                                kind,
                                stages: p,
                                parallel,
                                microbatches: m,
                                recompute,
                                offload_fraction,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Scores one candidate, its bubble from the closed form of its kind.
pub fn evaluate(space: &SearchSpace, c: &Candidate) -> Result<Evaluation> {
    let bubble = c.kind.bubble_ratio(c.stages, c.microbatches)?;
    evaluate_at(space, c, bubble, BubbleSource::ClosedForm)
}

/// Scores one candidate with the given bubble ratio (a simulated one,
/// [`crate::simulated_bubbles`]) from `source`.
pub fn evaluate_at(
    space: &SearchSpace,
    c: &Candidate,
    bubble: f64,
    source: BubbleSource,
) -> Result<Evaluation> {
    let sharded = matches!(c.kind, PipelineKind::SlimPipe { .. });
    let logits = if sharded {
        LogitsPlacement::VocabSharded
    } else {
        LogitsPlacement::LastStage
    };
    let mut activation = ActivationModel::new(space.shape, c.parallel)?.with_recompute(c.recompute);
    activation.logits = logits;
    let offload_traffic = offload_traffic_time(space, c, &activation);
    let config = StaticConfig {
        activation,
        states: StateOptions {
            vocab: logits,
            ..StateOptions::default()
        },
        kind: c.kind,
        stages: c.stages,
        microbatches: c.microbatches,
        seq_len: space.seq_len,
        offload_fraction: c.offload_fraction,
    };
    let peaks = config.peaks()?;
    let worst = peaks
        .iter()
        .max_by(|a, b| a.total().total_cmp(&b.total()))
        .copied()
        .ok_or(crate::error::MemoryError::NotPositive {
            what: "stages",
            value: 0,
        })?;
    let cost = CostModel::flops(&space.shape)?;
    let model_flops = 3.0 * cost.sequence(space.seq_len) * space.global_batch as f64;
    let per_gpu = model_flops / space.gpus as f64;
    // Layers' share of the FLOPs (embedding and head are not recomputed).
    let vocab = 3.0 * space.shape.vocab_flops_per_token() * space.seq_len as f64;
    let layer_share = 1.0 - vocab * space.global_batch as f64 / model_flops;
    let recompute = match c.recompute {
        RecomputePolicy::Full => layer_share / 3.0,
        _ => 0.0,
    };
    // The attention core's share of the FLOPs, at its own efficiency.
    let attention = 3.0 * cost.per_pair * CostModel::attention_pairs(0, space.seq_len);
    let attention_share = attention * space.global_batch as f64 / model_flops;
    let per_flop = space
        .efficiency
        .seconds_per_flop(space.gpu.peak_flops, attention_share);
    let compute = per_gpu * (1.0 + recompute) * per_flop
        + selective_recompute_time(space, c.recompute)
        + offload_traffic;
    let k = space.gpu.offload_k(&space.shape, space.seq_len)?;
    let exposed = (c.offload_fraction * k - 1.0).max(0.0) * compute;
    let rate = 1.0 / per_flop;
    let net = &space.gpu.interconnect;
    let comm = crate::comm::step_comm(&space.shape, space.seq_len, c, net, rate, compute);
    // TP and CP stretch every unit, so the bubble grows with them; PP and DP sit outside it.
    let step_time = (compute + comm.tp + comm.cp) / (1.0 - bubble) + exposed + comm.pp + comm.dp;
    let mfu = model_flops / (step_time * space.gpus as f64 * space.gpu.peak_flops);
    Ok(Evaluation {
        candidate: *c,
        worst_stage: worst.stage,
        peak_bytes: worst.total(),
        states_bytes: worst.states.total(),
        bubble,
        bubble_source: source,
        step_time,
        mfu,
        comm,
        over_bytes: worst.total() - space.budget_bytes,
    })
}

/// Selective recomputation repeats memory-bound work, charged at HBM speed: both RMSNorms (read
/// and write `H`) and SwiGLU's product (read `2F`, write `F`), in bf16, per layer and token,
/// spread over every GPU.
fn selective_recompute_time(space: &SearchSpace, policy: RecomputePolicy) -> f64 {
    if policy != RecomputePolicy::Selective {
        return 0.0;
    }
    let shape = &space.shape;
    let per_token_layer = (4 * shape.hidden + 3 * shape.ffn_hidden) as f64 * 2.0;
    let tokens = (space.global_batch * space.seq_len) as f64;
    tokens * shape.layers as f64 * per_token_layer
        / space.gpus as f64
        / space.gpu.memory_bytes_per_s
}

/// Offloaded activations leave HBM and come back (the copy engines read them out, later write
/// them in): traffic that competes with the kernels for HBM, charged at HBM speed even when the
/// host link hides the transfer itself.
fn offload_traffic_time(space: &SearchSpace, c: &Candidate, activation: &ActivationModel) -> f64 {
    let sequences = (space.global_batch / c.parallel.dp.max(1)) as f64;
    let tokens = sequences * space.seq_len as f64;
    let layers = space.shape.layers as f64 / c.stages as f64;
    let bytes = c.offload_fraction * activation.bytes_per_token_layer() * tokens * layers;
    2.0 * bytes / space.gpu.memory_bytes_per_s
}

/// Every evaluated candidate, its bubble from the closed form of its kind: fitting ones by
/// descending MFU (in 0.1 % steps), then the rest. Ties go to less offload, lighter
/// recomputation, smaller `t·c` and lower peak, in that order: a plan should not use a feature
/// that buys nothing in the model. [`crate::rank_by_simulation`] prices the leading plans by
/// simulating their schedules.
pub fn search(space: &SearchSpace) -> Result<Vec<Evaluation>> {
    positive("GPUs", space.gpus)?;
    positive("largest TP size", space.max_tp)?;
    positive("largest CP size", space.max_cp)?;
    positive("global batch", space.global_batch)?;
    positive("sequence length", space.seq_len)?;
    // Bounds far above any cluster that keep every product of counts inside u64.
    for (what, value, max, range) in [
        ("GPUs", space.gpus, 1u64 << 20, "1 to 2^20"),
        ("global batch", space.global_batch, 1 << 24, "1 to 2^24"),
        (
            "sequence length",
            space.seq_len,
            1 << 34,
            "1 to 2^34 tokens",
        ),
        ("largest TP size", space.max_tp, 1 << 10, "1 to 1024"),
        ("largest CP size", space.max_cp, 1 << 10, "1 to 1024"),
    ] {
        if value > max {
            return Err(crate::error::MemoryError::OutOfRange {
                what,
                value: value as f64,
                range,
            });
        }
    }
    let e = space.efficiency;
    for (what, value) in [
        ("kernel efficiency", e.linear),
        ("attention efficiency", e.attention),
    ] {
        if !(value > 0.0 && value <= 1.0) {
            return Err(crate::error::MemoryError::OutOfRange {
                what,
                value,
                range: "(0, 1]",
            });
        }
    }
    let mut evals: Vec<Evaluation> = candidates(space)
        .iter()
        // A candidate the closed forms refuse (e.g. more slices than tokens) is not a plan.
        .filter_map(|c| evaluate(space, c).ok())
        .collect();
    evals.sort_by(plan_order);
    Ok(evals)
}

/// The planner's order: fitting plans first, then by descending MFU (in 0.1 % steps: finer
/// differences are below the model's accuracy), then less offload, lighter recomputation, smaller
/// `t·c` and lower peak. Only the MFU depends on the bubble, and a larger bubble never moves a
/// plan forward.
pub fn plan_order(a: &Evaluation, b: &Evaluation) -> Ordering {
    let rank = |r: RecomputePolicy| match r {
        RecomputePolicy::None => 0,
        RecomputePolicy::Selective => 1,
        RecomputePolicy::Full => 2,
    };
    let tc = |e: &Evaluation| e.candidate.parallel.tp * e.candidate.parallel.cp;
    let mfu = |e: &Evaluation| (e.mfu * 1000.0).round() as i64;
    let (ca, cb) = (&a.candidate, &b.candidate);
    b.fits()
        .cmp(&a.fits())
        .then(mfu(b).cmp(&mfu(a)))
        .then(ca.offload_fraction.total_cmp(&cb.offload_fraction))
        .then(rank(ca.recompute).cmp(&rank(cb.recompute)))
        .then(tc(a).cmp(&tc(b)))
        .then(a.peak_bytes.total_cmp(&b.peak_bytes))
}
