//! The one error type of the comm crate: every variant names the rank, peer, tag or value at fault.
//!
//! A hung pipeline is the hardest failure to debug, so the fault variants (`Timeout`,
//! `PeerDisconnected`) always carry the peer and the operation that was pending.

use thiserror::Error;

use crate::message::DType;
use crate::progress::Op;
use crate::tag::Tag;

/// Everything that can go wrong while moving buffers between ranks.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CommError {
    /// A rank or peer index outside `0..world_size`.
    #[error("{what} {rank} is out of range: valid ranks are 0..{world_size}")]
    BadRank {
        /// Which index (e.g. "peer", "rank", "broadcast root").
        what: &'static str,
        /// The index given.
        rank: usize,
        /// World size.
        world_size: usize,
    },
    /// A rank tried to send to or receive from itself.
    #[error("rank {rank} cannot send to or receive from itself: pick a peer other than {rank}")]
    SelfPeer {
        /// The rank.
        rank: usize,
    },
    /// A world or group that cannot exist (empty, duplicated ranks, caller not a member).
    #[error("invalid group {ranks:?} for rank {rank}: {reason}")]
    BadGroup {
        /// The group's ranks as given.
        ranks: Vec<usize>,
        /// The calling rank.
        rank: usize,
        /// What is wrong and what would be valid.
        reason: String,
    },
    /// A buffer does not hold exactly the number of elements its shape says.
    #[error("shape {shape:?} needs {expected} elements of {dtype}, but the buffer holds {actual}")]
    BadShape {
        /// The shape given.
        shape: Vec<usize>,
        /// Element type.
        dtype: DType,
        /// Elements the shape implies (saturated at `usize::MAX` on overflow).
        expected: usize,
        /// Elements in the buffer.
        actual: usize,
    },
    /// A tag field outside its bit range.
    #[error("tag field `{field}` = {value} is out of range: valid values are 0..={max}")]
    TagField {
        /// Field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The largest valid value.
        max: u64,
    },
    /// The next message from a peer carried a different tag than the receiver expected.
    #[error("tag mismatch from rank {peer}: expected {expected}, received {received} (both ranks must run the same schedule)")]
    TagMismatch {
        /// The sending rank.
        peer: usize,
        /// Tag the receiver asked for.
        expected: Tag,
        /// Tag on the message.
        received: Tag,
    },
    /// A message (or a collective contribution) had another dtype or shape than expected.
    #[error("shape mismatch from rank {peer} for {tag}: expected {expected}, received {received}")]
    ShapeMismatch {
        /// The rank whose message differed.
        peer: usize,
        /// The tag of the exchange.
        tag: Tag,
        /// Expected `dtype[shape]`.
        expected: String,
        /// Received `dtype[shape]`.
        received: String,
    },
    /// An operation that works on some element types only got another one.
    #[error("{op} does not support dtype {dtype}; supported: {supported}")]
    UnsupportedDType {
        /// The operation.
        op: &'static str,
        /// The dtype given.
        dtype: DType,
        /// The dtypes that work.
        supported: &'static str,
    },
    /// A typed view asked for another dtype than the message holds.
    #[error("message holds {actual} elements, not {expected}")]
    DTypeMismatch {
        /// The dtype asked for.
        expected: DType,
        /// The dtype held.
        actual: DType,
    },
    /// A blocking call waited its whole timeout.
    #[error("timed out after {waited_ms} ms waiting on rank {peer} for {op}; the peer may be stuck or running a different schedule")]
    Timeout {
        /// The rank waited on.
        peer: usize,
        /// The pending operation.
        op: Op,
        /// How long it waited.
        waited_ms: u64,
    },
    /// The peer's end of the link is gone (its thread or process ended, or the socket broke).
    #[error("rank {peer} disconnected during {op}: {detail}")]
    PeerDisconnected {
        /// The rank that went away.
        peer: usize,
        /// The pending operation.
        op: Op,
        /// What the link reported.
        detail: String,
    },
    /// Bytes on a link that do not form a valid frame.
    #[error("protocol error on the link from rank {peer}: {detail}")]
    Protocol {
        /// The sending rank.
        peer: usize,
        /// What was wrong.
        detail: String,
    },
    /// Rendezvous (finding the other ranks) failed.
    #[error("rendezvous failed on rank {rank}: {detail}")]
    Rendezvous {
        /// This rank.
        rank: usize,
        /// What failed and what was waited for.
        detail: String,
    },
    /// A launcher environment variable is missing or malformed.
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        /// Variable name.
        var: &'static str,
        /// Its value (empty when unset).
        value: String,
        /// What would be valid.
        reason: String,
    },
    /// A bad argument not covered above (e.g. a broadcast payload on a non-root rank).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A shared library the NCCL backend needs could not be loaded.
    #[error("{library} could not be loaded: {hint}")]
    LibraryMissing {
        /// The library (`libcuda`, `libnccl`).
        library: &'static str,
        /// How to fix it.
        hint: String,
    },
    /// A CUDA driver or NCCL call failed.
    #[error("device error on rank {rank} during {op}: {detail}")]
    Device {
        /// This rank.
        rank: usize,
        /// The operation.
        op: &'static str,
        /// The driver's or NCCL's message.
        detail: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CommError>;
