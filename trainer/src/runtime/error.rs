//! Telling a root cause from its echoes: when one rank fails, its peers fail too (a dead peer,
//! or a timeout waiting on it), and the report must lead with the rank that failed first, not
//! with the ranks that noticed. The kinds come from [`crate::error::Error`].

use crate::error::Error;

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

/// Classifies an error by its kind.
pub fn cause(e: &Error) -> Cause {
    match e.kind() {
        Error::PeerLost(_) => Cause::Echo,
        Error::Timeout(_) => Cause::Waited,
        _ => Cause::Root,
    }
}

/// One error for the failures of several ranks, root causes first; ranks that failed with the
/// same message (each opening the same bad data file, say) are reported once.
pub fn combine(mut failures: Vec<Error>) -> Error {
    failures.sort_by_key(cause);
    let mut seen = std::collections::HashSet::new();
    failures.retain(|e| seen.insert(e.to_string()));
    if failures.len() == 1 {
        return failures.remove(0);
    }
    Error::Ranks { failures }
}
