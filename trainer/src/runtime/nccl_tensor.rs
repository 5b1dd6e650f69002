//! GPU tensors between ranks over NCCL with no host copy (`cuda,nccl` build): the tensor's own
//! device buffer goes to `NcclTransport`'s device-buffer calls, and a received buffer becomes a
//! tensor's storage as it is.
//!
//! Candle's kernels run on the device's stream, NCCL on the transport's: a send first makes
//! the transport's stream wait for the kernels that wrote the tensor, and after a receive the
//! device's stream waits for the transfer. Neither waits on the host. Buffers stay alive for
//! transfers in flight through cudarc's per-buffer events.

use candle_core::cuda::cudarc::driver::{CudaStream, DriverError};
use candle_core::cuda::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Storage, Tensor};
use seqpipe_comm::{NcclElement, NcclTransport, Tag};

use crate::error::{fail, Error, Result};

/// Sends `t` (on `dev`) to `peer` as `tag`.
pub fn send(
    nccl: &mut NcclTransport,
    dev: &CudaDevice,
    peer: usize,
    tag: Tag,
    t: &Tensor,
) -> Result<()> {
    after(
        nccl.stream(),
        &dev.cuda_stream(),
        "order a send after its kernels",
    )?;
    match t.dtype() {
        DType::F32 => send_as::<f32>(nccl, peer, tag, t),
        DType::BF16 => send_as::<half::bf16>(nccl, peer, tag, t),
        DType::F64 => send_as::<f64>(nccl, peer, tag, t),
        other => fail!(
            Runtime,
            "cannot send a {other:?} tensor between stages: activations are f32, f64 or bf16"
        ),
    }
}

fn send_as<T: NcclElement + CudaDType>(
    nccl: &mut NcclTransport,
    peer: usize,
    tag: Tag,
    t: &Tensor,
) -> Result<()> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        fail!(Runtime, "a tensor sent over NCCL is not on the GPU");
    };
    let whole = cuda.as_cuda_slice::<T>()?;
    let (start, n) = (layout.start_offset(), t.elem_count());
    if start == 0 && n == whole.len() {
        return Ok(nccl.send(peer, tag, t.dims(), whole)?);
    }
    // A view into a larger buffer: NCCL sends whole buffers, so the view is copied out on the
    // device first.
    let exact = nccl
        .stream()
        .clone_dtod(&whole.slice(start..start + n))
        .map_err(|e| driver("copy a tensor view for NCCL", e))?;
    Ok(nccl.send(peer, tag, t.dims(), &exact)?)
}

/// Receives `tag` from `peer` as a `dtype` tensor on `dev`.
pub fn recv(
    nccl: &mut NcclTransport,
    dev: &CudaDevice,
    peer: usize,
    tag: Tag,
    dtype: DType,
) -> Result<Tensor> {
    match dtype {
        DType::F32 => recv_as::<f32>(nccl, dev, peer, tag),
        DType::BF16 => recv_as::<half::bf16>(nccl, dev, peer, tag),
        DType::F64 => recv_as::<f64>(nccl, dev, peer, tag),
        other => fail!(
            Runtime,
            "cannot receive a {other:?} tensor between stages: activations are f32, f64 or bf16"
        ),
    }
}

fn recv_as<T: NcclElement + CudaDType>(
    nccl: &mut NcclTransport,
    dev: &CudaDevice,
    peer: usize,
    tag: Tag,
) -> Result<Tensor> {
    let (shape, buf) = nccl.recv::<T>(peer, tag)?;
    after(
        &dev.cuda_stream(),
        nccl.stream(),
        "order kernels after a receive",
    )?;
    let storage = CudaStorage::wrap_cuda_slice(buf, dev.clone());
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        shape,
        BackpropOp::none(),
        false,
    ))
}

/// Makes `stream` wait (on the GPU) for the work queued on `other` so far.
fn after(stream: &CudaStream, other: &CudaStream, what: &str) -> Result<()> {
    stream.join(other).map_err(|e| driver(what, e))
}

fn driver(what: &str, e: DriverError) -> Error {
    Error::Runtime(format!("CUDA: {what}: {e}"))
}
