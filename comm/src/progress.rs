//! Per-rank progress records and the watchdog that reads them.
//!
//! Every transport updates its rank's [`Progress`] on each operation: the operation now pending
//! (the one the rank is waiting to complete, i.e. what it expects next) and the last one it
//! completed. When a pipeline hangs, [`Watchdog::dump`] shows for every rank where it stands, which
//! is usually enough to see the mismatched schedule or the dead stage.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use crate::tag::Tag;

/// Which way a point-to-point operation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Sending to the peer.
    Send,
    /// Receiving from the peer.
    Recv,
}

/// One point-to-point operation: direction, peer and tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    /// Direction.
    pub kind: OpKind,
    /// The other rank.
    pub peer: usize,
    /// The message tag.
    pub tag: Tag,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            OpKind::Send => write!(f, "send {} to rank {}", self.tag, self.peer),
            OpKind::Recv => write!(f, "recv {} from rank {}", self.tag, self.peer),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pending: Option<(Op, Instant)>,
    last_completed: Option<(Op, Instant)>,
    completed: u64,
}

/// A rank's live progress record, shared with watchdogs (cheap to clone).
#[derive(Debug, Clone)]
pub struct Progress {
    rank: usize,
    state: Arc<Mutex<State>>,
}

/// A point-in-time copy of one rank's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The rank.
    pub rank: usize,
    /// The operation being waited on and for how long.
    pub pending: Option<(Op, Duration)>,
    /// The last completed operation and how long ago.
    pub last_completed: Option<(Op, Duration)>,
    /// Operations completed so far.
    pub completed: u64,
}

impl Progress {
    /// A fresh record for `rank`.
    pub fn new(rank: usize) -> Progress {
        Progress {
            rank,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the record inconsistent (plain fields), so a
        // poisoned lock is still readable: the watchdog must work best when things went wrong.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `op` as pending.
    pub(crate) fn begin(&self, op: Op) {
        self.lock().pending = Some((op, Instant::now()));
    }

    /// Marks `op` as completed (and no longer pending).
    pub(crate) fn complete(&self, op: Op) {
        let mut s = self.lock();
        s.pending = None;
        s.last_completed = Some((op, Instant::now()));
        s.completed += 1;
    }

    /// Clears the pending operation after it failed (the failure is reported by the error).
    pub(crate) fn abandon(&self) {
        self.lock().pending = None;
    }

    /// A copy of the record now.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        let now = Instant::now();
        Snapshot {
            rank: self.rank,
            pending: s.pending.map(|(op, t)| (op, now - t)),
            last_completed: s.last_completed.map(|(op, t)| (op, now - t)),
            completed: s.completed,
        }
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {}: ", self.rank)?;
        match &self.last_completed {
            Some((op, ago)) => write!(
                f,
                "last completed {op} ({:.3} s ago, {} ops done)",
                ago.as_secs_f64(),
                self.completed
            )?,
            None => write!(f, "nothing completed yet")?,
        }
        match &self.pending {
            Some((op, waited)) => {
                write!(f, "; waiting on {op} for {:.3} s", waited.as_secs_f64())
            }
            None => write!(f, "; idle"),
        }
    }
}

/// Reads the progress records of a set of ranks (all of this process's ranks, typically).
#[derive(Debug, Clone)]
pub struct Watchdog {
    ranks: Vec<Progress>,
}

impl Watchdog {
    /// Watches these ranks.
    pub fn new(ranks: Vec<Progress>) -> Watchdog {
        Watchdog { ranks }
    }

    /// Snapshots of every watched rank.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.ranks.iter().map(Progress::snapshot).collect()
    }

    /// One line per rank: last completed and pending (next expected) operation.
    pub fn dump(&self) -> String {
        self.snapshots().iter().map(|s| format!("{s}\n")).collect()
    }

    /// True when some rank has waited on one operation for at least `after`.
    pub fn is_stalled(&self, after: Duration) -> bool {
        self.snapshots()
            .iter()
            .any(|s| s.pending.is_some_and(|(_, waited)| waited >= after))
    }

    /// Starts a thread that checks every `after / 4` and calls `on_stall` with a [`Watchdog::dump`]
    /// once per stall (a rank waiting at least `after` on one operation). Stops when the guard drops.
    pub fn spawn(
        self,
        after: Duration,
        mut on_stall: impl FnMut(String) + Send + 'static,
    ) -> WatchdogGuard {
        let (stop, stopped) = bounded::<()>(0);
        let period = (after / 4).max(Duration::from_millis(1));
        let thread = std::thread::spawn(move || {
            let mut reported = false;
            loop {
                match stopped.recv_timeout(period) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let stalled = self.is_stalled(after);
                if stalled && !reported {
                    on_stall(self.dump());
                }
                reported = stalled;
            }
        });
        WatchdogGuard {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// Keeps a watchdog thread running; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct WatchdogGuard {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The thread only fails if `on_stall` panicked; that panic was already printed.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::{Tag, TagKind};

    fn op(kind: OpKind, peer: usize) -> Op {
        Op {
            kind,
            peer,
            tag: Tag::new(TagKind::Act, 1, 0, 0).unwrap(),
        }
    }

    #[test]
    fn dump_shows_last_completed_and_pending() {
        let p = Progress::new(3);
        let w = Watchdog::new(vec![p.clone()]);
        assert_eq!(w.dump(), "rank 3: nothing completed yet; idle\n");
        p.begin(op(OpKind::Send, 2));
        p.complete(op(OpKind::Send, 2));
        p.begin(op(OpKind::Recv, 4));
        let dump = w.dump();
        assert!(
            dump.contains("last completed send act(mb=1, slice=0, chunk=0) to rank 2"),
            "{dump}"
        );
        assert!(
            dump.contains("waiting on recv act(mb=1, slice=0, chunk=0) from rank 4"),
            "{dump}"
        );
        assert!(w.is_stalled(Duration::ZERO));
        p.abandon();
        assert!(!w.is_stalled(Duration::ZERO));
    }

    #[test]
    fn spawned_watchdog_reports_a_stall_once() {
        let p = Progress::new(0);
        p.begin(op(OpKind::Recv, 1));
        let (tx, rx) = crossbeam_channel::unbounded();
        let guard = Watchdog::new(vec![p.clone()]).spawn(Duration::from_millis(20), move |d| {
            let _ = tx.send(d);
        });
        let report = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(report.contains("waiting on recv"), "{report}");
        std::thread::sleep(Duration::from_millis(60));
        drop(guard);
        assert_eq!(rx.try_iter().count(), 0, "a stall is reported once");
    }
}
