//! The `Transport` trait every backend implements, and the pieces backends share.
//!
//! Point-to-point is the core: `isend` never waits for the receiver (messages are buffered like
//! `isend`), `recv_timeout` waits for the next message from one peer and checks its tag. Messages
//! from one peer arrive in the order they were sent. Collectives are provided methods built on
//! point-to-point (see `collective.rs`), so every backend gets the same semantics and checks.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use crate::collective::{self, Group};
use crate::error::{CommError, Result};
use crate::message::{describe, DType, Message};
use crate::progress::{Op, OpKind, Progress};
use crate::tag::Tag;

/// Settings shared by all backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommOptions {
    /// How long any blocking call waits before it fails with [`CommError::Timeout`].
    pub timeout: Duration,
}

impl Default for CommOptions {
    /// Five minutes: long enough for a slow first step, short enough that a hang ends.
    fn default() -> Self {
        CommOptions {
            timeout: Duration::from_secs(300),
        }
    }
}

impl CommOptions {
    /// Options with the given timeout.
    pub fn with_timeout(timeout: Duration) -> CommOptions {
        CommOptions { timeout }
    }
}

/// The one seam between ranks. Object-safe; one value per rank, owned by that rank's thread.
pub trait Transport: Send {
    /// This rank.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// The timeout blocking calls use.
    fn timeout(&self) -> Duration;

    /// This rank's progress record (for a [`crate::Watchdog`]).
    fn progress(&self) -> Progress;

    /// Queues `msg` for `peer` and returns at once; the message is moved, not copied.
    fn isend(&mut self, peer: usize, tag: Tag, msg: Message) -> Result<SendHandle>;

    /// Waits up to `timeout` for the next message from `peer`; it must carry `tag`.
    fn recv_timeout(&mut self, peer: usize, tag: Tag, timeout: Duration) -> Result<Message>;

    /// The next message from `peer` if one has arrived (checked against `tag`), else `None`.
    fn try_recv(&mut self, peer: usize, tag: Tag) -> Result<Option<Message>>;

    /// The next message from `peer` whatever its tag, if one has arrived, else `None`: for a
    /// receiver that files messages by tag because some of them come in no order fixed in
    /// advance (the runtime's attention exchange). A backend that cannot says so.
    fn try_recv_any(&mut self, peer: usize) -> Result<Option<(Tag, Message)>> {
        Err(CommError::InvalidArgument(format!(
            "rank {} cannot receive from rank {peer} in arrival order: this transport receives \
             only by an expected tag (the NCCL backend); the attention exchange needs the local \
             or TCP backend",
            self.rank()
        )))
    }

    /// Sends without waiting for the receiver; delivery failures show up on the peer's side or on
    /// a later call to this peer.
    fn send(&mut self, peer: usize, tag: Tag, msg: Message) -> Result<()> {
        self.isend(peer, tag, msg).map(drop)
    }

    /// Waits up to [`Transport::timeout`] for the next message from `peer`, which must carry `tag`.
    fn recv(&mut self, peer: usize, tag: Tag) -> Result<Message> {
        let timeout = self.timeout();
        self.recv_timeout(peer, tag, timeout)
    }

