//! The transport seam between pipeline ranks.
//!
//! Pipeline stages exchange activations and gradients, and data-parallel replicas reduce gradients,
//! through one object-safe trait, [`Transport`]; the trainer never knows which backend it holds:
//! - [`LocalTransport`]: ranks as threads of one process, messages moved through channels;
//! - [`TcpTransport`]: one process per rank over TCP, rendezvous from the launcher's environment;
//! - `NcclTransport` (feature `nccl`): one process per GPU; payloads over NCCL (host messages
//!   staged through device buffers, or `CudaSlice` tensors with no host round trip), with the TCP
//!   transport as its control plane for rendezvous, headers, timeouts and dead-peer detection.
//!
//! A [`Message`] is a shape, a [`DType`] and an owned typed buffer; a [`Tag`] says which unit of
//! work it belongs to, and a receive with the wrong tag is an error naming both tags and the peer.
//! Every blocking call has a timeout, a vanished peer fails the waiting rank with its name, and a
//! [`Watchdog`] can print every rank's last completed and pending operation. One conformance suite
//! (`tests/conformance/`) checks all of this on every backend.
//!
//! Architecture invariant: comm knows buffers, shapes and ranks, not schedules, models or tensors
//! (no candle dependency).
//!
//! ```
//! use seqpipe_comm::{CommOptions, LocalTransport, Message, Tag, TagKind, Transport};
//! let mut ranks = LocalTransport::mesh(2, CommOptions::default()).unwrap();
//! let (mut r0, mut r1) = (ranks.remove(0), ranks.remove(0));
//! let tag = Tag::new(TagKind::Act, 0, 1, 0).unwrap();
//! r0.send(1, tag, Message::from_f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap()).unwrap();
//! let got = r1.recv(0, tag).unwrap();
//! assert_eq!(got.shape(), &[2, 2]);
//! assert_eq!(got.into_f32().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
//! ```

#![deny(missing_docs)]

// The README's examples run as doc tests, so the first thing a reader runs is checked.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod collective;
pub mod error;
pub mod header;
pub mod local;
pub mod message;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod nccl_id;
pub mod progress;
pub mod tag;
pub mod tcp;
pub mod transport;

pub use collective::Group;
pub use error::{CommError, Result};
pub use header::Header;
pub use local::LocalTransport;
pub use message::{numel, DType, Data, Message};
#[cfg(feature = "nccl")]
pub use nccl::{probe, NcclElement, NcclTransport};
pub use nccl_id::UniqueIdBytes;
pub use progress::{Op, OpKind, Progress, Snapshot, Watchdog, WatchdogGuard};
pub use tag::{Tag, TagKind};
pub use tcp::{TcpConfig, TcpTransport};
pub use transport::{CommOptions, SendHandle, Transport};
