//! Fused elementwise passes on CPU: one pass and one allocation where the candle-op form of the
//! same formula makes a pass and a tensor per operation.
//!
//! SwiGLU's forward is six candle ops over `[tokens, ffn]` and its backward ten, and attention's
//! score gradient `P ⊙ (dP − δ)` two per tile; here each is one loop, compiled for the widest SIMD the CPU has (`pulp` dispatches at run time) with the
//! polynomial `exp` of [`crate::exp_shifted`] for f32. f64 uses the standard library's `exp`.
//! Only f32 and f64 CPU tensors take these paths (bf16 and other devices keep the candle ops),
//! and every op here is tested against its candle-op form.

use std::ops::{Add, Div, Mul, Neg, Sub};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use crate::error::Result;
use crate::exp_shifted::exp_f32;

/// The float types the fused loops run in.
trait Real:
    Copy
    + Default
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const ONE: Self;
    fn exp(self) -> Self;
}

impl Real for f32 {
    const ONE: f32 = 1.0;
    #[inline(always)]
    fn exp(self) -> f32 {
        exp_f32(self)
    }
}

impl Real for f64 {
    const ONE: f64 = 1.0;
    #[inline(always)]
    fn exp(self) -> f64 {
        f64::exp(self)
    }
}

#[inline(always)]
fn sigmoid<T: Real>(g: T) -> T {
    T::ONE / (T::ONE + (-g).exp())
}

/// Whether the fused path serves these tensors: contiguous-able f32/f64 on CPU.
fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// `SiLU(gate) · up` in one pass, or `None` where the candle-op path must serve.
pub(crate) fn swiglu_forward(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    if !fusable(gate) {
        return Ok(None);
    }
    Ok(Some(
        gate.contiguous()?
            .apply_op2_no_bwd(&up.contiguous()?, &SwigluForward)?,
    ))
}

/// `(dgate, dup)` of SwiGLU in one pass, or `None` where the candle-op path must serve.
pub(crate) fn swiglu_backward(
    gate: &Tensor,
    up: &Tensor,
    d_out: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    if !fusable(gate) {
        return Ok(None);
    }
    let both = gate.contiguous()?.apply_op3_no_bwd(
        &up.contiguous()?,
        &d_out.contiguous()?,
        &SwigluBackward,
    )?;
    // `both` is [2, ..shape]: the halves are contiguous views, no copy.
    Ok(Some((both.get(0)?, both.get(1)?)))
}

/// `P ⊙ (dP − δ)` with `δ [.., 1]` broadcast along rows: the score gradient of an attention tile
/// (FlashAttention-2's `dS`), in one pass; `None` where the candle-op path must serve.
pub(crate) fn softmax_grad(p: &Tensor, dp: &Tensor, delta: &Tensor) -> Result<Option<Tensor>> {
    if !fusable(p) {
        return Ok(None);
    }
    Ok(Some(p.contiguous()?.apply_op3_no_bwd(
        &dp.contiguous()?,
        &delta.contiguous()?,
        &SoftmaxGrad,
    )?))
}

/// The contiguous data of one input, or an error naming the op.
fn slice<'a, T>(data: &'a [T], l: &Layout, op: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: inputs must be contiguous (the caller makes them so)"),
    }
}

/// `SiLU(g)·u`, compiled for the best instruction set there is.
fn forward<T: Real>(g: &[T], u: &[T]) -> Vec<T> {
    // Structs, not closures: `with_simd` is where pulp enables the target features, and only what
    // is inlined into it (hence `inline(always)` down to the loop) is compiled with them.
    struct Forward<'a, T>(&'a [T], &'a [T]);
    impl<T: Real> pulp::WithSimd for Forward<'_, T> {
        type Output = Vec<T>;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<T> {
            let mut out = vec![T::default(); self.0.len()];
            for ((o, &g), &u) in out.iter_mut().zip(self.0).zip(self.1) {
                *o = g * sigmoid(g) * u;
            }
            out
        }
    }
    pulp::Arch::new().dispatch(Forward(g, u))
}

