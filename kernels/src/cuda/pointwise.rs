//! Launchers of the row-wise and elementwise kernels: RMSNorm, RoPE, SwiGLU.
//!
//! Each returns `Ok(None)` when `x` is not an f32/bf16 CUDA tensor, so the caller falls back to
//! the candle-op path. Inputs are already checked by the caller.

use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::{CudaDevice, DType, Tensor};

use super::launch::{
    blocks, by_float, device_view, grid_1d, int, output, target, tensor, KernelFloat,
};
use super::ptx;
use crate::error::Result;

/// Block size of every kernel in this file (their `.cu` headers require it).
const THREADS: u32 = 256;
/// Cap on grid-stride launches and on the RMSNorm backward's partial-sum rows.
const MAX_BLOCKS: u32 = 65_535;
const RMS_BWD_BLOCKS: usize = 256;

/// `(y, inv_rms [.., 1] f32)`.
pub(crate) fn rms_norm_forward(
    x: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, Tensor)>> {
    let Some((dev, float)) = target(x) else {
        return Ok(None);
    };
    Ok(Some(by_float!(float, rms_fwd(&dev, x, w, eps))?))
}

fn rows_and_h(x: &Tensor) -> (usize, usize) {
    let h = x.dims()[x.rank() - 1];
    (x.elem_count() / h.max(1), h)
}

fn rms_fwd<T: KernelFloat>(
    dev: &CudaDevice,
    x: &Tensor,
    w: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rms_norm_forward";
    let (rows, h) = rows_and_h(x);
    device_view!(xv, x, T, OP);
    device_view!(wv, w, T, OP);
    let mut y = output::<T>(dev, x.elem_count())?;
    let mut inv = output::<f32>(dev, rows)?;
    let (rows_i, h_i, eps_f) = (int(OP, "rows", rows)?, int(OP, "hidden", h)?, eps as f32);
    let f = dev.get_or_load_custom_func(
        &format!("rms_norm_fwd_{}", T::SUFFIX),
        "seqpipe_rms_norm",
        ptx::RMS_NORM,
    )?;
    let mut b = f.builder();
    b.arg(&xv)
        .arg(&wv)
        .arg(&mut y)
        .arg(&mut inv)
        .arg(&rows_i)
        .arg(&h_i)
        .arg(&eps_f);
    let cfg = blocks((rows, 1), THREADS);
    // SAFETY: arguments match `rms_norm_fwd(const T*, const T*, T*, float*, int, int, float)`.
    unsafe { b.launch(cfg) }.map_err(|e| super::launch::cuda_err(OP, e))?;
    let mut inv_shape = x.dims().to_vec();
    *inv_shape.last_mut().expect("rank ≥ 1") = 1;
    Ok((
        tensor(y, dev, x.shape().clone()),
        tensor(inv, dev, inv_shape),
    ))
}

/// `(dx, dw)`; `inv_rms` is the forward's f32 `[.., 1]`.
pub(crate) fn rms_norm_backward(
    x: &Tensor,
    w: &Tensor,
    inv_rms: &Tensor,
    dy: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let Some((dev, float)) = target(x) else {
        return Ok(None);
    };
    if inv_rms.dtype() != DType::F32 {
        return Ok(None);
    }
    Ok(Some(by_float!(float, rms_bwd(&dev, x, w, inv_rms, dy))?))
}

fn rms_bwd<T: KernelFloat>(
    dev: &CudaDevice,
    x: &Tensor,
    w: &Tensor,
    inv_rms: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rms_norm_backward";
    let (rows, h) = rows_and_h(x);
    let grid = rows.clamp(1, RMS_BWD_BLOCKS);
    device_view!(xv, x, T, OP);
    device_view!(wv, w, T, OP);
    device_view!(iv, inv_rms, f32, OP);
    device_view!(dyv, dy, T, OP);
    let mut dx = output::<T>(dev, x.elem_count())?;
    let mut partial = output::<f32>(dev, grid * h)?;
    let (rows_i, h_i) = (int(OP, "rows", rows)?, int(OP, "hidden", h)?);
    let f = dev.get_or_load_custom_func(
        &format!("rms_norm_bwd_{}", T::SUFFIX),
        "seqpipe_rms_norm",
        ptx::RMS_NORM,
    )?;
    let mut b = f.builder();
    b.arg(&xv)
        .arg(&wv)
        .arg(&iv)
        .arg(&dyv)
        .arg(&mut dx)
        .arg(&mut partial)
        .arg(&rows_i)
        .arg(&h_i);
    let cfg = blocks((grid, 1), THREADS);
    // SAFETY: arguments match `rms_norm_bwd(const T*, const T*, const float*, const T*, T*,
    // float*, int, int)`; `partial` has one row of `h` per block.
    unsafe { b.launch(cfg) }.map_err(|e| super::launch::cuda_err(OP, e))?;
    let dw = tensor(partial, dev, (grid, h))
        .sum(0)?
        .to_dtype(w.dtype())?;
    Ok((tensor(dx, dev, x.shape().clone()), dw))
}

