//! The device-tensor API of [`NcclTransport`]: `CudaSlice<T>` in, `CudaSlice<T>` out, no host
//! round trip. Same headers, tags, lanes and timeouts as the host `Message` path in `host.rs`, so
//! the two can be mixed on one transport and keep their per-(peer, tag) order.
//!
//! These calls are asynchronous on the GPU, as kernels are: they return once the transfer is
//! queued. Work queued on [`NcclTransport::stream`] afterwards sees the result; call
//! [`NcclTransport::synchronize`] to wait on the host (with the timeout).

use std::time::Instant;

use cudarc::driver::CudaSlice;
use cudarc::nccl::ReduceOp;

use super::lane::wait_done;
use super::{check_len, device_err, NcclElement, NcclTransport};
use crate::collective::agree_on_header;
use crate::error::{CommError, Result};
use crate::header::Header;
use crate::message::{describe, DType};
use crate::tag::Tag;
use crate::transport::{recv_op, Transport};

impl NcclTransport {
    /// Sends a device buffer of `shape` to `peer`: the payload is handed to NCCL on the lane to
    /// `peer` (after the work already queued on [`NcclTransport::stream`]), then the header goes
    /// over TCP. Returns without waiting for the receiver.
    pub fn send<T: NcclElement>(
        &mut self,
        peer: usize,
        tag: Tag,
        shape: &[usize],
        data: &CudaSlice<T>,
    ) -> Result<()> {
        check_len::<T>(shape, data.len())?;
        self.bind()?;
        let rank = self.rank();
        let main = self.stream.clone();
        let lane = self.lane_out(peer)?;
        if !data.is_empty() {
            lane.stream
                .join(&main)
                .map_err(|e| device_err(rank, "order a device send", e))?;
            lane.comm
                .get()
                .send(data, 1)
                .map_err(|e| device_err(rank, "ncclSend", e))?;
            lane.track(rank, None)?;
        }
        let header = Header {
            tag,
            dtype: T::DTYPE,
            shape: shape.to_vec(),
        };
        Transport::send(&mut self.control, peer, tag, header.to_message())
    }

    /// Receives the next device buffer from `peer`, which must carry `tag` and dtype `T`; the
    /// buffer belongs to [`NcclTransport::stream`], which is made to wait for the transfer.
    /// Returns its shape and the buffer.
    pub fn recv<T: NcclElement>(
        &mut self,
        peer: usize,
        tag: Tag,
    ) -> Result<(Vec<usize>, CudaSlice<T>)> {
        self.bind()?;
        self.lane_in(peer)?;
        let op = recv_op(peer, tag);
        let timeout = self.timeout();
        let env = self.wait_header(peer, tag, timeout)?;
        let header = self.read_header(peer, &env)?;
        if env.tag != tag || header.dtype != T::DTYPE {
            // The payload is on its way regardless: take it off the lane to keep the order.
            self.drain(peer, &header)?;
            self.control.progress().abandon();
            return Err(match env.tag == tag {
                true => CommError::ShapeMismatch {
                    peer,
                    tag,
                    expected: format!("{}[..]", T::DTYPE),
                    received: describe(header.dtype, &header.shape),
                },
                false => CommError::TagMismatch {
                    peer,
                    expected: tag,
                    received: env.tag,
                },
            });
        }
        let buf = self.device_payload::<T>(peer, &header)?;
        self.control.progress().complete(op);
        Ok((header.shape, buf))
    }

    /// Queues the receive of a checked header's payload into a new buffer on the main stream.
    fn device_payload<T: NcclElement>(
        &mut self,
        peer: usize,
        header: &Header,
    ) -> Result<CudaSlice<T>> {
        let rank = self.rank();
        let n = header.numel().unwrap_or(0);
        let main = self.stream.clone();
        let alloc = if n == 0 {
            main.null::<T>()
        } else {
            main.alloc_zeros::<T>(n)
        };
        let mut buf = alloc.map_err(|e| device_err(rank, "allocate the receive buffer", e))?;
        if n > 0 {
            let lane = self.lane_in(peer)?;
            lane.stream
                .join(&main)
                .map_err(|e| device_err(rank, "order a device receive", e))?;
            lane.comm
                .get()
                .recv(&mut buf, 0)
                .map_err(|e| device_err(rank, "ncclRecv", e))?;
            let done = lane.track(rank, None)?;
            main.wait(&done)
                .map_err(|e| device_err(rank, "order after a device receive", e))?;
        }
        Ok(buf)
    }

    /// In-place sum over all ranks (float dtypes); every rank must pass the same dtype and shape,
    /// which is checked over TCP first.
    pub fn all_reduce_sum<T: NcclElement>(
        &mut self,
        shape: &[usize],
        data: &mut CudaSlice<T>,
    ) -> Result<()> {
        if !matches!(T::DTYPE, DType::F32 | DType::F64 | DType::BF16 | DType::F16) {
            return Err(CommError::UnsupportedDType {
                op: "nccl all_reduce_sum",
                dtype: T::DTYPE,
                supported: "f32, f64, bf16, f16",
            });
        }
        check_len::<T>(shape, data.len())?;
        self.world_usable()?;
        self.bind()?;
        let header = Header {
            tag: Tag::from_raw(0),
            dtype: T::DTYPE,
            shape: shape.to_vec(),
        };
        agree_on_header(&mut self.control, &mut self.world, &header)?;
        if data.is_empty() {
            return Ok(());
        }
        self.world_comm
            .get()
            .all_reduce_in_place(data, &ReduceOp::Sum)
            .map(drop)
            .map_err(|e| device_err(self.rank(), "ncclAllReduce", e))
    }

    /// Waits (up to the timeout) for everything queued on [`NcclTransport::stream`] and on the
    /// lanes: a stalled transfer fails naming its peer instead of hanging.
    pub fn synchronize(&mut self) -> Result<()> {
        let rank = self.rank();
        let timeout = self.timeout();
        let started = Instant::now();
        let done = self
            .stream
            .record_event(None)
            .map_err(|e| device_err(rank, "synchronize", e))?;
        let others = self.others();
        wait_done(&done, &self.control, &others, started, timeout)
            .map_err(|s| s.of_step(rank, "synchronize", None))?;
        let control = &self.control;
        for lane in self.outgoing.iter_mut().chain(&mut self.incoming).flatten() {
            let peer = lane.peer;
            let done = lane.usable()?.track(rank, None)?;
            wait_done(&done, control, &[peer], started, timeout)
                .map_err(|s| lane.break_with(s.of_step(rank, "synchronize", Some(peer))))?;
        }
        Ok(())
    }

    /// Host-side barrier of the whole world over TCP (with the usual timeout).
    pub fn barrier(&mut self) -> Result<()> {
        self.control.barrier(&mut self.world)
    }

    /// The world stream, unless a collective on it never completed.
    pub(super) fn world_usable(&self) -> Result<()> {
        match &self.world_broken {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}
