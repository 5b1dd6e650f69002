//! Launchers of the cross-entropy kernels: the online log-sum-exp over vocabulary blocks and
//! the scaled softmax of one block. The logit matmuls stay in cuBLAS (candle's `matmul`).

use candle_core::cuda::cudarc::driver::{CudaSlice, PushKernelArg};
use candle_core::{DType, Device, Tensor};

use super::launch::{blocks, cuda_err, device_view, int, output, tensor};
use super::ptx;
use crate::error::Result;

const THREADS: u32 = 256;
const MODULE: &str = "seqpipe_cross_entropy";

/// `lse [n, 1]` of the logits `h · lm_headᵀ`, one `[n, block]` logit block at a time; `None`
/// unless `h` is an f32 CUDA tensor.
pub(crate) fn lse_update(
    h: &Tensor,
    lm_head: &Tensor,
    vocab: usize,
    block: usize,
) -> Result<Option<Tensor>> {
    const OP: &str = "cross_entropy_forward";
    let Device::Cuda(dev) = h.device() else {
        return Ok(None);
    };
    if h.dtype() != DType::F32 {
        return Ok(None);
    }
    let n = h.dims()[0];
    let n_i = int(OP, "rows", n)?;
    let stream = dev.cuda_stream();
    let mut run_max: CudaSlice<f32> = stream
        .clone_htod(&vec![f32::NEG_INFINITY; n.max(1)])
        .map_err(|e| cuda_err(OP, e))?;
    let mut run_sum = dev.alloc_zeros::<f32>(n.max(1))?;
    let f = dev.get_or_load_custom_func("ce_lse_update", MODULE, ptx::CROSS_ENTROPY)?;
    for v0 in (0..vocab).step_by(block) {
        let lv = block.min(vocab - v0);
        let z = h.matmul(&lm_head.narrow(0, v0, lv)?.to_dtype(DType::F32)?.t()?)?;
        device_view!(zv, z, f32, OP);
        let lv_i = int(OP, "vocab block", lv)?;
        let mut b = f.builder();
        b.arg(&zv)
            .arg(&mut run_max)
            .arg(&mut run_sum)
            .arg(&n_i)
            .arg(&lv_i);
        // SAFETY: arguments match `ce_lse_update(const float*, float*, float*, int, int)`.
        unsafe { b.launch(blocks((n, 1), THREADS)) }.map_err(|e| cuda_err(OP, e))?;
    }
    let m = tensor(run_max, dev, (n, 1));
    let l = tensor(run_sum, dev, (n, 1));
    Ok(Some((m + l.log()?)?))
}

/// `row_scale ⊙ exp(z − lse)` of one logit block `z [n, vb]`; `None` unless `z` is an f32
/// CUDA tensor.
pub(crate) fn softmax_grad(z: &Tensor, lse: &Tensor, row_scale: &Tensor) -> Result<Option<Tensor>> {
    const OP: &str = "cross_entropy_backward";
    let Device::Cuda(dev) = z.device() else {
        return Ok(None);
    };
    if z.dtype() != DType::F32 || lse.dtype() != DType::F32 || row_scale.dtype() != DType::F32 {
        return Ok(None);
    }
    let (n, vb) = z.dims2()?;
    device_view!(zv, z, f32, OP);
    device_view!(lv, lse, f32, OP);
    device_view!(sv, row_scale, f32, OP);
    let mut g = output::<f32>(dev, n * vb)?;
    let (n_i, vb_i) = (int(OP, "rows", n)?, int(OP, "vocab block", vb)?);
    let f = dev.get_or_load_custom_func("ce_softmax_grad", MODULE, ptx::CROSS_ENTROPY)?;
    let mut b = f.builder();
    b.arg(&zv)
        .arg(&lv)
        .arg(&sv)
        .arg(&mut g)
        .arg(&n_i)
        .arg(&vb_i);
    // SAFETY: arguments match `ce_softmax_grad(const float*, const float*, const float*,
    // float*, int, int)`.
    unsafe { b.launch(blocks((n, 1), THREADS)) }.map_err(|e| cuda_err(OP, e))?;
    Ok(Some(tensor(g, dev, (n, vb))))
}