    /// Like [`Transport::recv`], and the message must also have this dtype and shape.
    fn recv_expect(
        &mut self,
        peer: usize,
        tag: Tag,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Message> {
        let msg = self.recv(peer, tag)?;
        if msg.dtype() != dtype || msg.shape() != shape {
            return Err(CommError::ShapeMismatch {
                peer,
                tag,
                expected: describe(dtype, shape),
                received: msg.describe(),
            });
        }
        Ok(msg)
    }

    /// Element-wise sum over the group (f32 or f64); every member gets the same bits back.
    /// Every member must call it with the same dtype and shape, in the same order as the group's
    /// other collectives.
    fn all_reduce_sum(&mut self, group: &mut Group, msg: Message) -> Result<Message> {
        collective::all_reduce_sum(self, group, msg)
    }

    /// Copies `root`'s message to every member; `msg` is `Some` on the root and `None` elsewhere.
    fn broadcast(
        &mut self,
        group: &mut Group,
        root: usize,
        msg: Option<Message>,
    ) -> Result<Message> {
        collective::broadcast(self, group, root, msg)
    }

    /// Returns once every member of the group has entered the barrier.
    fn barrier(&mut self, group: &mut Group) -> Result<()> {
        collective::barrier(self, group)
    }

    /// The NCCL transport behind this one, whose device-buffer calls move GPU tensors without a
    /// host copy; `None` for host backends, which only move [`Message`]s.
    #[cfg(feature = "nccl")]
    fn as_nccl(&mut self) -> Option<&mut crate::NcclTransport> {
        None
    }
}

/// A boxed transport is a transport, so a trainer can hold `Box<dyn Transport>` and never know the
/// backend. Every method forwards, provided ones included, so a backend's own collectives (NCCL's
/// all-reduce) are still the ones that run behind the box.
impl<T: Transport + ?Sized> Transport for Box<T> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn world_size(&self) -> usize {
        (**self).world_size()
    }
    fn timeout(&self) -> Duration {
        (**self).timeout()
    }
    fn progress(&self) -> Progress {
        (**self).progress()
    }
    fn isend(&mut self, peer: usize, tag: Tag, msg: Message) -> Result<SendHandle> {
        (**self).isend(peer, tag, msg)
    }
    fn recv_timeout(&mut self, peer: usize, tag: Tag, timeout: Duration) -> Result<Message> {
        (**self).recv_timeout(peer, tag, timeout)
    }
    fn try_recv(&mut self, peer: usize, tag: Tag) -> Result<Option<Message>> {
        (**self).try_recv(peer, tag)
    }
    fn try_recv_any(&mut self, peer: usize) -> Result<Option<(Tag, Message)>> {
        (**self).try_recv_any(peer)
    }

    fn send(&mut self, peer: usize, tag: Tag, msg: Message) -> Result<()> {
        (**self).send(peer, tag, msg)
    }
    fn recv(&mut self, peer: usize, tag: Tag) -> Result<Message> {
        (**self).recv(peer, tag)
    }
    fn recv_expect(
        &mut self,
        peer: usize,
        tag: Tag,
        dtype: DType,
        shape: &[usize],
    ) -> Result<Message> {
        (**self).recv_expect(peer, tag, dtype, shape)
    }
    fn all_reduce_sum(&mut self, group: &mut Group, msg: Message) -> Result<Message> {
        (**self).all_reduce_sum(group, msg)
    }
    fn broadcast(
        &mut self,
        group: &mut Group,
        root: usize,
        msg: Option<Message>,
    ) -> Result<Message> {
        (**self).broadcast(group, root, msg)
    }
    fn barrier(&mut self, group: &mut Group) -> Result<()> {
        (**self).barrier(group)
    }
    #[cfg(feature = "nccl")]
    fn as_nccl(&mut self) -> Option<&mut crate::NcclTransport> {
        (**self).as_nccl()
    }
}

/// Completion of an [`Transport::isend`]: done once the message has left this rank's hands
/// (in the peer's inbox for the local backend, written to the socket for TCP).
#[derive(Debug)]
pub struct SendHandle {
    op: Op,
    state: HandleState,
}

#[derive(Debug)]
enum HandleState {
    Done(std::result::Result<(), String>),
    Pending(Receiver<std::result::Result<(), String>>),
}

impl SendHandle {
    /// A handle that is already complete.
    pub(crate) fn done(op: Op) -> SendHandle {
        SendHandle {
            op,
            state: HandleState::Done(Ok(())),
        }
    }

    /// A handle completed later through `rx` (a dropped sender counts as a failed write).
    pub(crate) fn pending(op: Op, rx: Receiver<std::result::Result<(), String>>) -> SendHandle {
        SendHandle {
            op,
            state: HandleState::Pending(rx),
        }
    }

    /// Non-blocking check: `true` once the send has finished (successfully or not).
    pub fn is_done(&mut self) -> bool {
        if let HandleState::Pending(rx) = &self.state {
            let outcome = match rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => Err("the link's writer stopped".into()),
            };
            self.state = HandleState::Done(outcome);
        }
        true
    }

    /// Waits up to `timeout` for the send to finish.
    pub fn wait(self, timeout: Duration) -> Result<()> {
        let op = self.op;
        let outcome = match self.state {
            HandleState::Done(r) => r,
            HandleState::Pending(rx) => match rx.recv_timeout(timeout) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(CommError::Timeout {
                        peer: op.peer,
                        op,
                        waited_ms: timeout.as_millis() as u64,
                    })
                }
                Err(RecvTimeoutError::Disconnected) => Err("the link's writer stopped".into()),
            },
        };
        outcome.map_err(|detail| CommError::PeerDisconnected {
            peer: op.peer,
            op,
            detail,
        })
    }
}

