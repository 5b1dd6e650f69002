//! The trainer library's errors. Each variant is a kind of failure a caller may handle
//! differently: a bad configuration or checkpoint is the user's to fix, a dead peer or a
//! timeout is a distributed failure whose root cause is another rank's, a diverged run is the
//! model's. The binary turns them into `anyhow` at its edge; the library never matches on text.
//!
//! [`Context`] adds what the library was doing to any error (`.context("loading {path}")`), the
//! way `anyhow::Context` does, while keeping the kind: [`Error::kind`] looks through contexts.

use std::fmt::Display;

use seqpipe_comm::CommError;
use thiserror::Error;

/// The trainer library's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, by kind; the text names the bad value and what would be valid.
#[derive(Debug, Error)]
pub enum Error {
    /// A configuration value, option or environment variable that cannot be run.
    #[error("{0}")]
    Config(String),
    /// A checkpoint that is missing, incomplete, corrupt, or of another run or model.
    #[error("{0}")]
    Checkpoint(String),
    /// Training data that cannot be read or does not fit the model.
    #[error("{0}")]
    Data(String),
    /// A schedule the executor cannot run, or a step that broke the executor's invariants.
    #[error("{0}")]
    Runtime(String),
    /// The run's figures went bad (a non-finite or exploding loss or gradient) and it stopped.
    #[error("{0}")]
    Diverged(String),
    /// A peer rank went away: this rank's failure is an echo of the peer's.
    #[error(transparent)]
    PeerLost(CommError),
    /// Waiting on a peer rank took longer than the configured timeout.
    #[error(transparent)]
    Timeout(CommError),
    /// Any other transport failure (a mismatched message, a rendezvous, a device link).
    #[error(transparent)]
    Comm(CommError),
    /// Several ranks failed; the root causes come first.
    #[error("{} of the run's ranks failed:\n  {}", failures.len(), lines(failures))]
    Ranks {
        /// Each failed rank's error, root causes first.
        failures: Vec<Error>,
    },
    /// A rank's thread panicked.
    #[error("rank {rank} panicked")]
    Panicked {
        /// The rank.
        rank: usize,
    },
    /// A rank's transport was lost in an earlier failure: the run cannot continue.
    #[error("rank {rank}'s transport was lost in an earlier failure; build a new pipeline")]
    TransportLost {
        /// The rank.
        rank: usize,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The schedule crate refused a schedule.
    #[error(transparent)]
    Schedule(#[from] seqpipe_schedule::ScheduleError),
    /// The memory crate refused a model or layout.
    #[error(transparent)]
    Memory(#[from] seqpipe_memory::MemoryError),
    /// The slicing crate refused a slicing.
    #[error(transparent)]
    Slicing(#[from] seqpipe_slicing::SlicingError),
    /// A kernel refused its inputs.
    #[error(transparent)]
    Kernel(#[from] seqpipe_kernels::KernelError),
    /// A file or stream operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON that does not parse or does not fit its type.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// What the library was doing when `source` happened.
    #[error("{what}: {source}")]
    Context {
        /// What was being done.
        what: String,
        /// What went wrong.
        source: Box<Error>,
    },
}

impl Error {
    /// The error under all its contexts: the one whose variant says what kind of failure it is.
    pub fn kind(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.kind(),
            other => other,
        }
    }

    /// Wraps `self` in what was being done.
    pub fn context(self, what: impl Display) -> Error {
        Error::Context {
            what: what.to_string(),
            source: Box::new(self),
        }
    }
}

/// One error per line.
fn lines(errors: &[Error]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n  ")
}

/// A transport failure keeps its kind: a dead peer and a timeout are told apart from the rest.
impl From<CommError> for Error {
    fn from(e: CommError) -> Self {
        match e {
            CommError::PeerDisconnected { .. } => Error::PeerLost(e),
            CommError::Timeout { .. } => Error::Timeout(e),
            other => Error::Comm(other),
        }
    }
}

/// `anyhow::Context` for the library's typed errors.
pub trait Context<T> {
    /// Adds `what` was being done to the error.
    fn context(self, what: impl Display) -> Result<T>;
    /// Adds what was being done, computed only on failure.
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| e.into().context(what))
    }

    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

/// Returns early with an error of the given kind: `fail!(Config, "steps = {n} ...")`.
macro_rules! fail {
    ($kind:ident, $($arg:tt)+) => {
        return Err($crate::error::Error::$kind(format!($($arg)+)))
    };
}
pub(crate) use fail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_of_a_transport_failure_survives_contexts() {
        use seqpipe_comm::{CommOptions, LocalTransport, Tag, TagKind, Transport};
        let mut ranks = LocalTransport::mesh(2, CommOptions::default()).unwrap();
        drop(ranks.pop());
        let tag = Tag::new(TagKind::Act, 0, 0, 0).unwrap();
        let lost = ranks[0].recv(1, tag).map(drop);
        let e = lost.context("step 3").context("rank 0").unwrap_err();
        assert!(matches!(e.kind(), Error::PeerLost(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("rank 0: step 3: rank 1 disconnected"),
            "{e}"
        );
    }

    #[test]
    fn waiting_too_long_on_a_live_peer_is_a_timeout() {
        use seqpipe_comm::{CommOptions, LocalTransport, Tag, TagKind, Transport};
        let options = CommOptions::with_timeout(std::time::Duration::from_millis(20));
        let mut ranks = LocalTransport::mesh(2, options).unwrap();
        let tag = Tag::new(TagKind::Grad, 0, 0, 0).unwrap();
        let e = Error::from(ranks[0].recv(1, tag).unwrap_err()).context("step 0");
        assert!(matches!(e.kind(), Error::Timeout(_)), "{e:?}");
    }
}
