//! [`Transport`] for [`NcclTransport`]: host [`Message`]s staged through device buffers.
//!
//! `isend` copies the payload to a staging buffer (on the staging stream, never behind a
//! transfer), issues `ncclSend` on the lane to the peer, and only then writes the header on TCP;
//! so by the time a receiver reads a header, the payload is already on its way, and neither
//! `recv` nor `try_recv` ever waits for a future call of the sender. `recv` waits for the header
//! on TCP (timeout, dead peer named), receives the payload on the lane from the peer into a
//! staging buffer, and copies it to a fresh host buffer. A header with the wrong tag is an error,
//! as on every backend, but its payload is still received (and dropped) so the lane stays in
//! order. A host all-reduce over the whole world is one `ncclAllReduce` after the usual
//! header check over TCP; over a smaller group it is the shared ring of `collective.rs` on these
//! point-to-point calls.

use std::time::{Duration, Instant};

use cudarc::driver::CudaSlice;
use cudarc::nccl::ReduceOp;

use super::lane::wait_done;
use super::{device_err, NcclElement, NcclTransport};
use crate::collective::{self, agree_on_header, check_summable, Group};
use crate::error::{CommError, Result};
use crate::header::Header;
use crate::message::{Data, Message};
use crate::progress::{Op, Progress};
use crate::tag::Tag;
use crate::transport::{check_peer, disconnected, recv_op, Envelope, SendHandle, Transport};

impl Transport for NcclTransport {
    fn rank(&self) -> usize {
        self.control.rank()
    }

    fn world_size(&self) -> usize {
        self.control.world_size()
    }

    fn timeout(&self) -> Duration {
        self.control.timeout()
    }

    /// The control plane's record: a send is complete once its header is written, a receive is
    /// pending until its payload is on the host.
    fn progress(&self) -> Progress {
        self.control.progress()
    }

    /// This transport: its device-buffer calls (`device.rs`) are open to a caller that holds it
    /// as `dyn Transport`.
    fn as_nccl(&mut self) -> Option<&mut NcclTransport> {
        Some(self)
    }

    /// Never waits for the receiver: the payload is copied to the device and queued on this
    /// direction's own lane. The handle completes when the header has been written.
    fn isend(&mut self, peer: usize, tag: Tag, msg: Message) -> Result<SendHandle> {
        check_peer(self.rank(), self.world_size(), peer)?;
        self.bind()?;
        let rank = self.rank();
        let header = Header::of(&msg, tag).to_message();
        if msg.size_in_bytes() > 0 {
            let staging = self.staging.clone();
            let buf = staging
                .clone_htod(msg.bytes())
                .map_err(|e| device_err(rank, "stage a send", e))?;
            drop(msg); // The host copy is no longer needed: free it before the transfer.
            let lane = self.lane_out(peer)?;
            lane.stream
                .join(&staging)
                .map_err(|e| device_err(rank, "order a send", e))?;
            lane.comm
                .get()
                .send(&buf, 1)
                .map_err(|e| device_err(rank, "ncclSend", e))?;
            lane.track(rank, Some(buf))?;
        }
        self.control.isend(peer, tag, header)
    }

    /// Waits up to `timeout` for the header, then up to the transport's timeout for its payload
    /// (which the sender issued before the header, so that wait only fails on a broken link).
    fn recv_timeout(&mut self, peer: usize, tag: Tag, timeout: Duration) -> Result<Message> {
        self.bind()?;
        self.lane_in(peer)?;
        let env = self.wait_header(peer, tag, timeout)?;
        self.host_payload(recv_op(peer, tag), env)
    }

    /// `None` while no header from `peer` has arrived. Once one has, its payload is already in
    /// flight (the sender issues it before the header), and this finishes that transfer, bounded
    /// by the timeout, rather than leave a half-received message behind.
    fn try_recv(&mut self, peer: usize, tag: Tag) -> Result<Option<Message>> {
        self.bind()?;
        self.lane_in(peer)?;
        match self.control.receive_envelope(peer, tag, None)? {
            Some(env) => self.host_payload(recv_op(peer, tag), env).map(Some),
            None => Ok(None),
        }
    }

    /// Over the whole world: one `ncclAllReduce` of a staged copy (after every member's dtype and
    /// shape were checked over TCP). Over a smaller group: the ring shared by every backend.
    fn all_reduce_sum(&mut self, group: &mut Group, msg: Message) -> Result<Message> {
        let world = self.world_size();
        let whole = group.len() == world && group.ranks().last() < Some(&world);
        if !whole {
            return collective::all_reduce_sum(self, group, msg);
        }
        check_summable(&msg)?;
        self.world_usable()?;
        let header = Header::of(&msg, Tag::from_raw(0));
        let (tag, heard) = agree_on_header(&mut self.control, group, &header)?;
        if msg.numel() == 0 {
            return Ok(msg);
        }
        let op = recv_op(heard, tag);
        let progress = self.control.progress();
        progress.begin(op);
        let (shape, data) = msg.into_parts();
        let summed = match data {
            Data::F32(v) => self.reduce_on_device(v, op).map(Data::F32),
            Data::F64(v) => self.reduce_on_device(v, op).map(Data::F64),
            other => Ok(other), // Unreachable: `check_summable` passed.
        };
        match summed {
            Ok(data) => {
                progress.complete(op);
                Message::new(shape, data)
            }
            Err(e) => {
                progress.abandon();
                Err(e)
            }
        }
    }
}

