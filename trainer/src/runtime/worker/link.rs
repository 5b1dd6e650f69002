//! The communication ops of a stage: an activation or gradient sent to, or received from, the
//! peer the action names (any rank may talk to any rank), through the one inbox that keeps each
//! peer's messages in its send order.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use seqpipe_comm::{Tag, TagKind, Transport};
use seqpipe_schedule::{Action, Lowered};

use super::super::inbox::{message_tag, Inbox};
use super::super::tensor_msg::{recv_tensor, send_tensor, try_recv_tensor};

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
        let (transport, device) = (&mut *self.transport, self.device);
        let rank = transport.rank();
        self.inbox
            .recv(rank, stage + self.rank_offset, tag, |peer, tag| {
                recv_tensor(transport, peer, tag, dtype, device)
            })
    }

    /// Whether `tag` from stage `stage` has arrived (it stays for [`Link::recv_tagged`]).
    pub fn has_arrived(&mut self, stage: usize, tag: Tag, dtype: DType) -> Result<bool> {
        let Some(t) = self.try_recv_tagged(stage, tag, dtype)? else {
            return Ok(false);
        };
        self.inbox.keep(stage + self.rank_offset, tag, t);
        Ok(true)
    }

    /// [`Link::recv_tagged`] without waiting: `None` while the message has not arrived.
    fn try_recv_tagged(&mut self, stage: usize, tag: Tag, dtype: DType) -> Result<Option<Tensor>> {
        let (transport, device) = (&mut *self.transport, self.device);
        self.inbox
            .try_recv(stage + self.rank_offset, tag, |peer, tag| {
                try_recv_tensor(transport, peer, tag, dtype, device)
            })
    }

    /// Receives the tensor virtual stage `at` expects for `a`, on this stage's device.
    pub fn recv(&mut self, kind: TagKind, a: &Action, at: usize) -> Result<Tensor> {
        let peer = self.peer(a)?;
        let tag = message_tag(kind, a, at)?;
        let (transport, device, dtype) = (&mut *self.transport, self.device, self.dtype);
        let rank = transport.rank();
        self.inbox.recv(rank, peer, tag, |peer, tag| {
            recv_tensor(transport, peer, tag, dtype, device)
        })
    }
}
