//! The configurations and data the memory features' oracles (`recompute.rs`,
//! `offload_oracle.rs`) run: every schedule kind on 2 stages and 4 micro-batches.

use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_trainer::runtime::IterationInput;

use crate::common::{data, slice_ranges, tiny_model, Slicing};

/// Tokens per sequence and sequences per micro-batch.
pub const SEQ: usize = 16;
pub const BATCH: usize = 2;

/// `kind` on 2 stages, 4 micro-batches; slicing kinds cut sequences in 2, interleaved kinds
/// hold 2 chunks per stage (2 layers per chunk of the tiny model, so partial full
/// recomputation recomputes half).
pub fn two_stage_config(kind: ScheduleKind) -> (ScheduleConfig, Slicing) {
    use ScheduleKind::*;
    let c = ScheduleConfig::new(kind, 2, 4);
    match kind {
        Seq1F1B => (c.with_slices(2), Slicing::Balanced),
        SlimPipe | Seq1F1BInterleaved => (c.with_slices(2).with_chunks(2), Slicing::Uniform),
        Interleaved => (c.with_chunks(2), Slicing::None),
        Gis => (c.with_chunks(2).with_group(2), Slicing::None),
        GPipe | OneFOneB | ZbH1 => (c, Slicing::None),
    }
}

/// One iteration's data for `sc`, drawn from `seed`.
pub fn input(sc: &ScheduleConfig, slicing: Slicing, seed: u64) -> IterationInput {
    let model = tiny_model();
    let m = sc.microbatches as usize;
    IterationInput {
        ragged: None,
        documents: None,
        tokens: data(&model, m, BATCH, SEQ, seed),
        masks: None,
        slices: slice_ranges(&model, slicing, SEQ, sc.slices as usize),
        normaliser: (m * BATCH * SEQ) as f64,
    }
}
