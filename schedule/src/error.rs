//! The one error type of the schedule crate: every variant names the bad value and what would be
//! valid.
//!
//! # Example
//!
//! ```
//! use seqpipe_schedule::{interleaved, ScheduleError};
//! let err = interleaved(4, 6, 2).unwrap_err();
//! assert!(matches!(err, ScheduleError::NotDivisible { value: 6, divisor: 4, .. }));
//! assert_eq!(
//!     err.to_string(),
//!     "interleaved: micro-batches (m) = 6 must be a multiple of 4 \
//!      (each group of 4 micro-batches must be full; try 4 or 8)"
//! );
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Everything that can go wrong while generating, reading, lowering or simulating a schedule.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ScheduleError {
    /// A count that must be positive was zero.
    #[error("{what} must be at least 1, got {value}")]
    NotPositive {
        /// Which quantity.
        what: &'static str,
        /// The value given.
        value: u32,
    },
    /// A schedule handed to an executor is not in runnable form.
    #[error("the schedule cannot be run: {reason}")]
    NotLowered {
        /// What is wrong, naming the first offending action where there is one.
        reason: String,
    },
    /// A schedule kind was given a parameter it does not take or a value outside its range.
    #[error("{kind}: {what} = {value} is not supported; {valid}")]
    Unsupported {
        /// Schedule kind.
        kind: &'static str,
        /// Which parameter.
        what: &'static str,
        /// The value given.
        value: u32,
        /// What would be valid, and what to use instead.
        valid: String,
    },
    /// A schedule kind needs one quantity to divide another.
    #[error("{kind}: {what} = {value} must be a multiple of {divisor} ({why})")]
    NotDivisible {
        /// Schedule kind.
        kind: &'static str,
        /// What must be a multiple.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What it must be a multiple of.
        divisor: u64,
        /// Why, and the nearest valid choices.
        why: String,
    },
    /// The schedule would have more actions than this crate is willing to build.
    #[error("schedule too large: {actions} actions (limit {limit}); use fewer micro-batches, slices or chunks")]
    TooLarge {
        /// Actions the configuration would create.
        actions: u64,
        /// The largest number accepted.
        limit: u64,
    },
    /// No schedule kind of that name.
    #[error("unknown schedule kind `{name}`; known kinds: {known}")]
    UnknownKind {
        /// The name given.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// Something PyTorch's pipelining dialect cannot say, or a PyTorch schedule seqpipe's IR
    /// cannot hold, or PyTorch's lowering or lock-step simulation could not progress.
    #[error("PyTorch dialect: {0}")]
    PyTorch(String),
    /// An action's text form did not parse.
    #[error("cannot read action `{text}`: {reason} (expected e.g. 2F0, 1B3, 0SEND_F1, 2F0.1)")]
    BadActionText {
        /// The text given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// A CSV schedule did not parse.
    #[error("CSV row {row} (stage {row}), column {column}: {reason}")]
    Csv {
        /// Row, 0-based (= physical stage).
        row: usize,
        /// Column, 0-based (= step).
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// JSON did not parse.
    #[error("schedule JSON: {0}")]
    Json(String),
    /// An action refers to a stage, chunk, micro-batch or slice outside the configuration.
    #[error(
        "stage {stage} step {position}: action {action} has {what} {value}, valid range 0..{limit}"
    )]
    OutOfRange {
        /// Stage whose list holds the action.
        stage: u32,
        /// Position in that list.
        position: usize,
        /// The action, as text.
        action: String,
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u32,
        /// One past the largest valid value.
        limit: u32,
    },
    /// The slice boundaries given to a pass do not describe the schedule's slices.
    #[error(
        "slice bounds {bounds:?}: a schedule of {slices} slices needs {} token offsets, \
         strictly increasing from 0 (slice j is bounds[j]..bounds[j + 1])",
        .slices + 1
    )]
    BadSliceBounds {
        /// The offsets given.
        bounds: Vec<u64>,
        /// Slices per sequence of the schedule.
        slices: u32,
    },
    /// A schedule cannot be executed: stages wait on each other forever.
    #[error("deadlock: {}", describe_blocked(.blocked))]
    Deadlock {
        /// Every stage that could not finish, with what it waits for.
        blocked: Vec<Blocked>,
    },
    /// A cost or size callback returned a value that cannot be a duration or a byte count.
    #[error("{what} of action {action} is {value}; it must be finite and non-negative")]
    BadCost {
        /// Which callback ("duration", "message bytes").
        what: &'static str,
        /// The action, as text.
        action: String,
        /// The value returned.
        value: f64,
    },
    /// A point-to-point model parameter is invalid.
    #[error("p2p {what} must be {valid}, got {value}")]
    BadP2p {
        /// Which parameter.
        what: &'static str,
        /// What would be valid.
        valid: &'static str,
        /// The value given.
        value: f64,
    },
    /// A send or receive that has no (or more than one) partner, found while simulating.
    #[error("stage {stage} step {position}: {action} {reason}")]
    Unmatched {
        /// Stage whose list holds the action.
        stage: u32,
        /// Position in that list.
        position: usize,
        /// The action, as text.
        action: String,
        /// What is wrong.
        reason: String,
    },
    /// A generator's orders contradict each other (a bug in this crate, reported rather than
    /// panicking).
    #[error(
        "internal: {kind} on stage {stage} would run the backward of {unit} before its forward"
    )]
    Inconsistent {
        /// Schedule kind.
        kind: &'static str,
        /// Stage.
        stage: u32,
        /// The unit, as text.
        unit: String,
    },
    /// No split of the sequences into pipelines is feasible (some sequence fits no pipeline).
    #[error("elastic grouping: sequence {item} fits in no pipeline of the given cost (every group containing it is infeasible); raise the memory budget or use more slices")]
    NoFeasibleGrouping {
        /// Index (in longest-first order) of the first sequence no group can take.
        item: usize,
    },
}

/// A stage that cannot make progress, as reported by [`ScheduleError::Deadlock`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The waiting stage.
    pub stage: u32,
    /// Position of the receive it waits in.
    pub position: usize,
    /// The receive, as text.
    pub action: String,
    /// The stage whose send it waits for (`None` if no stage exists for it).
    pub waits_for: Option<u32>,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stage {} waits at step {} in {}",
            self.stage, self.position, self.action
        )?;
        match self.waits_for {
            Some(s) => write!(f, " for stage {s}"),
            None => write!(f, " for a sender that does not exist"),
        }
    }
}

fn describe_blocked(blocked: &[Blocked]) -> String {
    let parts: Vec<String> = blocked.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ScheduleError>;

/// `Ok(value)` if `value ≥ 1`.
pub(crate) fn positive(what: &'static str, value: u32) -> Result<u32> {
    if value == 0 {
        Err(ScheduleError::NotPositive { what, value })
    } else {
        Ok(value)
    }
}
