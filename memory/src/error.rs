//! The one error type of the memory crate: every variant names the bad value and what would be valid.
//!
//! # Example
//!
//! ```
//! use seqpipe_memory::{MemoryError, StageLayout};
//! use seqpipe_slicing::preset;
//! let layout = StageLayout::new(3, 1).unwrap();
//! let err = layout.layers_per_chunk(&preset("llama-7b").unwrap()).unwrap_err();
//! assert!(matches!(err, MemoryError::NotDivisible { value: 32, divisor: 3, .. }));
//! assert_eq!(
//!     err.to_string(),
//!     "layers over stages × chunks: 32 is not divisible by 3; \
//!      use a stages × chunks that divides 32 (e.g. 2)"
//! );
//! ```

use thiserror::Error;

/// Everything that can go wrong while modelling, ledgering or planning memory.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum MemoryError {
    /// A count or size that must be positive was zero.
    #[error("{what} must be at least 1, got {value}")]
    NotPositive {
        /// Which quantity.
        what: &'static str,
        /// The value given.
        value: u64,
    },
    /// A quantity must divide another one evenly.
    #[error("{what}: {value} is not divisible by {divisor}; use a {divisor_name} that divides {value} (e.g. {example})")]
    NotDivisible {
        /// What is being divided (e.g. "layers per stage").
        what: &'static str,
        /// The dividend.
        value: u64,
        /// The divisor that does not divide it.
        divisor: u64,
        /// What the divisor is called on the command line or in the API.
        divisor_name: &'static str,
        /// A divisor that would work.
        example: u64,
    },
    /// A number outside its valid range (fractions, efficiencies, bandwidths).
    #[error("{what} must be in {range}, got {value}")]
    OutOfRange {
        /// Which quantity.
        what: &'static str,
        /// The value given.
        value: f64,
        /// The valid range, as text.
        range: &'static str,
    },
    /// A stage index beyond the pipeline.
    #[error("stage {stage} does not exist: stages are 0..{stages}")]
    NoSuchStage {
        /// Stage asked for.
        stage: usize,
        /// Number of stages.
        stages: usize,
    },
    /// A schedule configuration the closed forms do not cover.
    #[error("{kind} needs {requirement}, got {got}")]
    BadSchedule {
        /// Schedule kind.
        kind: &'static str,
        /// What it needs.
        requirement: &'static str,
        /// What was given.
        got: String,
    },
    /// A ledger event that contradicts the state of its unit.
    #[error("ledger: stage {stage}, time {time}: cannot {op} unit `{unit}`: {reason}")]
    BadEvent {
        /// Stage of the event.
        stage: usize,
        /// Time of the event.
        time: f64,
        /// The operation (allocate, free, offload, reload).
        op: &'static str,
        /// Unit label.
        unit: String,
        /// Why it is refused.
        reason: String,
    },
    /// No GPU preset of that name.
    #[error("unknown GPU preset `{name}`; known presets: {known}")]
    UnknownGpu {
        /// Name asked for.
        name: String,
        /// Comma-separated list of presets.
        known: String,
    },
    /// A recomputation problem with no feasible solution.
    #[error("recomputation cannot fit stage {stage} at step {step}: even recomputing every layer leaves {over_bytes:.0} bytes over the budget")]
    Infeasible {
        /// Stage that does not fit.
        stage: usize,
        /// Step (time index) of the violated constraint.
        step: usize,
        /// Bytes over budget at full recomputation.
        over_bytes: f64,
    },
    /// A recomputation instance too large for the exact solver.
    #[error("recomputation instance has {variables} variables of up to {values} values each; the exact search handles at most {limit} combinations")]
    TooLarge {
        /// Number of variables.
        variables: usize,
        /// Values per variable.
        values: u64,
        /// Combination limit.
        limit: u64,
    },
    /// An iteration to a fixed point did not settle.
    #[error("{what} did not settle in {rounds} rounds")]
    Unsettled {
        /// What was iterated.
        what: &'static str,
        /// Rounds run.
        rounds: usize,
    },
    /// The LP/MILP solver failed.
    #[error("solver: {0}")]
    Solver(String),
    /// Rendering a plot failed.
    #[error("plot: {0}")]
    Plot(String),
    /// A model shape or cost model error from the slicing crate.
    #[error(transparent)]
    Slicing(#[from] seqpipe_slicing::SlicingError),
    /// A schedule the simulator refused.
    #[error(transparent)]
    Schedule(#[from] seqpipe_schedule::ScheduleError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, MemoryError>;

/// Errors unless `value ≥ 1`.
pub(crate) fn positive(what: &'static str, value: u64) -> Result<u64> {
    if value == 0 {
        return Err(MemoryError::NotPositive { what, value });
    }
    Ok(value)
}
