//! Interleaved 1F1B (Megatron): each stage holds `v` chunks; units go in groups of `p`
//! micro-batches per chunk (forward: chunk 0..v−1 per group; backward: chunk v−1..0), and stage `r`
//! warms up with `(v−1)·p + 2(p−r−1)` forwards (capped at `m·v`).
//!
//! Requires `v ≥ 2` and `m` a multiple of `p` (Megatron's classic condition: every group full).
//! Peak `(v−1)p + 2(p−r−1) + 1` chunk-units in flight; bubble `(p−1)/(v·m+p−1)` with `B = 2F`.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{interleaved, simulate, P2p, UnitCosts};
//! let schedule = interleaved(2, 4, 2).unwrap(); // p = 2, m = 4, v = 2
//! assert_eq!(schedule.max_in_flight(), vec![5, 3]); // (v−1)p + 2(p−r−1) + 1
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap();
//! assert!((sim.bubble_ratio - 1.0 / 9.0).abs() < 1e-12); // (p−1)/(v·m+p−1)
//! ```

use crate::error::{Result, ScheduleError};
use crate::gen::core::{
    build_in_flight, check_size, group_interleave, lifo_order, sequence_order, BackwardStyle,
};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// Interleaved 1F1B over `p` stages, `m` micro-batches and `v` chunks per stage.
pub fn interleaved(stages: u32, microbatches: u32, chunks: u32) -> Result<Schedule> {
    let config =
        ScheduleConfig::new(ScheduleKind::Interleaved, stages, microbatches).with_chunks(chunks);
    config.check_positive()?;
    check_chunks(&config)?;
    if microbatches % stages != 0 {
        return Err(not_multiple(
            "interleaved",
            "micro-batches (m)",
            microbatches,
            stages,
        ));
    }
    grouped_interleaved(config)
}

/// `v ≥ 2` for the interleaved kinds.
pub(crate) fn check_chunks(config: &ScheduleConfig) -> Result<()> {
    if config.chunks < 2 {
        return Err(ScheduleError::Unsupported {
            kind: config.kind.name(),
            what: "chunks per stage (v)",
            value: config.chunks,
            valid: "interleaving needs v ≥ 2; for v = 1 use 1f1b or seq1f1b".into(),
        });
    }
    Ok(())
}

/// `value` is not a multiple of `divisor`: name the nearest valid values.
pub(crate) fn not_multiple(
    kind: &'static str,
    what: &'static str,
    value: u32,
    divisor: u32,
) -> ScheduleError {
    let below = value / divisor * divisor;
    let above = below + divisor;
    let nearest = if below == 0 {
        format!("{above}")
    } else {
        format!("{below} or {above}")
    };
    ScheduleError::NotDivisible {
        kind,
        what,
        value: u64::from(value),
        divisor: u64::from(divisor),
        why: format!("each group of {divisor} micro-batches must be full; try {nearest}"),
    }
}

/// Megatron's grouping over `(micro-batch, slice)` items, `p` items per group; shared with
/// Seq1F1B-I, whose items are slices. Warm-up `(v−1)p + 2(p−r−1) + (n−1)`.
pub(crate) fn grouped_interleaved(config: ScheduleConfig) -> Result<Schedule> {
    check_size(&config)?;
    let (p, m, n, v) = (
        config.stages,
        config.microbatches,
        config.slices,
        config.chunks,
    );
    let forwards = group_interleave(&sequence_order(m, n), p as usize, v, false);
    // With n | p every group holds whole micro-batches, so reversing slices inside each
    // micro-batch keeps the groups and makes the backward LIFO per micro-batch.
    let backwards = group_interleave(&lifo_order(m, n), p as usize, v, true);
    let target = |r: u32| ((v - 1) * p + 2 * (p - r - 1) + (n - 1) + 1) as usize;
    build_in_flight(config, &forwards, &backwards, target, BackwardStyle::Full)
}
