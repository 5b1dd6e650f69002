//! NCCL backend (feature `nccl`): a [`Transport`] whose payloads move over NCCL, with a
//! [`TcpTransport`] as control plane.
//!
//! Rendezvous, headers (tag, dtype, shape), timeouts and dead-peer detection stay on TCP: rank 0
//! creates the NCCL unique id and broadcasts it over TCP, and every payload is announced by a
//! header on TCP, so the receiver checks the tag and sizes its buffer, and a peer that died fails
//! the receive with its name instead of hanging inside NCCL. Waits on the GPU poll a CUDA event
//! with the same timeout and watch the peer's TCP link, so no call blocks forever in NCCL.
//!
//! Two APIs, one transport:
//! - the [`Transport`] trait moves host [`crate::Message`]s: `isend` copies the payload to a device
//!   staging buffer and hands it to NCCL, `recv` copies it back to the host. This is what the
//!   conformance suite and CPU-side code (metrics, checkpoints, anything generic over `Transport`)
//!   use, and it behaves like the other backends: buffered sends, per-(peer, tag) order, timeouts,
//!   dead peers named; a host all-reduce over the whole world is one `ncclAllReduce`;
//! - the typed methods [`NcclTransport::send`], [`NcclTransport::recv`] and
//!   [`NcclTransport::all_reduce_sum`] move `CudaSlice<T>` device tensors with no host round trip:
//!   use them for activations, gradients and parameter reductions that live on the GPU.
//!
//! On a concrete `NcclTransport` the typed methods shadow the trait's methods of the same name;
//! reach the host ones as `Transport::send(&mut t, ..)`, or hold the transport as a generic
//! `T: Transport` or `Box<dyn Transport>`, as the trainer does.
//!
//! Point-to-point payloads travel on one two-rank communicator per ordered pair of ranks
//! (`lane.rs` says why: NCCL's sends wait for the matching receive on the GPU). That costs
//! `2·(world − 1)` extra communicators per rank, created and connected when the transport is built,
//! so no later call blocks on NCCL's connection setup; fine for one node, to be revisited (lanes
//! to pipeline neighbours only) for hundreds of ranks. NCCL queues a bounded amount of unmatched
//! work per communicator: thousands of sends that nobody receives will eventually make `isend`
//! wait. A world collective that picks an algorithm not yet connected connects it on first use,
//! blocking on the host until every rank arrives; `NCCL_RUNTIME_CONNECT=0` connects all of them
//! at setup instead.
//!
//! cudarc loads `libcuda` and `libnccl` at run time (dynamic loading, so this builds with no CUDA
//! present) and panics on a driver call when they are missing; [`probe`] checks first, so a CPU
//! machine gets [`CommError::LibraryMissing`]. cudarc looks for `libnccl.so` or `libnccl.so.<CUDA
//! major>`, not NCCL's usual `libnccl.so.2`: a `libnccl.so` symlink on `LD_LIBRARY_PATH` fixes that.

mod device;
mod host;
mod lane;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use crate::collective::Group;
use crate::error::{CommError, Result};
use crate::message::{numel, DType};
use crate::nccl_id::{UniqueIdBytes, UNIQUE_ID_BYTES};
use crate::tcp::TcpTransport;
use crate::transport::Transport;
use lane::{wait_done, Lane, OwnedComm};

/// Element types NCCL moves, with their message dtype.
pub trait NcclElement: NcclType + DeviceRepr + ValidAsZeroBits + Copy {
    /// The matching [`DType`].
    const DTYPE: DType;
}

macro_rules! nccl_element {
    ($($t:ty => $dt:expr),*) => {$(impl NcclElement for $t { const DTYPE: DType = $dt; })*};
}
nccl_element!(f32 => DType::F32, f64 => DType::F64, half::bf16 => DType::BF16,
    half::f16 => DType::F16, u32 => DType::U32, i64 => DType::I64, u8 => DType::U8);

/// Checks that `libcuda` and `libnccl` can be loaded, before any call that would panic without
/// them.
pub fn probe() -> Result<()> {
    if !driver_present() {
        return Err(CommError::LibraryMissing {
            library: "libcuda",
            hint: "no NVIDIA driver library on this machine (searched the loader path for \
                   libcuda.so, libcuda.so.1); the NCCL backend needs a GPU machine"
                .into(),
        });
    }
    if !nccl_present() {
        return Err(CommError::LibraryMissing {
            library: "libnccl",
            hint: "install NCCL (e.g. the nvidia-nccl-cu13 wheel) and put a directory holding \
                   libnccl.so (a symlink to libnccl.so.2 will do) on LD_LIBRARY_PATH"
                .into(),
        });
    }
    Ok(())
}

