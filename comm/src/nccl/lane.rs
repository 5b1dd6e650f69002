//! One direction between two ranks: a two-rank NCCL communicator of its own, on its own stream.
//!
//! NCCL point-to-point is a rendezvous on the GPU: `ncclSend` holds its stream until the peer posts
//! the matching `ncclRecv`, and NCCL does not promise that two of its operations progress at the
//! same time. On one shared stream, two ranks that both send before they receive would deadlock,
//! and so would a send whose receiver first waits on something queued behind it. A communicator
//! and a stream per ordered pair of ranks (the sender is lane rank 0, the receiver lane rank 1)
//! make every direction an independent FIFO, as the local backend's channel per ordered pair is:
//! a send waits only for earlier sends in its own direction, and a receive only for the matching
//! send, which the sender issued before it wrote the header the receiver acts on. So no wait ever
//! depends on a rank's future host calls, and `isend` never waits for the receiver.
//!
//! Every transfer is tracked until its completion event is seen, with the staging buffer it reads
//! or writes: a buffer is freed only after NCCL is done with it, and a lane whose transfer did not
//! complete is marked broken (its stream is stuck behind that transfer) and leaks its buffers
//! rather than block on them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use cudarc::nccl::Comm;

use crate::error::{CommError, Result};
use crate::progress::Op;
use crate::tcp::TcpTransport;

/// How long a peer whose control link has closed is still given to finish a transfer: its send
/// can complete on its side, and the peer exit, a moment before the receive completes here.
const GONE_GRACE: Duration = Duration::from_millis(500);

/// cudarc's `Comm` holds NCCL's raw `ncclComm_t`, so the compiler cannot tell that it may move
/// between threads; this wrapper says it may.
#[derive(Debug)]
pub(super) struct OwnedComm(Comm);

// SAFETY: the NCCL user guide ("Thread Safety") allows a communicator to be operated from any
// thread as long as one thread at a time operates it, and a group to be issued from one thread.
// `OwnedComm` is `Send` but not `Sync`, and is reached only through `&mut NcclTransport`, so its
// calls are never concurrent; this backend issues no NCCL groups. Before each NCCL call the
// transport binds its CUDA context to the calling thread (`NcclTransport::bind`). The other
// fields of `Comm` are an `Arc<CudaStream>` (itself `Send + Sync`) and two integers.
#[allow(unsafe_code)]
unsafe impl Send for OwnedComm {}

impl OwnedComm {
    pub(super) fn new(comm: Comm) -> OwnedComm {
        OwnedComm(comm)
    }

    pub(super) fn get(&self) -> &Comm {
        &self.0
    }
}

/// A transfer issued on a lane and not yet seen complete.
#[derive(Debug)]
struct InFlight {
    done: CudaEvent,
    /// The transport's own staging buffer, kept alive until NCCL is done with it (`None` for a
    /// caller's device buffer).
    _buffer: Option<CudaSlice<u8>>,
}

/// One direction to or from one peer.
#[derive(Debug)]
pub(super) struct Lane {
    /// Declared first so it is dropped (aborted) before the buffers below are freed.
    pub(super) comm: OwnedComm,
    pub(super) stream: Arc<CudaStream>,
    /// The other rank.
    pub(super) peer: usize,
    inflight: VecDeque<InFlight>,
    /// The failure that stuck this lane's stream, repeated to every later call that needs it.
    broken: Option<CommError>,
}

impl Lane {
    pub(super) fn new(comm: OwnedComm, stream: Arc<CudaStream>, peer: usize) -> Lane {
        Lane {
            comm,
            stream,
            peer,
            inflight: VecDeque::new(),
            broken: None,
        }
    }