/// `[dgate…, dup…]`: `dup = d·SiLU(g)`, `dgate = d·u·(σ + SiLU·(1 − σ))`.
fn backward<T: Real>(g: &[T], u: &[T], d: &[T]) -> Vec<T> {
    struct Backward<'a, T>(&'a [T], &'a [T], &'a [T]);
    impl<T: Real> pulp::WithSimd for Backward<'_, T> {
        type Output = Vec<T>;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<T> {
            let Backward(g, u, d) = self;
            let n = g.len();
            let mut out = vec![T::default(); 2 * n];
            let (dgate, dup) = out.split_at_mut(n);
            for ((((dg, du), &g), &u), &d) in dgate.iter_mut().zip(dup).zip(g).zip(u).zip(d) {
                let s = sigmoid(g);
                let silu = g * s;
                *du = d * silu;
                *dg = d * u * (s + silu * (T::ONE - s));
            }
            out
        }
    }
    pulp::Arch::new().dispatch(Backward(g, u, d))
}

/// `p ⊙ (dp − δ)` row by row; `delta` holds one value per row of `cols`.
fn softmax_grad_rows<T: Real>(p: &[T], dp: &[T], delta: &[T], cols: usize) -> Vec<T> {
    struct Rows<'a, T>(&'a [T], &'a [T], &'a [T], usize);
    impl<T: Real> pulp::WithSimd for Rows<'_, T> {
        type Output = Vec<T>;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<T> {
            let Rows(p, dp, delta, cols) = self;
            let mut out = vec![T::default(); p.len()];
            let rows = out
                .chunks_mut(cols)
                .zip(p.chunks(cols))
                .zip(dp.chunks(cols));
            for (((o, p), dp), &d) in rows.zip(delta) {
                for ((o, &p), &dp) in o.iter_mut().zip(p).zip(dp) {
                    *o = p * (dp - d);
                }
            }
            out
        }
    }
    pulp::Arch::new().dispatch(Rows(p, dp, delta, cols))
}

struct SwigluForward;

impl CustomOp2 for SwigluForward {
    fn name(&self) -> &'static str {
        "swiglu_forward_cpu"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        lg: &Layout,
        u: &CpuStorage,
        lu: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let out = match (g, u) {
            (CpuStorage::F32(g), CpuStorage::F32(u)) => {
                CpuStorage::F32(forward(slice(g, lg, op)?, slice(u, lu, op)?))
            }
            (CpuStorage::F64(g), CpuStorage::F64(u)) => {
                CpuStorage::F64(forward(slice(g, lg, op)?, slice(u, lu, op)?))
            }
            _ => candle_core::bail!("{op}: gate {:?} and up {:?}", g.dtype(), u.dtype()),
        };
        Ok((out, lg.shape().clone()))
    }
}

struct SwigluBackward;

impl CustomOp3 for SwigluBackward {
    fn name(&self) -> &'static str {
        "swiglu_backward_cpu"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        lg: &Layout,
        u: &CpuStorage,
        lu: &Layout,
        d: &CpuStorage,
        ld: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let out = match (g, u, d) {
            (CpuStorage::F32(g), CpuStorage::F32(u), CpuStorage::F32(d)) => CpuStorage::F32(
                backward(slice(g, lg, op)?, slice(u, lu, op)?, slice(d, ld, op)?),
            ),
            (CpuStorage::F64(g), CpuStorage::F64(u), CpuStorage::F64(d)) => CpuStorage::F64(
                backward(slice(g, lg, op)?, slice(u, lu, op)?, slice(d, ld, op)?),
            ),
            _ => candle_core::bail!(
                "{op}: gate {:?}, up {:?} and d_out {:?}",
                g.dtype(),
                u.dtype(),
                d.dtype()
            ),
        };
        let mut dims = vec![2];
        dims.extend_from_slice(lg.dims());
        Ok((out, Shape::from(dims)))
    }
}

struct SoftmaxGrad;

