//! Renderers: the stage × step text grid of a schedule, a time-aligned text timeline, Chrome trace
//! JSON (Perfetto / `chrome://tracing`, one track per stage) and an SVG timeline.
//!
//! Strings are returned for convenience; the `write_*` forms write to a caller's `Write`, so this
//! crate never opens a file.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{gpipe, render, simulate, P2p, UnitCosts};
//! let schedule = gpipe(2, 2, 1).unwrap();
//! let costs = UnitCosts::new(1.0, 2.0);
//! let sim = simulate(&schedule, |a| costs.cost(a), &P2p::free()).unwrap();
//! assert_eq!(render::grid(&schedule).lines().count(), 3); // a header and one row per stage
//! assert_eq!(render::timeline(&sim, 1.0).lines().count(), 2);
//! let mut out = Vec::new(); // any `Write`: a file, a socket, a buffer
//! render::write_svg(&sim, &mut out).unwrap();
//! assert!(out.starts_with(b"<svg"));
//! ```

pub mod chrome;
pub mod svg;
pub mod text;

pub use chrome::{chrome_trace, write_chrome_trace};
pub use svg::{svg, write_svg};
pub use text::{grid, timeline};

use crate::action::{Action, Op};
use crate::schedule::ScheduleConfig;

/// Short label of an action in a timeline: the compact text (virtual stage, op, micro-batch and
/// slice suffix when sliced).
pub(crate) fn label(config: &ScheduleConfig, a: &Action) -> String {
    a.text(config.stages, config.sliced())
}

/// Whether a timeline draws the action as a block (compute and memory ops; communication is
/// drawn only as the wait it causes).
pub(crate) fn drawn(op: Op) -> bool {
    op.is_compute() || op.is_memory() || op.is_vocab()
}

/// Fill colour per op (Tableau 10), shared by the SVG and documented in the trace's args.
pub(crate) fn colour(op: Op) -> &'static str {
    match op {
        Op::Forward => "#4e79a7",
        Op::Backward => "#59a14f",
        Op::BackwardInput => "#76b7b2",
        Op::BackwardWeight => "#edc948",
        Op::Offload => "#b07aa1",
        Op::Reload => "#ff9da7",
        Op::Recompute => "#f28e2b",
        Op::VocabEmbed | Op::VocabEmbedGrad => "#9c755f",
        Op::VocabHead => "#e15759",
        Op::SendAct | Op::RecvAct | Op::SendGrad | Op::RecvGrad => "#bab0ac",
    }
}