#[cfg(not(feature = "cuda-linked"))]
#[allow(unsafe_code)]
fn driver_present() -> bool {
    // SAFETY: only dlopens the library by cudarc's candidate names; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

#[cfg(not(feature = "cuda-linked"))]
#[allow(unsafe_code)]
fn nccl_present() -> bool {
    // SAFETY: as above, a dlopen attempt only.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// Linked build: the process could not have started without the libraries.
#[cfg(feature = "cuda-linked")]
fn driver_present() -> bool {
    true
}

#[cfg(feature = "cuda-linked")]
fn nccl_present() -> bool {
    true
}

fn id_to_bytes(id: &Id) -> UniqueIdBytes {
    let mut b = [0u8; UNIQUE_ID_BYTES];
    b.iter_mut()
        .zip(id.internal())
        .for_each(|(o, &c)| *o = c as u8);
    UniqueIdBytes(b)
}

fn id_from_bytes(b: &UniqueIdBytes) -> Id {
    let mut c = [0 as std::ffi::c_char; UNIQUE_ID_BYTES];
    c.iter_mut()
        .zip(b.0)
        .for_each(|(o, v)| *o = v as std::ffi::c_char);
    Id::uninit(c)
}

/// One rank's NCCL communicators (the world, and a lane per direction to every peer), with its
/// TCP control plane.
#[derive(Debug)]
pub struct NcclTransport {
    /// Declared first so it is dropped (aborted) before anything it may still be using.
    world_comm: OwnedComm,
    /// `outgoing[p]`: the lane this rank sends to `p` on; `None` at this rank's own index.
    outgoing: Vec<Option<Lane>>,
    /// `incoming[p]`: the lane this rank receives from `p` on.
    incoming: Vec<Option<Lane>>,
    /// World collectives and the caller's device tensors.
    stream: Arc<CudaStream>,
    /// Host copies, kept off the NCCL streams: a copy from pageable memory waits for its whole
    /// stream, and must never wait for a transfer that waits for a peer.
    staging: Arc<CudaStream>,
    /// Sequence of the typed all-reduce and the inherent barrier.
    world: Group,
    /// The failure that stuck the world stream, repeated to every later collective.
    world_broken: Option<CommError>,
    control: TcpTransport,
}

impl NcclTransport {
    /// Opens GPU `control.local_rank()`, shares rank 0's NCCL id over `control`, joins the world
    /// communicator and opens a lane to and from every peer. Every rank must call it; the control
    /// plane's timeout bounds each step (use a long one, then [`NcclTransport::set_timeout`]).
    pub fn new(mut control: TcpTransport) -> Result<NcclTransport> {
        let rank = control.rank();
        probe()?;
        let ctx = CudaContext::new(control.local_rank())
            .map_err(|e| device_err(rank, "open the GPU", e))?;
        let new_stream = || {
            ctx.new_stream()
                .map_err(|e| device_err(rank, "create a stream", e))
        };
        let (stream, staging) = (new_stream()?, new_stream()?);
        let id = match rank {
            0 => Some(new_id(rank)?),
            _ => None,
        };
        let id = UniqueIdBytes::share(&mut control, id)?;
        let world_size = control.world_size();
        let comm = Comm::from_rank(stream.clone(), rank, world_size, id_from_bytes(&id))
            .map_err(|e| device_err(rank, "join the NCCL communicator", e))?;
        let (outgoing, incoming) = open_lanes(&mut control, &ctx)?;
        let mut t = NcclTransport {
            world_comm: OwnedComm::new(comm),
            outgoing,
            incoming,
            stream,
            staging,
            world: Group::world(world_size)?,
            world_broken: None,
            control,
        };
        t.warm_up()?;
        Ok(t)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.control.rank()
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.control.world_size()
    }

    /// Changes the timeout of later blocking calls (after a long one for setup).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.control.set_timeout(timeout);
    }

    /// The stream world collectives run on and typed receives deliver on: allocate device
    /// tensors for this transport here, and order compute after them on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The TCP control plane. It carries this transport's headers: exchanging point-to-point
    /// messages on it directly while NCCL messages are in flight breaks their order.
    pub fn control(&mut self) -> &mut TcpTransport {
        &mut self.control
    }

    /// Makes this rank's CUDA context current on the calling thread (the transport may have moved
    /// to another thread since the last call; NCCL calls need the context).
    fn bind(&self) -> Result<()> {
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| device_err(self.rank(), "bind the CUDA context", e))
    }

    /// The lane to `peer`, if `peer` is valid and the lane is not stuck.
    fn lane_out(&mut self, peer: usize) -> Result<&mut Lane> {
        crate::transport::check_peer(self.rank(), self.world_size(), peer)?;
        match self.outgoing.get_mut(peer).and_then(Option::as_mut) {
            Some(lane) => lane.usable(),
            None => Err(CommError::SelfPeer { rank: peer }),
        }
    }

    /// The lane from `peer`, if `peer` is valid and the lane is not stuck.
    fn lane_in(&mut self, peer: usize) -> Result<&mut Lane> {
        crate::transport::check_peer(self.rank(), self.world_size(), peer)?;
        match self.incoming.get_mut(peer).and_then(Option::as_mut) {
            Some(lane) => lane.usable(),
            None => Err(CommError::SelfPeer { rank: peer }),
        }
    }

    /// Every other rank (the ones a world collective waits on).
    fn others(&self) -> Vec<usize> {
        (0..self.world_size())
            .filter(|&r| r != self.rank())
            .collect()
    }

    /// One byte each way on every lane, and a one-element world all-reduce, so NCCL sets up its
    /// connections now, while every rank is here, instead of inside a later call that would
    /// block on the host until the peer joined.
    fn warm_up(&mut self) -> Result<()> {
        let rank = self.rank();
        let mut one = self
            .staging
            .clone_htod(&[1.0f32])
            .map_err(|e| device_err(rank, "stage the warm-up", e))?;
        self.stream
            .join(&self.staging)
            .map_err(|e| device_err(rank, "order the warm-up", e))?;
        self.bind()?;
        self.world_comm
            .get()
            .all_reduce_in_place(&mut one, &ReduceOp::Sum)
            .map_err(|e| device_err(rank, "ncclAllReduce (warm-up)", e))?;
        let done = self
            .stream
            .record_event(None)
            .map_err(|e| device_err(rank, "record the warm-up", e))?;
        let others = self.others();
        let started = Instant::now();
        let step = "warm up NCCL";
        wait_done(&done, &self.control, &others, started, self.timeout())
            .map_err(|s| s.of_step(rank, step, None))?;
        // The lanes' warm-up transfers were issued as they opened; wait for them here.
        let (control, timeout) = (&self.control, self.control.timeout());
        for lane in self.outgoing.iter_mut().chain(&mut self.incoming).flatten() {
            let done = lane.track(rank, None)?;
            wait_done(&done, control, &[lane.peer], started, timeout)
                .map_err(|s| s.of_step(rank, step, Some(lane.peer)))?;
        }
        Ok(())
    }
}

