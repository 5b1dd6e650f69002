//! One TCP connection to one peer, with a reader and a writer thread.
//!
//! The writer thread owns the outgoing queue, so `isend` returns at once even for 64 MB messages
//! and compute overlaps the socket write. The reader thread drains the socket into the peer's inbox
//! channel as messages arrive, so a receive is a channel pop and the sender never stalls on a full
//! socket buffer. When the peer's process dies its kernel closes the socket: the reader sees end of
//! stream, drops its end of the inbox, and the waiting receive fails at once naming the peer.

use std::io::BufReader;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::frame::{read_frame, write_frame};
use crate::error::{CommError, Result};
use crate::message::Message;
use crate::progress::Op;
use crate::tag::Tag;
use crate::transport::{disconnected, Envelope, Incoming, SendHandle};

type Done = Sender<std::result::Result<(), String>>;

struct Outgoing {
    tag: Tag,
    msg: Message,
    done: Done,
}

/// A live connection to one peer.
pub(crate) struct Link {
    peer: usize,
    outgoing: Option<Sender<Outgoing>>,
    writer: Option<JoinHandle<()>>,
    inbox: Receiver<Incoming>,
    stream: TcpStream,
    write_error: Arc<Mutex<Option<String>>>,
    /// Why the reader stopped (the peer closed the connection or it broke); `None` while open.
    /// Read without touching the inbox, so a rank waiting on something other than this link
    /// (an NCCL payload) can still see that the peer is gone.
    closed: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Starts the reader and writer threads on a connected stream.
    pub(crate) fn start(peer: usize, stream: TcpStream, write_timeout: Duration) -> Result<Link> {
        let io_err = |e: std::io::Error| CommError::Protocol {
            peer,
            detail: format!("cannot set up the link: {e}"),
        };
        // Small headers must not wait for Nagle's algorithm; payloads are large writes anyway.
        stream.set_nodelay(true).map_err(io_err)?;
        stream.set_read_timeout(None).map_err(io_err)?;
        // A peer that stops reading (a stuck process) must not block the writer forever.
        stream
            .set_write_timeout(Some(write_timeout))
            .map_err(io_err)?;
        let (in_tx, inbox) = unbounded();
        let reader_stream = stream.try_clone().map_err(io_err)?;
        let closed = Arc::new(Mutex::new(None));
        let closed_slot = Arc::clone(&closed);
        std::thread::Builder::new()
            .name(format!("seqpipe-comm-read-{peer}"))
            .spawn(move || read_loop(reader_stream, in_tx, closed_slot))
            .map_err(io_err)?;
        let (out_tx, out_rx) = unbounded();
        let write_error = Arc::new(Mutex::new(None));
        let writer_stream = stream.try_clone().map_err(io_err)?;
        let err_slot = Arc::clone(&write_error);
        let writer = std::thread::Builder::new()
            .name(format!("seqpipe-comm-write-{peer}"))
            .spawn(move || write_loop(writer_stream, out_rx, err_slot))
            .map_err(io_err)?;
        Ok(Link {
            peer,
            outgoing: Some(out_tx),
            writer: Some(writer),
            inbox,
            stream,
            write_error,
            closed,
        })
    }

    /// Queues a message for the writer thread.
    pub(crate) fn send(&self, op: Op, tag: Tag, msg: Message) -> Result<SendHandle> {
        let (done, completion) = bounded(1);
        let queued = self
            .outgoing
            .as_ref()
            .map(|tx| tx.send(Outgoing { tag, msg, done }).is_ok())
            .unwrap_or(false);
        if !queued {
            let detail = self
                .write_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| "the link is closed".into());
            return Err(disconnected(op, &detail));
        }
        Ok(SendHandle::pending(op, completion))
    }

    /// Messages (or the link's failure) from the peer, in order.
    pub(crate) fn inbox(&self) -> &Receiver<Incoming> {
        &self.inbox
    }

    /// Why the peer's side ended, once the reader has seen it end.
    pub(crate) fn closed(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Flushes queued sends, then half-closes so the peer reads everything and then end of stream.
    /// Later sends fail as on a closed link. Idempotent.
    pub(crate) fn close_writes(&mut self) {
        drop(self.outgoing.take());
        if let Some(w) = self.writer.take() {
            // The writer never panics on IO errors; a join error would be a bug already reported.
            let _ = w.join();
        }
        // The reader thread keeps draining until the peer closes too, so the kernel never has to
        // reset the connection over unread data; it ends on the peer's end of stream.
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close_writes();
    }
}

fn read_loop(stream: TcpStream, inbox: Sender<Incoming>, closed: Arc<Mutex<Option<String>>>) {
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let why = loop {
        let item = match read_frame(&mut reader) {
            Ok(Some((tag, msg))) => Ok(Envelope { tag, msg }),
            // Clean end of stream: dropping `inbox` tells the receiver the peer is gone.
            Ok(None) => break "the peer closed the connection".to_string(),
            Err(detail) => Err(detail),
        };
        let failed = item.as_ref().err().cloned();
        if inbox.send(item).is_err() {
            // This side dropped the link: nothing is waiting on the peer any more.
            return;
        }
        if let Some(detail) = failed {
            break detail;
        }
    };
    *closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
}

fn write_loop(mut stream: TcpStream, queue: Receiver<Outgoing>, error: Arc<Mutex<Option<String>>>) {
    for out in queue {
        match write_frame(&mut stream, out.tag, &out.msg) {
            Ok(()) => {
                let _ = out.done.send(Ok(()));
            }
            Err(e) => {
                let detail = format!("write of {} failed: {e}", out.tag);
                *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(detail.clone());
                let _ = out.done.send(Err(detail));
                // Later sends fail at `Link::send` with this error once the queue is dropped.
                return;
            }
        }
    }
}
