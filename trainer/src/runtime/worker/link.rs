//! The communication ops of a stage: an activation or gradient sent to, or received from, the
//! peer the action names (any rank may talk to any rank), through the one inbox that keeps each
//! peer's messages in its send order. In a run with attention exchanges every wait also answers
//! the partners' requests (`serve.rs`).

use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use candle_core::{DType, Device, Tensor};
use seqpipe_comm::{CommError, Op, OpKind, Tag, TagKind, Transport};
use seqpipe_schedule::{Action, Lowered};

use super::super::inbox::{message_tag, Inbox};
use super::super::tensor_msg::{from_message, recv_tensor, send_tensor};
use super::serve::Service;

/// A stage's side of the links of one iteration.
pub(super) struct Link<'a> {
    pub schedule: &'a Lowered,
    pub transport: &'a mut dyn Transport,
    pub inbox: &'a mut Inbox,
    /// Transport rank of this replica's stage 0.
    pub rank_offset: usize,
    pub device: &'a Device,
    /// The dtype of activations and gradients between stages (the stage's parameters').
    pub dtype: DType,
    /// In a run with attention exchanges, the answers this stage owes its partners: messages
    /// are then filed as they arrive (answers come in no fixed order) and answered while
    /// waiting.
    pub service: Option<Service>,
}