    /// The lane, unless an earlier transfer on it never completed. Frees finished buffers.
    pub(super) fn usable(&mut self) -> Result<&mut Lane> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        while self.inflight.front().is_some_and(|f| f.done.is_complete()) {
            self.inflight.pop_front();
        }
        Ok(self)
    }

    /// Records a completion event after the transfer just issued and keeps `buffer` until then;
    /// returns a second event at the same point for a caller that waits on it.
    pub(super) fn track(
        &mut self,
        rank: usize,
        buffer: Option<CudaSlice<u8>>,
    ) -> Result<CudaEvent> {
        let record = || self.stream.record_event(None);
        let done = record().map_err(|e| super::device_err(rank, "record an NCCL completion", e))?;
        let theirs =
            record().map_err(|e| super::device_err(rank, "record an NCCL completion", e))?;
        self.inflight.push_back(InFlight {
            done,
            _buffer: buffer,
        });
        Ok(theirs)
    }

    /// Marks the lane stuck behind a transfer that failed with `e`, and returns `e`.
    pub(super) fn break_with(&mut self, e: CommError) -> CommError {
        self.broken = Some(e.clone());
        e
    }

    /// At drop: waits (until `deadline`, or until the peer is gone) for every tracked transfer;
    /// if one does not finish, leaks the buffers instead of freeing memory NCCL may still use.
    pub(super) fn settle(&mut self, control: &TcpTransport, deadline: Instant) {
        if self.broken.is_none() {
            while let Some(f) = self.inflight.front() {
                let started = Instant::now();
                let left = deadline.saturating_duration_since(started);
                if wait_done(&f.done, control, &[self.peer], started, left).is_err() {
                    break;
                }
                self.inflight.pop_front();
            }
        }
        if !self.inflight.is_empty() {
            std::mem::take(&mut self.inflight)
                .into_iter()
                .for_each(std::mem::forget);
        }
    }
}

/// Why a wait on the GPU ended with the work unfinished.
#[derive(Debug)]
pub(super) enum Stall {
    /// The timeout passed.
    TimedOut { waited_ms: u64 },
    /// A peer the work needs closed its control link (its process or transport ended).
    Gone { peer: usize, why: String },
    /// The driver reported an error.
    Failed(CommError),
}

impl Stall {
    /// As the error of the message operation `op`: a timeout or a disconnect naming the peer.
    pub(super) fn of_op(self, op: Op) -> CommError {
        match self {
            Stall::TimedOut { waited_ms } => CommError::Timeout {
                peer: op.peer,
                op,
                waited_ms,
            },
            Stall::Gone { peer, why } => CommError::PeerDisconnected {
                peer,
                op,
                detail: format!("{why} while the NCCL transfer was in flight"),
            },
            Stall::Failed(e) => e,
        }
    }

    /// As the error of a step that is not one message (setup, synchronize), with the peer the
    /// stalled work was exchanged with, when it has one.
    pub(super) fn of_step(self, rank: usize, step: &'static str, with: Option<usize>) -> CommError {
        let with = with.map_or(String::new(), |p| format!(" (with rank {p})"));
        let detail = match self {
            Stall::TimedOut { waited_ms } => {
                format!("NCCL work{with} not finished after {waited_ms} ms; a peer may be stuck")
            }
            Stall::Gone { peer, why } => format!("rank {peer} is gone ({why}){with}"),
            Stall::Failed(e) => return e,
        };
        CommError::Device {
            rank,
            op: step,
            detail,
        }
    }
}

/// Waits until `done` completes, at most `timeout` from `started`, and no longer than a short
/// grace once one of `peers` has closed its control link: NCCL itself would wait forever.
pub(super) fn wait_done(
    done: &CudaEvent,
    control: &TcpTransport,
    peers: &[usize],
    started: Instant,
    timeout: Duration,
) -> std::result::Result<(), Stall> {
    let rank = crate::transport::Transport::rank(control);
    let mut nap = Duration::from_micros(10);
    let mut gone: Option<(usize, String, Instant)> = None;
    loop {
        let finished = done
            .try_is_complete()
            .map_err(|e| Stall::Failed(super::device_err(rank, "wait for an NCCL transfer", e)))?;
        if finished {
            return Ok(());
        }
        let now = Instant::now();
        if gone.is_none() {
            gone = peers
                .iter()
                .find_map(|&p| control.peer_gone(p).map(|why| (p, why, now)));
        }
        if let Some((peer, why, since)) = &gone {
            if now - *since >= GONE_GRACE {
                let (peer, why) = (*peer, why.clone());
                return Err(Stall::Gone { peer, why });
            }
        }
        if now - started >= timeout {
            let waited_ms = timeout.as_millis() as u64;
            return Err(Stall::TimedOut { waited_ms });
        }
        // Transfers take microseconds to milliseconds: poll fast first, then back off so a long
        // wait costs little CPU.
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(1));
    }
}