/// A message with its tag, as it travels.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub tag: Tag,
    pub msg: Message,
}

/// What a per-peer inbox yields: a message, or the reason the link broke.
pub(crate) type Incoming = std::result::Result<Envelope, String>;

/// Checks a peer index for a point-to-point call.
pub(crate) fn check_peer(rank: usize, world_size: usize, peer: usize) -> Result<()> {
    if peer >= world_size {
        return Err(CommError::BadRank {
            what: "peer",
            rank: peer,
            world_size,
        });
    }
    if peer == rank {
        return Err(CommError::SelfPeer { rank });
    }
    Ok(())
}

/// Receives from one peer's inbox with a timeout, checks the tag and records progress.
/// `None` as timeout means "do not wait" (try_recv).
pub(crate) fn receive(
    inbox: &Receiver<Incoming>,
    progress: &Progress,
    op: Op,
    timeout: Option<Duration>,
) -> Result<Option<Message>> {
    let Some(env) = receive_envelope(inbox, progress, op, timeout)? else {
        return Ok(None);
    };
    if env.tag != op.tag {
        progress.abandon();
        return Err(CommError::TagMismatch {
            peer: op.peer,
            expected: op.tag,
            received: env.tag,
        });
    }
    progress.complete(op);
    Ok(Some(env.msg))
}

/// The next message from one peer's inbox, whatever its tag, if one has arrived (the progress
/// record names it as a receive from `peer`).
pub(crate) fn receive_any(
    inbox: &Receiver<Incoming>,
    progress: &Progress,
    peer: usize,
) -> Result<Option<(Tag, Message)>> {
    let op = recv_op(peer, Tag::from_raw(0));
    let Some(env) = receive_envelope(inbox, progress, op, None)? else {
        return Ok(None);
    };
    progress.complete(recv_op(peer, env.tag));
    Ok(Some((env.tag, env.msg)))
}

/// The next envelope from one peer's inbox, whatever its tag: `op` is marked pending and stays
/// pending when an envelope comes back, so the caller completes or abandons it after its own
/// checks (the NCCL backend must still receive the payload of a mismatched header). Failures and
/// "nothing yet" clear it.
pub(crate) fn receive_envelope(
    inbox: &Receiver<Incoming>,
    progress: &Progress,
    op: Op,
    timeout: Option<Duration>,
) -> Result<Option<Envelope>> {
    progress.begin(op);
    let got = match timeout {
        Some(t) => inbox.recv_timeout(t).map_err(|e| match e {
            RecvTimeoutError::Timeout => CommError::Timeout {
                peer: op.peer,
                op,
                waited_ms: t.as_millis() as u64,
            },
            RecvTimeoutError::Disconnected => disconnected(op, "the link is closed"),
        }),
        None => match inbox.try_recv() {
            Ok(m) => Ok(m),
            Err(TryRecvError::Empty) => {
                progress.abandon();
                return Ok(None);
            }
            Err(TryRecvError::Disconnected) => Err(disconnected(op, "the link is closed")),
        },
    };
    match got.and_then(|incoming| incoming.map_err(|detail| disconnected(op, &detail))) {
        Ok(env) => Ok(Some(env)),
        Err(e) => {
            progress.abandon();
            Err(e)
        }
    }
}

pub(crate) fn disconnected(op: Op, detail: &str) -> CommError {
    CommError::PeerDisconnected {
        peer: op.peer,
        op,
        detail: detail.to_string(),
    }
}

/// The op record of a receive.
pub(crate) fn recv_op(peer: usize, tag: Tag) -> Op {
    Op {
        kind: OpKind::Recv,
        peer,
        tag,
    }
}

/// The op record of a send.
pub(crate) fn send_op(peer: usize, tag: Tag) -> Op {
    Op {
        kind: OpKind::Send,
        peer,
        tag,
    }
}