impl Link<'_> {
    /// The transport rank of the action's peer stage.
    fn peer(&self, a: &Action) -> Result<usize> {
        self.schedule
            .peer(a)
            .map(|s| s.index() + self.rank_offset)
            .ok_or_else(|| Error::Runtime(format!("{} has no peer stage", self.schedule.text(a))))
    }

    /// Sends `t` for virtual stage `to` (a send never waits for its receiver).
    pub fn send(&mut self, kind: TagKind, a: &Action, to: usize, t: &Tensor) -> Result<()> {
        let peer = self.peer(a)?;
        let tag = message_tag(kind, a, to)?;
        send_tensor(self.transport, peer, tag, t)
    }

    /// Sends `t` to stage `stage` of this replica as `kind` of `a`'s unit (vocabulary ops,
    /// whose peers are every stage).
    pub fn send_to(&mut self, stage: usize, kind: TagKind, a: &Action, t: &Tensor) -> Result<()> {
        self.send_tagged(stage, message_tag(kind, a, 0)?, t)
    }

    /// Sends `t` to stage `stage` of this replica as `tag`.
    pub fn send_tagged(&mut self, stage: usize, tag: Tag, t: &Tensor) -> Result<()> {
        send_tensor(self.transport, stage + self.rank_offset, tag, t)
    }

    /// Receives `kind` of `a`'s unit from stage `stage` of this replica, as `dtype` on this
    /// stage's device.
    pub fn recv_from(
        &mut self,
        stage: usize,
        kind: TagKind,
        a: &Action,
        dtype: DType,
    ) -> Result<Tensor> {
        self.recv_tagged(stage, message_tag(kind, a, 0)?, dtype)
    }

    /// Receives `tag` from stage `stage` of this replica, as `dtype` on this stage's device.
    pub fn recv_tagged(&mut self, stage: usize, tag: Tag, dtype: DType) -> Result<Tensor> {
        self.receive(stage, tag, dtype)
    }

    /// Receives `tag` in the order the schedule fixes for `stage`'s messages.
    fn recv_in_order(&mut self, stage: usize, tag: Tag, dtype: DType) -> Result<Tensor> {
        let (transport, device) = (&mut *self.transport, self.device);
        let rank = transport.rank();
        self.inbox
            .recv(rank, stage + self.rank_offset, tag, |peer, tag| {
                recv_tensor(transport, peer, tag, dtype, device)
            })
    }

    /// Receives the tensor virtual stage `at` expects for `a`, on this stage's device.
    pub fn recv(&mut self, kind: TagKind, a: &Action, at: usize) -> Result<Tensor> {
        let peer = self.peer(a)? - self.rank_offset;
        let tag = message_tag(kind, a, at)?;
        self.receive(peer, tag, self.dtype)
    }

    /// Receives `tag` from stage `stage`: in the order the schedule fixes, or, in a run with
    /// attention exchanges, filing whatever arrives and answering partners while it waits.
    fn receive(&mut self, stage: usize, tag: Tag, dtype: DType) -> Result<Tensor> {
        if self.service.is_none() {
            return self.recv_in_order(stage, tag, dtype);
        }
        let peer = stage + self.rank_offset;
        let mut quiet = Instant::now();
        let mut idle = 0u32;
        loop {
            if let Some(t) = self.inbox.take(peer, tag) {
                return Ok(t);
            }
            if self.pump(Some((stage, tag)))? | self.answer_arrived()? {
                (quiet, idle) = (Instant::now(), 0);
                continue;
            }
            self.idle(peer, tag, quiet, &mut idle)?;
        }
    }

    /// Answers every exchange request that has arrived; whether anything moved.
    pub fn serve(&mut self) -> Result<bool> {
        Ok(self.pump(None)? | self.answer_arrived()?)
    }

    /// Answers the exchange requests still owed, waiting for them (the end of an iteration).
    pub fn finish_service(&mut self) -> Result<()> {
        let mut quiet = Instant::now();
        let mut idle = 0u32;
        while self.service.as_ref().is_some_and(Service::owes) {
            if self.serve()? {
                (quiet, idle) = (Instant::now(), 0);
                continue;
            }
            let peer = self.service.as_ref().and_then(Service::waiting_on);
            let peer = peer.map_or(0, |s| s + self.rank_offset);
            self.idle(peer, Tag::from_raw(0), quiet, &mut idle)?;
        }
        Ok(())
    }

    /// One wait with nothing to do: a yield, then short sleeps; after the transport's timeout
    /// with nothing arriving, an error naming `peer` and `tag`.
    fn idle(&mut self, peer: usize, tag: Tag, quiet: Instant, idle: &mut u32) -> Result<()> {
        let timeout = self.transport.timeout();
        if quiet.elapsed() > timeout {
            return Err(Error::from(CommError::Timeout {
                peer,
                op: Op {
                    kind: OpKind::Recv,
                    peer,
                    tag,
                },
                waited_ms: timeout.as_millis() as u64,
            }));
        }
        *idle += 1;
        match *idle < 64 {
            true => std::thread::yield_now(),
            false => std::thread::sleep(Duration::from_micros(50)),
        }
        Ok(())
    }

    /// Files every message that has arrived from the other stages of this replica while they
    /// still owe this iteration one (`waited`, the message a receive waits for, among them);
    /// whether any had. What a stage sends after its last message of the iteration belongs to
    /// whatever follows the iteration and is left where it is.
    fn pump(&mut self, waited: Option<(usize, Tag)>) -> Result<bool> {
        let me = self.transport.rank();
        let mut any = false;
        for stage in 0..self.schedule.config.stages as usize {
            let peer = stage + self.rank_offset;
            if peer == me {
                continue;
            }
            while self.owes(stage, waited) {
                let Some((tag, msg)) = self.transport.try_recv_any(peer)? else {
                    break;
                };
                let t = from_message(msg, self.device)
                    .with_context(|| format!("stage {stage}'s message {tag}"))?;
                self.inbox.file(peer, tag, t)?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Whether stage `stage` has a message of this iteration still to arrive: one in the
    /// schedule's order, an exchange request, or the message `waited` for.
    fn owes(&self, stage: usize, waited: Option<(usize, Tag)>) -> bool {
        let peer = stage + self.rank_offset;
        let awaited = waited.is_some_and(|(s, tag)| s == stage && !self.inbox.has(peer, tag));
        awaited
            || self.inbox.expects(peer)
            || self.service.as_ref().is_some_and(|s| s.asks_from(stage))
    }

    fn answer_arrived(&mut self) -> Result<bool> {
        let Some(mut service) = self.service.take() else {
            return Ok(false);
        };
        let answered = service.answer_arrived(self);
        self.service = Some(service);
        answered
    }

    /// The filed messages `tags` from stage `stage`, taken together once all have arrived.
    pub fn take_filed(&mut self, stage: usize, tags: &[Tag]) -> Option<Vec<Tensor>> {
        let peer = stage + self.rank_offset;
        if !tags.iter().all(|&t| self.inbox.has(peer, t)) {
            return None;
        }
        tags.iter().map(|&t| self.inbox.take(peer, t)).collect()
    }
}
