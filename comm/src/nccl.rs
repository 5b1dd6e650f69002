//! NCCL backend (feature `nccl`): device buffers over NCCL, control over TCP.
//!
//! Rendezvous, shape headers, timeouts and dead-peer detection stay on the [`TcpTransport`] the
//! backend is built from: rank 0 creates the NCCL unique id and broadcasts it over TCP, and every
//! device send is preceded by a header (tag, dtype, shape) on TCP, so the receiver can check the
//! tag and size its buffer, and a peer that died before sending fails the receive with its name
//! instead of hanging inside NCCL. Payloads move on a dedicated CUDA stream.
//!
//! cudarc loads `libcuda` and `libnccl` at run time (dynamic loading, so this builds with no CUDA
//! present) and panics on a driver call when they are missing; [`probe`] checks first, so a CPU
//! machine gets [`CommError::LibraryMissing`]. cudarc looks for `libnccl.so` or `libnccl.so.<CUDA
//! major>`, not NCCL's usual `libnccl.so.2`: a `libnccl.so` symlink on `LD_LIBRARY_PATH` fixes that.
//!
//! Not `Send`: cudarc's NCCL communicator is bound to one thread, so this type is not a
//! [`Transport`] object; it is the device-side companion of one, with the same tag and shape rules.
//! Two ranks that send to each other at the same time must not both send first on one stream
//! (NCCL point-to-point needs the matching receive posted); pipelines order their exchanges.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use crate::collective::{agree_on_header, Group};
use crate::error::{CommError, Result};
use crate::header::Header;
use crate::message::{describe, numel, DType};
use crate::nccl_id::{UniqueIdBytes, UNIQUE_ID_BYTES};
use crate::tag::Tag;
use crate::tcp::TcpTransport;
use crate::transport::Transport;

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

/// One rank's NCCL communicator over the world, with its TCP control plane.
#[derive(Debug)]
pub struct NcclTransport {
    control: TcpTransport,
    world: Group,
    stream: Arc<CudaStream>,
    comm: Comm,
}

impl NcclTransport {
    /// Opens GPU `control.local_rank()`, shares rank 0's NCCL id over `control`, and joins the
    /// communicator. Every rank must call it.
    pub fn new(mut control: TcpTransport) -> Result<NcclTransport> {
        let rank = control.rank();
        probe()?;
        let ctx = CudaContext::new(control.local_rank())
            .map_err(|e| device_err(rank, "open the GPU", e))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| device_err(rank, "create the comm stream", e))?;
        let id = match rank {
            0 => Some(id_to_bytes(
                &Id::new().map_err(|e| device_err(rank, "create the NCCL id", e))?,
            )),
            _ => None,
        };
        let id = UniqueIdBytes::share(&mut control, id)?;
        let world_size = control.world_size();
        let comm = Comm::from_rank(stream.clone(), rank, world_size, id_from_bytes(&id))
            .map_err(|e| device_err(rank, "join the NCCL communicator", e))?;
        Ok(NcclTransport {
            world: Group::world(world_size)?,
            control,
            stream,
            comm,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.control.rank()
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.control.world_size()
    }

    /// The dedicated stream payloads move on; allocate receive buffers and synchronize on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The TCP control plane (host messages, barriers, watchdog progress).
    pub fn control(&mut self) -> &mut TcpTransport {
        &mut self.control
    }

    /// Sends a device buffer of `shape` to `peer`: header over TCP, payload over NCCL.
    pub fn send<T: NcclElement>(
        &mut self,
        peer: usize,
        tag: Tag,
        shape: &[usize],
        data: &CudaSlice<T>,
    ) -> Result<()> {
        check_len::<T>(shape, data.len())?;
        let header = Header {
            tag,
            dtype: T::DTYPE,
            shape: shape.to_vec(),
        };
        self.control.send(peer, tag, header.to_message())?;
        self.comm
            .send(data, peer_i32(peer)?)
            .map_err(|e| device_err(self.rank(), "ncclSend", e))
    }

    /// Receives the next device buffer from `peer` (which must carry `tag` and dtype `T`),
    /// allocated on [`NcclTransport::stream`]; returns its shape and the buffer.
    pub fn recv<T: NcclElement>(
        &mut self,
        peer: usize,
        tag: Tag,
    ) -> Result<(Vec<usize>, CudaSlice<T>)> {
        let header = Header::from_message(peer, tag, &self.control.recv(peer, tag)?)?;
        let n = match header.numel() {
            Some(n) if header.dtype == T::DTYPE => n,
            _ => {
                return Err(CommError::ShapeMismatch {
                    peer,
                    tag,
                    expected: format!("{}[..]", T::DTYPE),
                    received: describe(header.dtype, &header.shape),
                })
            }
        };
        let rank = self.rank();
        let mut buf = self
            .stream
            .alloc_zeros::<T>(n)
            .map_err(|e| device_err(rank, "allocate the receive buffer", e))?;
        self.comm
            .recv(&mut buf, peer_i32(peer)?)
            .map_err(|e| device_err(rank, "ncclRecv", e))?;
        Ok((header.shape, buf))
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
        let header = Header {
            tag: Tag::from_raw(0),
            dtype: T::DTYPE,
            shape: shape.to_vec(),
        };
        agree_on_header(&mut self.control, &mut self.world, &header)?;
        self.comm
            .all_reduce_in_place(data, &ReduceOp::Sum)
            .map(drop)
            .map_err(|e| device_err(self.rank(), "ncclAllReduce", e))
    }

    /// Waits for every payload queued on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| device_err(self.rank(), "synchronize", e))
    }

    /// Host-side barrier over TCP (with the usual timeout).
    pub fn barrier(&mut self) -> Result<()> {
        self.control.barrier(&mut self.world)
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

fn peer_i32(peer: usize) -> Result<i32> {
    i32::try_from(peer).map_err(|_| CommError::BadRank {
        what: "peer",
        rank: peer,
        world_size: i32::MAX as usize,
    })
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
