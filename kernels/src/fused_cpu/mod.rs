//! Fused elementwise passes on CPU: one pass and one allocation where the candle-op form of the
//! same formula makes a pass and a tensor per operation.
//!
//! SwiGLU's forward is six candle ops over `[tokens, ffn]` and its backward ten, RMSNorm's
//! forward seven and its input gradient eight, RoPE five, and attention's score gradient
//! `P ⊙ (dP − δ)` two per tile; here each is one loop (RMSNorm's reduction one more), compiled for
//! the widest SIMD the CPU has (`pulp` dispatches at run time) with the polynomial `exp` of
//! [`crate::exp_shifted`] for f32. f64 uses the standard library's `exp`. Only f32 and f64 CPU
//! tensors take these paths (bf16 and other devices keep the candle ops), and every op here is
//! tested against its candle-op form.
//!
//! Each kernel's loop sits in a `pulp::WithSimd::with_simd` of its own struct: that is where pulp
//! enables the target features, and only what is inlined into it (hence `inline(always)` down to
//! the loop) is compiled with them. A closure passed to `dispatch` was measured not to be.

mod rms_norm;
mod rope;
mod softmax;
mod swiglu;

use std::ops::{Add, Div, Mul, Neg, Sub};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Tensor};

use crate::exp_shifted::exp_f32;

pub(crate) use rms_norm::{rms_norm_backward, rms_norm_forward};
pub(crate) use rope::rope;
pub(crate) use softmax::softmax_grad;
pub(crate) use swiglu::{swiglu_backward, swiglu_forward};

/// The float types the fused loops run in.
trait Real:
    Copy
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    #[inline(always)]
    fn exp(self) -> f32 {
        exp_f32(self)
    }
    #[inline(always)]
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    #[inline(always)]
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    #[inline(always)]
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> f64 {
        x
    }
}

/// Whether the fused path serves these tensors: f32/f64 on CPU.
fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The contiguous data of one input, or an error naming the op.
fn slice<'a, T>(data: &'a [T], l: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: inputs must be contiguous (the caller makes them so)"),
    }
}

/// Runs the f32 or the f64 instance of a kernel over `N` inputs of one dtype.
fn by_dtype<const N: usize>(
    op: &str,
    inputs: [(&CpuStorage, &Layout); N],
    f32s: impl FnOnce([&[f32]; N]) -> Vec<f32>,
    f64s: impl FnOnce([&[f64]; N]) -> Vec<f64>,
) -> candle_core::Result<CpuStorage> {
    let dtypes = inputs.map(|(s, _)| s.dtype());
    if let Ok(xs) = inputs.try_map_f32(op) {
        return Ok(CpuStorage::F32(f32s(xs)));
    }
    if let Ok(xs) = inputs.try_map_f64(op) {
        return Ok(CpuStorage::F64(f64s(xs)));
    }
    candle_core::bail!("{op}: inputs must all be f32 or all f64 (got {dtypes:?})")
}

/// Typed views of same-dtype storages.
trait TypedInputs<'a, const N: usize> {
    fn try_map_f32(&self, op: &str) -> candle_core::Result<[&'a [f32]; N]>;
    fn try_map_f64(&self, op: &str) -> candle_core::Result<[&'a [f64]; N]>;
}

impl<'a, const N: usize> TypedInputs<'a, N> for [(&'a CpuStorage, &'a Layout); N] {
    fn try_map_f32(&self, op: &str) -> candle_core::Result<[&'a [f32]; N]> {
        let mut out: [&[f32]; N] = [&[]; N];
        for (o, (s, l)) in out.iter_mut().zip(self) {
            let CpuStorage::F32(v) = s else {
                candle_core::bail!("{op}: not f32");
            };
            *o = slice(v, l, op)?;
        }
        Ok(out)
    }

    fn try_map_f64(&self, op: &str) -> candle_core::Result<[&'a [f64]; N]> {
        let mut out: [&[f64]; N] = [&[]; N];
        for (o, (s, l)) in out.iter_mut().zip(self) {
            let CpuStorage::F64(v) = s else {
                candle_core::bail!("{op}: not f64");
            };
            *o = slice(v, l, op)?;
        }
        Ok(out)
    }
}

/// Largest relative difference of two tensors, against `b`'s largest magnitude (tests).
#[cfg(test)]
fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f64>().unwrap() / scale.max(1e-300)
}