impl NcclTransport {
    /// The next header from `peer`, waiting up to `timeout`, with `recv peer tag` pending in the
    /// progress record.
    pub(super) fn wait_header(
        &mut self,
        peer: usize,
        tag: Tag,
        timeout: Duration,
    ) -> Result<Envelope> {
        self.control
            .receive_envelope(peer, tag, Some(timeout))?
            .ok_or_else(|| disconnected(recv_op(peer, tag), "no message"))
    }

    /// Decodes a header. A malformed one leaves the lane's order unknown, so the lane is marked
    /// broken with the error.
    pub(super) fn read_header(&mut self, peer: usize, env: &Envelope) -> Result<Header> {
        let header = Header::from_message(peer, env.tag, &env.msg).and_then(|h| {
            match h
                .numel()
                .and_then(|n| n.checked_mul(h.dtype.size_in_bytes()))
            {
                Some(_) => Ok(h),
                None => Err(CommError::Protocol {
                    peer,
                    detail: format!("header shape {:?} overflows", h.shape),
                }),
            }
        });
        header.map_err(|e| {
            self.control.progress().abandon();
            match self.incoming.get_mut(peer).and_then(Option::as_mut) {
                Some(lane) => lane.break_with(e),
                None => e,
            }
        })
    }

    /// Receives (and drops) the payload a header announced, to keep the lane in order after a
    /// mismatch. Not waited for: the lane frees the buffer once the transfer is done.
    pub(super) fn drain(&mut self, peer: usize, header: &Header) -> Result<()> {
        let bytes = header.numel().unwrap_or(0) * header.dtype.size_in_bytes();
        if bytes > 0 {
            let buf = self.post_recv(peer, bytes)?;
            let rank = self.rank();
            self.lane_in(peer)?.track(rank, Some(buf))?;
        }
        Ok(())
    }

    /// Issues the receive of `bytes` from `peer` into a new staging buffer, on the lane from
    /// `peer`; the caller tracks it.
    fn post_recv(&mut self, peer: usize, bytes: usize) -> Result<CudaSlice<u8>> {
        self.bind()?;
        let rank = self.rank();
        let staging = self.staging.clone();
        let mut buf = staging
            .alloc_zeros::<u8>(bytes)
            .map_err(|e| device_err(rank, "allocate a staging buffer", e))?;
        let lane = self.lane_in(peer)?;
        lane.stream
            .join(&staging)
            .map_err(|e| device_err(rank, "order a receive", e))?;
        lane.comm
            .get()
            .recv(&mut buf, 0)
            .map_err(|e| device_err(rank, "ncclRecv", e))?;
        Ok(buf)
    }

    /// Receives the payload of a header just read, into a host message.
    fn host_payload(&mut self, op: Op, env: Envelope) -> Result<Message> {
        let header = self.read_header(op.peer, &env)?;
        if env.tag != op.tag {
            self.drain(op.peer, &header)?;
            self.control.progress().abandon();
            return Err(CommError::TagMismatch {
                peer: op.peer,
                expected: op.tag,
                received: env.tag,
            });
        }
        let result = self.fetch(op, header);
        match &result {
            Ok(_) => self.control.progress().complete(op),
            Err(_) => self.control.progress().abandon(),
        }
        result
    }

    /// The payload of a checked header, on the host.
    fn fetch(&mut self, op: Op, header: Header) -> Result<Message> {
        let mut msg = Message::zeros(header.dtype, header.shape)?;
        let bytes = msg.size_in_bytes();
        if bytes == 0 {
            return Ok(msg);
        }
        let rank = self.rank();
        let buf = self.post_recv(op.peer, bytes)?;
        let done = self.lane_in(op.peer)?.track(rank, None)?;
        let started = Instant::now();
        let waited = wait_done(&done, &self.control, &[op.peer], started, self.timeout());
        if let Err(stall) = waited {
            std::mem::forget(buf); // NCCL may still write into it: never free it.
            let e = stall.of_op(op);
            let lane = self.incoming[op.peer].as_mut();
            return Err(lane.map_or(e.clone(), |l| l.break_with(e)));
        }
        let staging = &self.staging;
        staging
            .wait(&done)
            .and_then(|()| staging.memcpy_dtoh(&buf, msg.bytes_mut()))
            .map_err(|e| device_err(rank, "copy a received payload to the host", e))?;
        Ok(msg)
    }

    /// Sums `host` over the world on the device; every rank gets the same bits back.
    fn reduce_on_device<E: NcclElement>(&mut self, host: Vec<E>, op: Op) -> Result<Vec<E>> {
        self.bind()?;
        let rank = self.rank();
        let mut buf = self
            .staging
            .clone_htod(&host)
            .map_err(|e| device_err(rank, "stage an all-reduce", e))?;
        drop(host);
        self.stream
            .join(&self.staging)
            .map_err(|e| device_err(rank, "order an all-reduce", e))?;
        self.world_comm
            .get()
            .all_reduce_in_place(&mut buf, &ReduceOp::Sum)
            .map_err(|e| device_err(rank, "ncclAllReduce", e))?;
        let done = self
            .stream
            .record_event(None)
            .map_err(|e| device_err(rank, "record an all-reduce", e))?;
        let others = self.others();
        let started = Instant::now();
        let waited = wait_done(&done, &self.control, &others, started, self.timeout());
        if let Err(stall) = waited {
            std::mem::forget(buf); // NCCL may still use it.
            let e = stall.of_op(op);
            self.world_broken = Some(e.clone());
            return Err(e);
        }
        self.staging
            .wait(&done)
            .and_then(|()| self.staging.clone_dtoh(&buf))
            .map_err(|e| device_err(rank, "copy an all-reduce to the host", e))
    }
}
