//! Seq1F1B interleaved: Megatron's interleaved 1F1B where the grouped items are slices, not
//! micro-batches — groups of `p` consecutive slices (micro-batch-major) per chunk — with warm-up
//! `(v−1)·p + 2(p−r−1) + (n−1)` on stage `r` (SPEC §3).
//!
//! We implement the slice grouping (the authors' figure groups `p` micro-batches; both are legal).
//! It requires `n` to divide `p`, so every group holds whole micro-batches and the backward can be
//! LIFO within each micro-batch while keeping Megatron's group structure, and `m·n` to be a
//! multiple of `p` (every group full). For `n > p` use SlimPipe, whose cycles are built for it:
//! the SPEC's warm-up itself rules `n > p` out, since the last stage's first backward (LIFO, so
//! the micro-batch's last slice on its last chunk) needs all `n·v` forwards of the micro-batch,
//! and `(v−1)·p + (n−1) + 1 ≥ n·v` holds only for `n ≤ p`.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{seq1f1b_interleaved, validate, ScheduleError};
//! let schedule = seq1f1b_interleaved(4, 4, 2, 2).unwrap(); // p = 4, m = 4, n = 2, v = 2
//! assert!(validate(&schedule).is_empty());
//! assert_eq!(schedule.max_in_flight()[0], 12); // (v−1)p + 2(p−1) + (n−1) + 1
//! // n must divide p: 3 slices on 4 stages is SlimPipe's job.
//! let err = seq1f1b_interleaved(4, 4, 3, 2).unwrap_err();
//! assert!(matches!(err, ScheduleError::Unsupported { value: 3, .. }));
//! ```

use crate::error::{Result, ScheduleError};
use crate::gen::interleaved::{check_chunks, grouped_interleaved, not_multiple};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// Seq1F1B-I over `p` stages, `m` micro-batches, `n` slices and `v` chunks per stage.
pub fn seq1f1b_interleaved(
    stages: u32,
    microbatches: u32,
    slices: u32,
    chunks: u32,
) -> Result<Schedule> {
    let config = ScheduleConfig::new(ScheduleKind::Seq1F1BInterleaved, stages, microbatches)
        .with_slices(slices)
        .with_chunks(chunks);
    config.check_positive()?;
    check_chunks(&config)?;
    if stages % slices != 0 {
        let divisors: Vec<String> = (1..=stages)
            .filter(|d| stages % d == 0)
            .map(|d| d.to_string())
            .collect();
        return Err(ScheduleError::Unsupported {
            kind: "seq1f1b-i",
            what: "slices per sequence (n)",
            value: slices,
            valid: format!(
                "n must divide p = {stages} (one of {}); for n > p use slimpipe",
                divisors.join(", ")
            ),
        });
    }
    let items = microbatches * slices;
    if items % stages != 0 {
        let per_group = stages / slices;
        return Err(not_multiple(
            "seq1f1b-i",
            "micro-batches (m)",
            microbatches,
            per_group,
        ));
    }
    grouped_interleaved(config)
}