fn new_id(rank: usize) -> Result<UniqueIdBytes> {
    let id = Id::new().map_err(|e| device_err(rank, "create an NCCL id", e))?;
    Ok(id_to_bytes(&id))
}

type Lanes = (Vec<Option<Lane>>, Vec<Option<Lane>>);

/// Opens the lane of every ordered pair this rank is in, in one global order (by sender, then
/// receiver), so each blocking two-rank setup finds its partner at the same step: the first pair
/// not yet open always has both ranks waiting on it. Each lane sends one byte at once, which makes
/// NCCL connect it while the partner is posting the matching receive.
fn open_lanes(control: &mut TcpTransport, ctx: &Arc<CudaContext>) -> Result<Lanes> {
    let (me, n) = (control.rank(), control.world_size());
    let mut outgoing: Vec<Option<Lane>> = (0..n).map(|_| None).collect();
    let mut incoming: Vec<Option<Lane>> = (0..n).map(|_| None).collect();
    for src in 0..n {
        for dst in (0..n).filter(|&d| d != src && (src == me || d == me)) {
            let sending = src == me;
            let id = if sending { Some(new_id(me)?) } else { None };
            let id = UniqueIdBytes::share_in(control, &mut Group::new(vec![src, dst])?, src, id)?;
            let stream = ctx
                .new_stream()
                .map_err(|e| device_err(me, "create a lane stream", e))?;
            let comm =
                Comm::from_rank(stream.clone(), usize::from(!sending), 2, id_from_bytes(&id))
                    .map_err(|e| device_err(me, "join a lane communicator", e))?;
            let peer = if sending { dst } else { src };
            let lane = Lane::new(OwnedComm::new(comm), stream, peer);
            let slot = if sending {
                &mut outgoing
            } else {
                &mut incoming
            };
            slot[peer] = Some(connect(lane, me, sending)?);
        }
    }
    Ok((outgoing, incoming))
}

