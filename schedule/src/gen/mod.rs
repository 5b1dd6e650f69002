//! Generators: one file per schedule kind, each a free function of its parameters, plus
//! [`generate`], which dispatches on a [`ScheduleConfig`].
//!
//! Generators emit compute actions only (`F`, `B`, `I`, `W`); [`crate::lower`] adds the sends and
//! receives. Every generator checks its SPEC §3 constraints up front and returns an error naming
//! the bad parameter and its valid range.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{generate, ScheduleConfig, ScheduleError, ScheduleKind};
//! let schedule = generate(&ScheduleConfig::new(ScheduleKind::GPipe, 2, 3)).unwrap();
//! assert_eq!(schedule.len(), 12); // 2 stages × 3 micro-batches × (F, B)
//! assert!(!schedule.lowered); // compute only; `lower` adds the sends and receives
//! // A parameter the kind does not take is refused, not ignored.
//! let sliced = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 3).with_slices(2);
//! assert!(matches!(generate(&sliced), Err(ScheduleError::Unsupported { .. })));
//! ```

pub(crate) mod core;
pub mod elastic;
pub mod gis;
pub mod gpipe;
pub mod interleaved;
pub mod one_f_one_b;
pub mod seq1f1b;
pub mod seq1f1b_interleaved;
pub mod slimpipe;
pub mod zb_h1;

pub use self::core::MAX_ACTIONS;
pub use elastic::{
    elastic, group_pipelines, group_pipelines_bounded, longest_first, ElasticSchedule, Grouping,
};
pub use gis::gis;
pub use gpipe::gpipe;
pub use interleaved::interleaved;
pub use one_f_one_b::one_f_one_b;
pub use seq1f1b::seq1f1b;
pub use seq1f1b_interleaved::seq1f1b_interleaved;
pub use slimpipe::slimpipe;
pub use zb_h1::zb_h1;

use self::core::require_one;
use crate::error::{Result, ScheduleError};
use crate::schedule::{Schedule, ScheduleConfig, ScheduleKind};

/// Generates the compute-only schedule a configuration describes.
///
/// Parameters a kind does not take must be left at 1 (`n`, `v`) or `None` (`g`); anything else is
/// an error rather than silently ignored.
pub fn generate(config: &ScheduleConfig) -> Result<Schedule> {
    config.check_positive()?;
    let c = *config;
    let kind = c.kind.name();
    let no_slices = |instead: &str| require_one(kind, "slices per sequence (n)", c.slices, instead);
    let no_chunks = |instead: &str| require_one(kind, "chunks per stage (v)", c.chunks, instead);
    let no_group = || match c.group {
        None => Ok(()),
        Some(g) => Err(ScheduleError::Unsupported {
            kind,
            what: "group size (g)",
            value: g,
            valid: format!("{kind} has no group parameter; only slimpipe and gis take one"),
        }),
    };
    match c.kind {
        ScheduleKind::GPipe => {
            gpipe::check_kind_params(&c)?;
            no_group()?;
            gpipe(c.stages, c.microbatches, c.slices)
        }
        ScheduleKind::OneFOneB => {
            no_slices("use seq1f1b for sliced sequences")?;
            no_chunks("use interleaved for v > 1")?;
            no_group()?;
            one_f_one_b(c.stages, c.microbatches)
        }
        ScheduleKind::Interleaved => {
            no_slices("use seq1f1b-i or slimpipe for sliced sequences")?;
            no_group()?;
            interleaved(c.stages, c.microbatches, c.chunks)
        }
        ScheduleKind::Seq1F1B => {
            no_chunks("use seq1f1b-i or slimpipe for v > 1")?;
            no_group()?;
            seq1f1b(c.stages, c.microbatches, c.slices)
        }
        ScheduleKind::Seq1F1BInterleaved => {
            no_group()?;
            seq1f1b_interleaved(c.stages, c.microbatches, c.slices, c.chunks)
        }
        ScheduleKind::SlimPipe => slimpipe(c.stages, c.microbatches, c.slices, c.chunks, c.group),
        ScheduleKind::ZbH1 => {
            no_slices("zero-bubble schedules here are unsliced")?;
            no_chunks("ZB-H1 runs one chunk per stage")?;
            no_group()?;
            zb_h1(c.stages, c.microbatches)
        }
        ScheduleKind::Gis => {
            no_slices("gis is unsliced; use slimpipe for sliced interleaving")?;
            gis(c.stages, c.microbatches, c.chunks, c.group)
        }
    }
}