/// Rotates `x [b, heads, s, d]` at positions `offset..`; `sin_sign = −1` is the backward.
/// `cos`/`sin` are the f32 tables `[max_positions, d]`.
pub(crate) fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    offset: usize,
    sin_sign: f32,
) -> Result<Option<Tensor>> {
    let Some((dev, float)) = target(x) else {
        return Ok(None);
    };
    if cos.dtype() != DType::F32 {
        return Ok(None);
    }
    Ok(Some(by_float!(
        float,
        rope_t(&dev, x, cos, sin, offset, sin_sign)
    )?))
}

fn rope_t<T: KernelFloat>(
    dev: &CudaDevice,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    offset: usize,
    sin_sign: f32,
) -> Result<Tensor> {
    const OP: &str = "rope";
    let d = x.dims();
    let (bh, s, hd) = (d[0] * d[1], d[2], d[3]);
    device_view!(xv, x, T, OP);
    device_view!(cv, cos, f32, OP);
    device_view!(sv, sin, f32, OP);
    let mut y = output::<T>(dev, x.elem_count())?;
    let args = [
        int(OP, "batch·heads", bh)?,
        int(OP, "tokens", s)?,
        int(OP, "head dim", hd)?,
        int(OP, "offset", offset)?,
    ];
    let f =
        dev.get_or_load_custom_func(&format!("rope_{}", T::SUFFIX), "seqpipe_rope", ptx::ROPE)?;
    let mut b = f.builder();
    b.arg(&xv).arg(&mut y).arg(&cv).arg(&sv);
    for a in &args {
        b.arg(a);
    }
    b.arg(&sin_sign);
    // SAFETY: arguments match `rope(const T*, T*, const float*, const float*, int, int, int,
    // int, float)`; the caller checked `offset + s ≤ max_positions`.
    unsafe { b.launch(grid_1d(x.elem_count(), THREADS, MAX_BLOCKS)) }
        .map_err(|e| super::launch::cuda_err(OP, e))?;
    Ok(tensor(y, dev, x.shape().clone()))
}

/// `SiLU(gate)·up`.
pub(crate) fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    let Some((dev, float)) = target(gate) else {
        return Ok(None);
    };
    Ok(Some(by_float!(float, swiglu_fwd(&dev, gate, up))?))
}

fn swiglu_fwd<T: KernelFloat>(dev: &CudaDevice, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu_forward";
    let n = gate.elem_count();
    device_view!(gv, gate, T, OP);
    device_view!(uv, up, T, OP);
    let mut out = output::<T>(dev, n)?;
    let n_i = n as i64;
    let f = dev.get_or_load_custom_func(
        &format!("swiglu_fwd_{}", T::SUFFIX),
        "seqpipe_swiglu",
        ptx::SWIGLU,
    )?;
    let mut b = f.builder();
    b.arg(&gv).arg(&uv).arg(&mut out).arg(&n_i);
    // SAFETY: arguments match `swiglu_fwd(const T*, const T*, T*, long long)`.
    unsafe { b.launch(grid_1d(n, THREADS, MAX_BLOCKS)) }
        .map_err(|e| super::launch::cuda_err(OP, e))?;
    Ok(tensor(out, dev, gate.shape().clone()))
}

/// `(d_gate, d_up)`.
pub(crate) fn swiglu_backward(
    gate: &Tensor,
    up: &Tensor,
    d_out: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let Some((dev, float)) = target(gate) else {
        return Ok(None);
    };
    Ok(Some(by_float!(float, swiglu_bwd(&dev, gate, up, d_out))?))
}

fn swiglu_bwd<T: KernelFloat>(
    dev: &CudaDevice,
    gate: &Tensor,
    up: &Tensor,
    d_out: &Tensor,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "swiglu_backward";
    let n = gate.elem_count();
    device_view!(gv, gate, T, OP);
    device_view!(uv, up, T, OP);
    device_view!(dv, d_out, T, OP);
    let mut d_gate = output::<T>(dev, n)?;
    let mut d_up = output::<T>(dev, n)?;
    let n_i = n as i64;
    let f = dev.get_or_load_custom_func(
        &format!("swiglu_bwd_{}", T::SUFFIX),
        "seqpipe_swiglu",
        ptx::SWIGLU,
    )?;
    let mut b = f.builder();
    b.arg(&gv)
        .arg(&uv)
        .arg(&dv)
        .arg(&mut d_gate)
        .arg(&mut d_up)
        .arg(&n_i);
    // SAFETY: arguments match `swiglu_bwd(const T*, const T*, const T*, T*, T*, long long)`.
    unsafe { b.launch(grid_1d(n, THREADS, MAX_BLOCKS)) }
        .map_err(|e| super::launch::cuda_err(OP, e))?;
    Ok((
        tensor(d_gate, dev, gate.shape().clone()),
        tensor(d_up, dev, gate.shape().clone()),
    ))
}