impl CustomOp3 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax_grad_cpu"
    }

    fn cpu_fwd(
        &self,
        p: &CpuStorage,
        lp: &Layout,
        dp: &CpuStorage,
        ldp: &Layout,
        delta: &CpuStorage,
        ldelta: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let cols = *lp.dims().last().unwrap_or(&1);
        let rows = lp.shape().elem_count() / cols.max(1);
        if ldp.dims() != lp.dims() || ldelta.shape().elem_count() != rows {
            candle_core::bail!(
                "{op}: p {:?}, dp {:?} and delta {:?} (one value per row) disagree",
                lp.dims(),
                ldp.dims(),
                ldelta.dims()
            );
        }
        let out = match (p, dp, delta) {
            (CpuStorage::F32(p), CpuStorage::F32(dp), CpuStorage::F32(d)) => {
                CpuStorage::F32(softmax_grad_rows(
                    slice(p, lp, op)?,
                    slice(dp, ldp, op)?,
                    slice(d, ldelta, op)?,
                    cols,
                ))
            }
            (CpuStorage::F64(p), CpuStorage::F64(dp), CpuStorage::F64(d)) => {
                CpuStorage::F64(softmax_grad_rows(
                    slice(p, lp, op)?,
                    slice(dp, ldp, op)?,
                    slice(d, ldelta, op)?,
                    cols,
                ))
            }
            _ => candle_core::bail!(
                "{op}: p {:?}, dp {:?} and delta {:?}",
                p.dtype(),
                dp.dtype(),
                delta.dtype()
            ),
        };
        Ok((out, lp.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// SwiGLU as candle ops, the portable path's formula.
    fn reference(g: &Tensor, u: &Tensor, d: &Tensor) -> Result<[Tensor; 3]> {
        let s = (g.neg()?.exp()? + 1.0)?.recip()?;
        let silu = (g * &s)?;
        let out = (&silu * u)?;
        let dup = (d * &silu)?;
        let dgate = ((d * u)? * (&s + (silu * (1.0 - &s)?)?)?)?;
        Ok([out, dgate, dup])
    }

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

    #[test]
    fn swiglu_matches_the_candle_ops_in_f64_and_f32() -> Result<()> {
        let dev = Device::Cpu;
        // Wide enough to reach σ's saturation on both sides.
        let g = (Tensor::randn(0f64, 1.0, (3, 5, 37), &dev)? * 12.0)?;
        let u = Tensor::randn(0f64, 1.0, (3, 5, 37), &dev)?;
        let d = Tensor::randn(0f64, 1.0, (3, 5, 37), &dev)?;
        let [out, dgate, dup] = reference(&g, &u, &d)?;
        for (dtype, tol) in [(DType::F64, 1e-14), (DType::F32, 1e-6)] {
            let (gc, uc, dc) = (g.to_dtype(dtype)?, u.to_dtype(dtype)?, d.to_dtype(dtype)?);
            let got = swiglu_forward(&gc, &uc)?.unwrap();
            assert!(max_rel(&got, &out) < tol, "{dtype:?} forward");
            let (dg, du) = swiglu_backward(&gc, &uc, &dc)?.unwrap();
            assert_eq!(dg.dims(), g.dims());
            assert!(max_rel(&dg, &dgate) < tol, "{dtype:?} dgate");
            assert!(max_rel(&du, &dup) < tol, "{dtype:?} dup");
        }
        Ok(())
    }

    #[test]
    fn strided_inputs_are_read_as_their_values() -> Result<()> {
        let dev = Device::Cpu;
        let g = Tensor::randn(0f32, 2.0, (6, 4), &dev)?.t()?;
        let u = Tensor::randn(0f32, 1.0, (4, 6), &dev)?;
        let a = swiglu_forward(&g, &u)?.unwrap();
        let b = swiglu_forward(&g.contiguous()?, &u)?.unwrap();
        assert_eq!(max_rel(&a, &b), 0.0);
        Ok(())
    }

    #[test]
    fn softmax_grad_matches_the_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let p = Tensor::rand(0f64, 1.0, (2, 3, 9, 11), &dev)?;
        let dp = Tensor::randn(0f64, 1.0, (2, 3, 9, 11), &dev)?;
        let delta = Tensor::randn(0f64, 1.0, (2, 3, 9, 1), &dev)?;
        let want = (&p * dp.broadcast_sub(&delta)?)?;
        let got = softmax_grad(&p, &dp, &delta)?.unwrap();
        assert_eq!(max_rel(&got, &want), 0.0, "f64 is the same arithmetic");
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let got = softmax_grad(&f(&p)?, &f(&dp)?, &f(&delta)?)?.unwrap();
        assert!(max_rel(&got, &want) < 1e-6);
        let bad = Tensor::zeros((2, 3, 9, 2), DType::F64, &dev)?;
        let err = softmax_grad(&p, &dp, &bad).unwrap_err().to_string();
        assert!(err.contains("one value per row"), "{err}");
        Ok(())
    }

    #[test]
    fn bf16_keeps_the_candle_path() -> Result<()> {
        let g = Tensor::zeros((2, 3), DType::BF16, &Device::Cpu)?;
        assert!(swiglu_forward(&g, &g)?.is_none());
        assert!(swiglu_backward(&g, &g, &g)?.is_none());
        Ok(())
    }
}
