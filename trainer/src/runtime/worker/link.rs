//! The communication ops of a stage: an activation or gradient sent to, or received from, the
//! peer the action names (any rank may talk to any rank), through the one inbox that keeps each
//! peer's messages in its send order.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use seqpipe_comm::{TagKind, Transport};
use seqpipe_schedule::{Action, Lowered};

use super::super::inbox::{message_tag, Inbox};
use super::super::tensor_msg::{from_message, to_message};

/// A stage's side of the links of one iteration.
pub(super) struct Link<'a> {
    pub schedule: &'a Lowered,
    pub transport: &'a mut dyn Transport,
    pub inbox: &'a mut Inbox,
    /// Transport rank of this replica's stage 0.
    pub rank_offset: usize,
    pub device: &'a Device,
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
        Ok(self.transport.send(peer, tag, to_message(t)?)?)
    }

    /// Receives the tensor virtual stage `at` expects for `a`, on this stage's device.
    pub fn recv(&mut self, kind: TagKind, a: &Action, at: usize) -> Result<Tensor> {
        let peer = self.peer(a)?;
        let msg = self
            .inbox
            .recv(self.transport, peer, message_tag(kind, a, at)?)?;
        from_message(msg, self.device)
    }
}