/// The lane's first transfer: one byte, kept tracked until it completes.
fn connect(mut lane: Lane, me: usize, sending: bool) -> Result<Lane> {
    let mut byte = lane
        .stream
        .alloc_zeros::<u8>(1)
        .map_err(|e| device_err(me, "allocate the lane warm-up", e))?;
    let issued = if sending {
        lane.comm.get().send(&byte, 1)
    } else {
        lane.comm.get().recv(&mut byte, 0).map(drop)
    };
    issued.map_err(|e| device_err(me, "connect a lane", e))?;
    lane.track(me, Some(byte))?;
    Ok(lane)
}

impl Drop for NcclTransport {
    /// Half-closes the control plane first, so a peer waiting on a header from this rank fails
    /// at once naming it; then keeps the communicators alive (up to the timeout, or until the
    /// peer is gone) for payloads whose headers peers already have, so messages sent before the
    /// drop are still delivered. Only then are the communicators aborted.
    fn drop(&mut self) {
        // The waits below query CUDA events: this thread needs the context (best effort).
        let _ = self.bind();
        self.control.close_writes();
        let deadline = Instant::now() + self.timeout();
        if self.world_broken.is_none() {
            if let Ok(done) = self.stream.record_event(None) {
                let others = self.others();
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = wait_done(&done, &self.control, &others, Instant::now(), left);
            }
        }
        for lane in self.outgoing.iter_mut().chain(&mut self.incoming).flatten() {
            lane.settle(&self.control, deadline);
        }
    }
}

fn check_len<T: NcclElement>(shape: &[usize], len: usize) -> Result<()> {
    match numel(shape) {
        Some(n) if n == len => Ok(()),
        n => Err(CommError::BadShape {
            shape: shape.to_vec(),
            dtype: T::DTYPE,
            expected: n.unwrap_or(usize::MAX),
            actual: len,
        }),
    }
}

fn device_err(rank: usize, op: &'static str, e: impl std::fmt::Debug) -> CommError {
    CommError::Device {
        rank,
        op,
        detail: format!("{e:?}"),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommOptions, TcpConfig};

    #[test]
    fn ids_survive_the_c_char_round_trip() {
        let mut raw = [0u8; UNIQUE_ID_BYTES];
        raw.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = 255 - i as u8);
        let bytes = UniqueIdBytes(raw);
        assert_eq!(id_to_bytes(&id_from_bytes(&bytes)), bytes);
    }

    #[test]
    fn element_dtypes_match_their_sizes() {
        fn size<T: NcclElement>() -> (usize, usize) {
            (std::mem::size_of::<T>(), T::DTYPE.size_in_bytes())
        }
        for (a, b) in [
            size::<f32>(),
            size::<f64>(),
            size::<half::bf16>(),
            size::<half::f16>(),
            size::<u32>(),
            size::<i64>(),
            size::<u8>(),
        ] {
            assert_eq!(a, b);
        }
        assert!(check_len::<f32>(&[2, 3], 6).is_ok());
        assert!(matches!(
            check_len::<f32>(&[2, 3], 5),
            Err(CommError::BadShape {
                expected: 6,
                actual: 5,
                ..
            })
        ));
    }

    /// On a machine without CUDA this is the "clear error, not a panic" check; with a GPU it runs
    /// a one-rank all-reduce for real.
    #[test]
    fn missing_libraries_are_errors_and_present_ones_work() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let opts = CommOptions::with_timeout(std::time::Duration::from_secs(10));
        let cfg = TcpConfig::new(0, 1, "127.0.0.1", port, opts).unwrap();
        let control = TcpTransport::connect(&cfg).unwrap();
        match (
            driver_present(),
            nccl_present(),
            NcclTransport::new(control),
        ) {
            (false, _, Err(e)) => assert!(
                matches!(
                    e,
                    CommError::LibraryMissing {
                        library: "libcuda",
                        ..
                    }
                ),
                "{e}"
            ),
            (true, false, Err(e)) => assert!(
                matches!(
                    e,
                    CommError::LibraryMissing {
                        library: "libnccl",
                        ..
                    }
                ),
                "{e}"
            ),
            (true, true, Ok(mut t)) => {
                let mut buf = t.stream().clone_htod(&[1.0f32, 2.0, 3.0]).unwrap();
                t.all_reduce_sum(&[3], &mut buf).unwrap();
                assert_eq!(t.stream().clone_dtoh(&buf).unwrap(), vec![1.0, 2.0, 3.0]);
            }
            (d, n, r) => {
                panic!("driver present {d}, nccl present {n}, but NcclTransport::new gave {r:?}")
            }
        }
    }
}
