//! GPipe: every forward, then every backward (LIFO over slices within a micro-batch).
//!
//! Peak `m·n` units in flight on every stage; bubble `(p−1)/(m·n+p−1)` with equal units.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{gpipe, simulate, P2p, UnitCosts};
//! let schedule = gpipe(3, 4, 1).unwrap();
//! assert_eq!(schedule.max_in_flight(), vec![4, 4, 4]); // every micro-batch on every stage
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap();
//! assert!((sim.bubble_ratio - 2.0 / 6.0).abs() < 1e-12); // (p−1)/(m·n+p−1)
//! ```

use crate::action::Unit;
use crate::error::Result;
use crate::gen::core::{
    build_in_flight, check_size, lifo_order, require_one, sequence_order, BackwardStyle,
};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// GPipe over `p` stages, `m` micro-batches and `n` slices per sequence.
pub fn gpipe(stages: u32, microbatches: u32, slices: u32) -> Result<Schedule> {
    let config = ScheduleConfig::new(ScheduleKind::GPipe, stages, microbatches).with_slices(slices);
    config.check_positive()?;
    check_size(&config)?;
    let units = |order: Vec<(u32, u32)>| -> Vec<Unit> {
        order
            .into_iter()
            .map(|(mb, s)| Unit::new(mb, s, 0))
            .collect()
    };
    let forwards = units(sequence_order(microbatches, slices));
    let backwards = units(lifo_order(microbatches, slices));
    let all = forwards.len();
    build_in_flight(config, &forwards, &backwards, |_| all, BackwardStyle::Full)
}

/// Checks the parameters GPipe does not take.
pub(crate) fn check_kind_params(config: &ScheduleConfig) -> Result<()> {
    require_one(
        "gpipe",
        "chunks per stage (v)",
        config.chunks,
        "GPipe runs one chunk per stage",
    )
}
