//! In-process backend: every rank is a thread, every ordered pair of ranks has its own channel.
//!
//! Messages are moved through unbounded crossbeam channels, so a send is a pointer move: no copy,
//! never blocks. Because the channel from rank `j` to rank `i` has exactly one sender (held by
//! `j`), rank `i` sees a disconnect as soon as `j`'s transport is dropped (its thread returned or
//! panicked), and its pending receive fails naming `j` instead of waiting out the timeout.

use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::error::{CommError, Result};
use crate::message::Message;
use crate::progress::Progress;
use crate::tag::Tag;
use crate::transport::{
    check_peer, disconnected, receive, receive_any, recv_op, send_op, CommOptions, Envelope,
    Incoming, SendHandle, Transport,
};

/// One rank of an in-process mesh; move it into the rank's thread.
#[derive(Debug)]
pub struct LocalTransport {
    rank: usize,
    /// `to[j]`: the sending end of rank `j`'s inbox for messages from this rank.
    to: Vec<Option<Sender<Incoming>>>,
    /// `from[j]`: this rank's inbox for messages from rank `j`.
    from: Vec<Option<Receiver<Incoming>>>,
    options: CommOptions,
    progress: Progress,
}

impl LocalTransport {
    /// `world_size` connected ranks, index = rank.
    pub fn mesh(world_size: usize, options: CommOptions) -> Result<Vec<LocalTransport>> {
        if world_size == 0 {
            return Err(CommError::InvalidArgument(
                "a local mesh needs a world size of at least 1, got 0".into(),
            ));
        }
        let mut ranks: Vec<LocalTransport> = (0..world_size)
            .map(|rank| LocalTransport {
                rank,
                to: (0..world_size).map(|_| None).collect(),
                from: (0..world_size).map(|_| None).collect(),
                options,
                progress: Progress::new(rank),
            })
            .collect();
        for src in 0..world_size {
            for dst in (0..world_size).filter(|&d| d != src) {
                let (tx, rx) = unbounded();
                ranks[src].to[dst] = Some(tx);
                ranks[dst].from[src] = Some(rx);
            }
        }
        Ok(ranks)
    }
}

impl Transport for LocalTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.to.len()
    }

    fn timeout(&self) -> Duration {
        self.options.timeout
    }

    fn progress(&self) -> Progress {
        self.progress.clone()
    }

    fn isend(&mut self, peer: usize, tag: Tag, msg: Message) -> Result<SendHandle> {
        check_peer(self.rank, self.world_size(), peer)?;
        let op = send_op(peer, tag);
        let tx = self.to[peer]
            .as_ref()
            .ok_or(CommError::SelfPeer { rank: peer })?;
        self.progress.begin(op);
        if tx.send(Ok(Envelope { tag, msg })).is_err() {
            self.progress.abandon();
            return Err(disconnected(op, "its transport was dropped (thread ended)"));
        }
        self.progress.complete(op);
        Ok(SendHandle::done(op))
    }

    fn recv_timeout(&mut self, peer: usize, tag: Tag, timeout: Duration) -> Result<Message> {
        let inbox = self.inbox(peer)?;
        let msg = receive(inbox, &self.progress, recv_op(peer, tag), Some(timeout))?;
        // `receive` with a timeout returns a message or an error, never "nothing yet".
        msg.ok_or_else(|| disconnected(recv_op(peer, tag), "no message"))
    }

    fn try_recv(&mut self, peer: usize, tag: Tag) -> Result<Option<Message>> {
        let inbox = self.inbox(peer)?;
        receive(inbox, &self.progress, recv_op(peer, tag), None)
    }

    fn try_recv_any(&mut self, peer: usize) -> Result<Option<(Tag, Message)>> {
        let inbox = self.inbox(peer)?;
        receive_any(inbox, &self.progress, peer)
    }
}

impl LocalTransport {
    fn inbox(&self, peer: usize) -> Result<&Receiver<Incoming>> {
        check_peer(self.rank, self.world_size(), peer)?;
        self.from[peer]
            .as_ref()
            .ok_or(CommError::SelfPeer { rank: peer })
    }
}
