//! Seq1F1B: 1F1B over slices. Forwards go micro-batch-major with slices ascending; backwards are
//! LIFO within a micro-batch (slice `j` needs the dK/dV of slices `> j`) and FIFO across
//! micro-batches. Stage `r` warms up with `min(p−r−1 + n−1, m·n)` forwards, so at most
//! `p−r+n−1` slices are in flight; bubble `(p−1)/(m·n+p−1)` with equal slices and `B = 2F`.
//!
//! With `n = 2`, stage 0 of `p = 4` warms up with F(0a) F(0b) F(1a) F(1b): micro-batch 0's slices
//! then micro-batch 1's.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::seq1f1b;
//! let schedule = seq1f1b(4, 2, 2).unwrap(); // p = 4, m = 2, n = 2
//! // Stage 0 warms up with micro-batch 0's slices, then micro-batch 1's.
//! assert_eq!(schedule.to_texts()[0][..4], ["0F0.0", "0F0.1", "0F1.0", "0F1.1"]);
//! assert_eq!(schedule.max_in_flight(), vec![4, 4, 3, 2]); // p − r + n − 1, at most m·n
//! ```

use crate::action::Unit;
use crate::error::Result;
use crate::gen::core::{build_in_flight, check_size, lifo_order, sequence_order, BackwardStyle};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// Seq1F1B over `p` stages, `m` micro-batches and `n` slices per sequence.
pub fn seq1f1b(stages: u32, microbatches: u32, slices: u32) -> Result<Schedule> {
    let config =
        ScheduleConfig::new(ScheduleKind::Seq1F1B, stages, microbatches).with_slices(slices);
    sliced_one_f_one_b(config)
}

/// The shared body of 1F1B (`n = 1`) and Seq1F1B.
pub(crate) fn sliced_one_f_one_b(config: ScheduleConfig) -> Result<Schedule> {
    config.check_positive()?;
    check_size(&config)?;
    let (p, m, n) = (config.stages, config.microbatches, config.slices);
    let units = |order: Vec<(u32, u32)>| -> Vec<Unit> {
        order
            .into_iter()
            .map(|(mb, s)| Unit::new(mb, s, 0))
            .collect()
    };
    let forwards = units(sequence_order(m, n));
    let backwards = units(lifo_order(m, n));
    // Warm-up p−r−1 + n−1, plus the forward of the first 1F1B pair.
    let target = |r: u32| (p - r - 1 + n - 1 + 1) as usize;
    build_in_flight(config, &forwards, &backwards, target, BackwardStyle::Full)
}
