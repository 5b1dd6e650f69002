//! What `seqpipe train` runs, for the planner's output: a planned configuration whose features
//! the trainer does not run yet is marked with them, so a plan is never read as a promise the
//! trainer breaks ("the planner prices only what the trainer runs").

use seqpipe_memory::{Candidate, PipelineKind, RecomputePolicy};
use serde::Serialize;

use super::offload::Offload;
use super::recompute::Recompute;
use crate::config::SlicingMethod;

/// The features of `c` that the planner priced but `seqpipe train` does not run yet, in words.
pub fn planned_only(c: &Candidate) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if c.parallel.tp > 1 {
        missing.push("tensor parallelism");
    }
    if c.parallel.cp > 1 {
        missing.push("context parallelism");
    }
    if c.offload_fraction > 0.0 {
        // The planner hides the moves behind GPU compute. The trainer's host link copies on its
        // own thread, which overlaps compute on the CPU, but on CUDA it shares the compute
        // stream (no pinned buffers or copy stream yet), so a GPU run does not overlap.
        missing.push("offload overlapped with GPU compute");
    }
    // SlimPipe's vocabulary-sharded head and attention exchange, which the planner's simulation
    // prices, the trainer runs (`parallel.vocab_parallel`, `parallel.attention_exchange` with
    // `exchange_pairs = "level"`, which `plan --emit-config` writes).
    missing
}

/// The pipeline settings (`[parallel]` of a `seqpipe train` configuration) of a planned
/// configuration, to run it as planned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainParallel {
    /// Schedule kind.
    pub schedule: &'static str,
    /// Pipeline stages.
    pub stages: u64,
    /// Micro-batches per iteration and replica.
    pub microbatches: u64,
    /// Slices per sequence.
    pub slices: u64,
    /// Model chunks per stage.
    pub chunks: u64,
    /// GIS group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<u64>,
    /// Slicing method (balanced for Seq1F1B, as the planner prices it).
    pub slicing: SlicingMethod,
    /// Data-parallel replicas.
    pub replicas: u64,
    /// Recomputation.
    pub recompute: Recompute,
    /// Offload.
    pub offload: Offload,
}

/// `c`'s settings as `seqpipe train` takes them, or `None` when it needs tensor or context
/// parallelism, which the trainer does not have. Offload and SlimPipe run, though their marks
/// in [`planned_only`] say how the run differs from what was priced.
pub fn train_parallel(c: &Candidate) -> Option<TrainParallel> {
    (c.parallel.tp == 1 && c.parallel.cp == 1).then(|| pipeline_settings(c))
}

/// `c`'s pipeline settings (schedule, sizes, slicing, replicas, recomputation, offload),
/// whatever its tensor and context parallelism; [`train_parallel`] when the trainer runs it all.
pub fn pipeline_settings(c: &Candidate) -> TrainParallel {
    let group = match c.kind {
        PipelineKind::Gis { group, .. } => Some(group),
        _ => None,
    };
    let slicing = match c.kind {
        PipelineKind::Seq1F1B { .. } => SlicingMethod::Balanced,
        _ => SlicingMethod::Uniform,
    };
    TrainParallel {
        schedule: c.kind.name(),
        stages: c.stages,
        microbatches: c.microbatches,
        slices: c.kind.slices(),
        chunks: c.kind.chunks(),
        group,
        slicing,
        replicas: c.parallel.dp,
        recompute: match c.recompute {
            RecomputePolicy::None => Recompute::None,
            RecomputePolicy::Selective => Recompute::Selective,
            RecomputePolicy::Full => Recompute::Full { layers: Vec::new() },
        },
        offload: match c.offload_fraction {
            f if f > 0.0 => Offload::Fraction(f),
            _ => Offload::None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqpipe_memory::Parallelism;

    fn candidate(kind: PipelineKind, tp: u64, recompute: RecomputePolicy) -> Candidate {
        Candidate {
            kind,
            stages: 4,
            parallel: Parallelism::new(tp, 1, 1).unwrap(),
            microbatches: 8,
            recompute,
            offload_fraction: 0.0,
        }
    }

    #[test]
    fn what_the_trainer_runs_is_unmarked_and_the_rest_is_named() {
        let plain = candidate(PipelineKind::OneF1B, 1, RecomputePolicy::None);
        assert!(planned_only(&plain).is_empty());
        // Selective and full recomputation run (`--recompute selective|full`).
        let tp = candidate(PipelineKind::OneF1B, 2, RecomputePolicy::Full);
        assert_eq!(planned_only(&tp), ["tensor parallelism"]);
        let mut offload = plain;
        offload.offload_fraction = 0.5;
        assert_eq!(
            planned_only(&offload),
            ["offload overlapped with GPU compute"]
        );
    }
}
