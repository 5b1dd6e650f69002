//! The runtime's errors, typed so a caller can tell a root cause from its echoes: when one rank
//! fails, its peers fail too (a dead peer, or a timeout waiting on it), and the report must lead
//! with the rank that failed first, not with the ranks that noticed.

use seqpipe_comm::CommError;
use thiserror::Error;

/// Why a rank's step failed, as far as the runtime can tell.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// Several ranks failed; the root causes come first.
    #[error("{} of the run's ranks failed:\n  {}", failures.len(), failures.join("\n  "))]
    Ranks {
        /// One line per failed rank, root causes first.
        failures: Vec<String>,
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
}

/// How a failure relates to others: a root cause, or a consequence of another rank's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// This rank failed on its own.
    Root,
    /// This rank timed out waiting (the waited-on rank may be slow or stuck).
    Waited,
    /// This rank failed because a peer went away.
    Echo,
}

/// Classifies an error by the typed errors in its chain.
pub fn cause(e: &anyhow::Error) -> Cause {
    for c in e.chain() {
        let comm = c.downcast_ref::<CommError>();
        match comm {
            Some(CommError::PeerDisconnected { .. }) => return Cause::Echo,
            Some(CommError::Timeout { .. }) => return Cause::Waited,
            _ => {}
        }
    }
    Cause::Root
}

/// One error for the failures of several ranks, root causes first (each line is the full chain).
pub fn combine(mut failures: Vec<anyhow::Error>) -> anyhow::Error {
    if failures.len() == 1 {
        return failures.remove(0);
    }
    failures.sort_by_key(cause);
    RuntimeError::Ranks {
        failures: failures.iter().map(|e| format!("{e:#}")).collect(),
    }
    .into()
}
