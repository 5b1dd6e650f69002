//! Pipeline schedules as data: the action IR, one generator per schedule kind, lowering passes,
//! validation, event simulation and renderers.
//!
//! A [`Schedule`] is one ordered list of [`Action`]s per physical stage. Generators
//! ([`generate`], or one function per kind in [`gen`]) emit compute actions; [`lower`] inserts the
//! matched sends and receives the trainer executes literally; [`validate`] checks every rule and
//! names the failing stage and step; [`simulate`] replays the lowered program with caller-given
//! durations and a point-to-point model and returns the timeline, makespan, bubble and units in
//! flight; [`render`] draws schedules and timelines (text, Chrome trace, SVG); [`csv`] reads and
//! writes seqpipe's CSV (PyTorch's layout plus slices); [`pytorch`] speaks PyTorch's own dialect,
//! with its lowering and lock-step simulation, so schedules move between the two unchanged.
//!
//! Placement: stage `r` running chunk `c` holds virtual stage `c·p + r` ([`virtual_stage`]).
//!
//! Architecture invariant: pure planning; no tensors, devices or IO (renderers write to a caller's
//! `Write`). Slice costs arrive as numbers; this crate never sees a model.
//!
//! ```
//! use seqpipe_schedule::{generate, simulate, P2p, ScheduleConfig, ScheduleKind, UnitCosts};
//! let config = ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(2);
//! let schedule = generate(&config).unwrap();
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap();
//! assert!((sim.bubble_ratio - 3.0 / 19.0).abs() < 1e-12); // (p−1)/(m·n+p−1)
//! assert_eq!(sim.max_in_flight()[0], 5); // p + n − 1 slices on stage 0
//! ```

#![deny(missing_docs)]

// The README's examples run as doc tests, so the first thing a reader runs is checked.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod action;
pub mod cost;
pub mod csv;
pub mod error;
pub mod exchange;
pub mod gen;
pub mod ids;
pub mod lower;
pub mod lowered;
pub mod pytorch;
pub mod render;
pub mod schedule;
pub mod simulate;
pub mod validate;
pub mod vocab;

pub use action::{Action, Compact, Op, Pair, Unit};
pub use cost::{CostTable, UnitCosts};
pub use error::{Blocked, Result, ScheduleError};
pub use exchange::{
    exchange_costs, exchange_steps, exchange_steps_on, insert_exchange, insert_exchange_on,
    matched_pairs, strip_exchange, AttentionCosts, ExchangePolicy,
};
pub use gen::{
    elastic, generate, gis, gpipe, group_pipelines, group_pipelines_bounded, interleaved,
    longest_first, one_f_one_b, seq1f1b, seq1f1b_interleaved, slimpipe, zb_h1, ElasticSchedule,
    Grouping,
};
pub use ids::{
    next_virtual_stage, placement, previous_virtual_stage, virtual_stage, Chunk, MicroBatch, Slice,
    Stage, VirtualStage,
};
pub use lower::{insert_comm, insert_recompute, lower, strip_comm};
pub use lowered::Lowered;
pub use schedule::{Schedule, ScheduleConfig, ScheduleKind};
pub use simulate::{
    simulate, simulate_bubble, simulate_span, simulate_timeline, MessageBytes, P2p, Simulation,
    Span, StageStats, Timed,
};
pub use validate::{validate, validate_ragged, Rule, Violation};
pub use vocab::{insert_vocab_parallel, strip_vocab};
