//! Tensors to transport messages and back: the only place the runtime crosses the `comm` seam,
//! which knows buffers and shapes but not candle. A GPU tensor on an NCCL transport skips the
//! message and moves device to device (`nccl_tensor.rs`, `cuda,nccl` build).

use crate::error::{fail, Result};
use candle_core::{DType, Device, Tensor};
use seqpipe_comm::{Message, Tag, Transport};

/// Sends `t` to `peer` as `tag`: over NCCL device to device where `t` is on a GPU and the
/// transport is NCCL, else as a host message.
pub fn send_tensor(transport: &mut dyn Transport, peer: usize, tag: Tag, t: &Tensor) -> Result<()> {
    #[cfg(all(feature = "cuda", feature = "nccl"))]
    if let (Device::Cuda(dev), Some(nccl)) = (t.device(), transport.as_nccl()) {
        return super::nccl_tensor::send(nccl, dev, peer, tag, t);
    }
    Ok(transport.send(peer, tag, to_message(t)?)?)
}

/// Receives `tag` from `peer` as a tensor on `device`. `dtype` is what the NCCL device path
/// receives (its buffers are typed); a host message carries its own dtype.
#[cfg_attr(not(all(feature = "cuda", feature = "nccl")), allow(unused_variables))]
pub fn recv_tensor(
    transport: &mut dyn Transport,
    peer: usize,
    tag: Tag,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    #[cfg(all(feature = "cuda", feature = "nccl"))]
    if let (Device::Cuda(dev), Some(nccl)) = (device, transport.as_nccl()) {
        return super::nccl_tensor::recv(nccl, dev, peer, tag, dtype);
    }
    from_message(transport.recv(peer, tag)?, device)
}

/// [`recv_tensor`] without waiting: `None` while nothing from `peer` has arrived. (On an NCCL
/// device path, which has no test for an arrival, it waits.)
pub fn try_recv_tensor(
    transport: &mut dyn Transport,
    peer: usize,
    tag: Tag,
    dtype: DType,
    device: &Device,
) -> Result<Option<Tensor>> {
    #[cfg(all(feature = "cuda", feature = "nccl"))]
    if let (Device::Cuda(_), Some(_)) = (device, transport.as_nccl()) {
        return recv_tensor(transport, peer, tag, dtype, device).map(Some);
    }
    let _ = dtype;
    match transport.try_recv(peer, tag)? {
        Some(msg) => Ok(Some(from_message(msg, device)?)),
        None => Ok(None),
    }
}

/// Packs a tensor (f32, f64 or bf16) into a message with its shape.
pub fn to_message(t: &Tensor) -> Result<Message> {
    let shape = t.dims().to_vec();
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => Message::from_f32(shape, flat.to_vec1::<f32>()?)?,
        DType::F64 => Message::from_f64(shape, flat.to_vec1::<f64>()?)?,
        DType::BF16 => {
            let bits = flat
                .to_vec1::<half::bf16>()?
                .into_iter()
                .map(|x| x.to_bits())
                .collect();
            Message::from_bf16_bits(shape, bits)?
        }
        other => fail!(
            Runtime,
            "cannot send a {other:?} tensor between stages: activations are f32, f64 or bf16"
        ),
    })
}

/// Unpacks a message into a tensor on `device`.
pub fn from_message(msg: Message, device: &Device) -> Result<Tensor> {
    let shape = msg.shape().to_vec();
    let tensor = match msg.dtype() {
        seqpipe_comm::DType::F32 => Tensor::from_vec(msg.into_f32()?, shape, device)?,
        seqpipe_comm::DType::F64 => Tensor::from_vec(msg.into_f64()?, shape, device)?,
        seqpipe_comm::DType::BF16 => {
            let values: Vec<half::bf16> = msg
                .into_bf16_bits()?
                .into_iter()
                .map(half::bf16::from_bits)
                .collect();
            Tensor::from_vec(values, shape, device)?
        }
        other => fail!(
            Runtime,
            "received a {other:?} message where an f32, f64 or bf16 activation was expected"
        ),
    };
    Ok(tensor)
}
