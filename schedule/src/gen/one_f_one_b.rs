//! 1F1B (PipeDream-flush, Megatron's default): `min(p−r−1, m)` warm-up forwards on stage `r`, then
//! one forward / one backward pairs, then the remaining backwards.
//!
//! Peak `p−r` micro-batches in flight on stage `r`; bubble `(p−1)/(m+p−1)` with `B = 2F`.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{one_f_one_b, simulate, P2p, UnitCosts};
//! let schedule = one_f_one_b(4, 8).unwrap();
//! assert_eq!(schedule.max_in_flight(), vec![4, 3, 2, 1]); // p − r
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap();
//! assert!((sim.bubble_ratio - 3.0 / 11.0).abs() < 1e-12); // (p−1)/(m+p−1)
//! ```

use crate::error::Result;
use crate::gen::seq1f1b::sliced_one_f_one_b;
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// 1F1B over `p` stages and `m` micro-batches.
pub fn one_f_one_b(stages: u32, microbatches: u32) -> Result<Schedule> {
    let config = ScheduleConfig::new(ScheduleKind::OneFOneB, stages, microbatches);
    sliced_one_f_one_b(config)
}
