//! Launchers of the flash-attention kernels (`cuda/attention.cu`): forward with log-sum-exp,
//! and the backward as `delta = rowsum(dO ⊙ O)` followed by one pass over key tiles.
//!
//! Kernels exist for head dims 64 and 128 (f32 and bf16, tensor cores for bf16); any other head
//! dim, or more than 65 535 (batch · heads), returns `Ok(None)` and takes the candle-op path.

use candle_core::cuda::cudarc::driver::{LaunchArgs, PushKernelArg};
use candle_core::{CudaDevice, DType, Tensor};

use super::launch::{
    blocks, by_float, cuda_err, device_view, int, output, target, tensor, KernelFloat,
};
use super::ptx;
use crate::attention::{Geometry, Mask};
use crate::error::Result;

const MODULE: &str = "seqpipe_attention";
const THREADS: u32 = 128;
/// Query rows per forward block, keys per backward block (`FWD_BM`, `BWD_BN` in the `.cu`).
const FWD_ROWS: usize = 64;
const BWD_KEYS: usize = 32;
const DELTA_THREADS: u32 = 256;
const DELTA_ROWS: usize = 8;
const MAX_GRID_Y: usize = 65_535;

/// Whether the kernels cover this call.
fn covered(geo: &Geometry) -> bool {
    matches!(geo.d, 64 | 128) && geo.b * geo.h <= MAX_GRID_Y
}

/// The trailing arguments both attention kernels take: `b, h, hkv, sq, sk, scale, causal`.
struct Tail {
    dims: [i32; 5],
    scale: f32,
    causal: i32,
}

impl Tail {
    fn of(op: &'static str, geo: &Geometry) -> Result<Tail> {
        Ok(Tail {
            dims: [
                int(op, "batch", geo.b)?,
                int(op, "heads", geo.h)?,
                int(op, "kv heads", geo.hkv)?,
                int(op, "query tokens", geo.sq)?,
                int(op, "key tokens", geo.sk)?,
            ],
            scale: geo.opts.scale as f32,
            causal: i32::from(geo.opts.mask == Mask::Causal),
        })
    }

    fn push<'a>(&'a self, b: &mut LaunchArgs<'a>) {
        for x in &self.dims {
            b.arg(x);
        }
        b.arg(&self.scale).arg(&self.causal);
    }
}

/// `(out [b, h, sq, d] in q's dtype, lse [b, h, sq] f32)`.
pub(crate) fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    geo: &Geometry,
) -> Result<Option<(Tensor, Tensor)>> {
    let Some((dev, float)) = target(q) else {
        return Ok(None);
    };
    if !covered(geo) {
        return Ok(None);
    }
    Ok(Some(by_float!(float, forward(&dev, q, k, v, geo))?))
}

fn forward<T: KernelFloat>(
    dev: &CudaDevice,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    geo: &Geometry,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention_forward";
    device_view!(qv, q, T, OP);
    device_view!(kv, k, T, OP);
    device_view!(vv, v, T, OP);
    let mut out = output::<T>(dev, q.elem_count())?;
    let mut lse = output::<f32>(dev, geo.b * geo.h * geo.sq)?;
    let tail = Tail::of(OP, geo)?;
    let name = format!("attn_fwd_d{}_{}", geo.d, T::SUFFIX);
    let f = dev.get_or_load_custom_func(&name, MODULE, ptx::ATTENTION)?;
    let mut b = f.builder();
    b.arg(&qv).arg(&kv).arg(&vv).arg(&mut out).arg(&mut lse);
    tail.push(&mut b);
    let grid = (geo.sq.div_ceil(FWD_ROWS), geo.b * geo.h);
    // SAFETY: arguments match `attn_fwd(const T*, const T*, const T*, T*, float*, int b, int h,
    // int hkv, int sq, int sk, float scale, int causal)`; the caller checked sk ≥ sq if causal.
    unsafe { b.launch(blocks(grid, THREADS)) }.map_err(|e| cuda_err(OP, e))?;
    Ok((
        tensor(out, dev, q.shape().clone()),
        tensor(lse, dev, (geo.b, geo.h, geo.sq)),
    ))
}

/// `(dq, dk, dv)` in f32 (the compute dtype), from the forward's (or a merged) `out` and `lse`.
pub(crate) fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
    geo: &Geometry,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let Some((dev, float)) = target(q) else {
        return Ok(None);
    };
    if !covered(geo) {
        return Ok(None);
    }
    let lse = lse.to_dtype(DType::F32)?;
    Ok(Some(by_float!(
        float,
        backward(&dev, q, k, v, out, &lse, d_out, geo)
    )?))
}

#[allow(clippy::too_many_arguments)]
fn backward<T: KernelFloat>(
    dev: &CudaDevice,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
    geo: &Geometry,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let rows = geo.b * geo.h * geo.sq;
    device_view!(ov, out, T, OP);
    device_view!(dov, d_out, T, OP);
    let mut delta = output::<f32>(dev, rows)?;
    let (rows_i, d_i) = (int(OP, "rows", rows)?, int(OP, "head dim", geo.d)?);
    let f = dev.get_or_load_custom_func(
        &format!("attn_bwd_delta_{}", T::SUFFIX),
        MODULE,
        ptx::ATTENTION,
    )?;
    let mut b = f.builder();
    b.arg(&ov).arg(&dov).arg(&mut delta).arg(&rows_i).arg(&d_i);
    // SAFETY: arguments match `attn_bwd_delta(const T*, const T*, float*, int rows, int d)`.
    unsafe { b.launch(blocks((rows.div_ceil(DELTA_ROWS), 1), DELTA_THREADS)) }
        .map_err(|e| cuda_err(OP, e))?;

    device_view!(qv, q, T, OP);
    device_view!(kv, k, T, OP);
    device_view!(vv, v, T, OP);
    device_view!(lv, lse, f32, OP);
    // dq is accumulated with atomics: it must start at zero, never poisoned.
    let mut dq = dev.alloc_zeros::<f32>(q.elem_count())?;
    let mut dk = output::<f32>(dev, k.elem_count())?;
    let mut dv = output::<f32>(dev, v.elem_count())?;
    let tail = Tail::of(OP, geo)?;
    let name = format!("attn_bwd_d{}_{}", geo.d, T::SUFFIX);
    let f = dev.get_or_load_custom_func(&name, MODULE, ptx::ATTENTION)?;
    let mut b = f.builder();
    b.arg(&qv).arg(&kv).arg(&vv).arg(&lv).arg(&delta).arg(&dov);
    b.arg(&mut dq).arg(&mut dk).arg(&mut dv);
    tail.push(&mut b);
    let grid = (geo.sk.div_ceil(BWD_KEYS), geo.b * geo.hkv);
    // SAFETY: arguments match `attn_bwd(const T* q, const T* k, const T* v, const float* lse,
    // const float* delta, const T* d_out, float* dq, float* dk, float* dv, int b, int h,
    // int hkv, int sq, int sk, float scale, int causal)`; dq is zeroed.
    unsafe { b.launch(blocks(grid, THREADS)) }.map_err(|e| cuda_err(OP, e))?;
    Ok((
        tensor(dq, dev, q.shape().clone()),
        tensor(dk, dev, k.shape().clone()),
        tensor(dv, dev, v.shape().clone()),
    ))
}
