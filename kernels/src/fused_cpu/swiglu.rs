//! SwiGLU forward and backward in one pass each (see the module header).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::{by_dtype, fusable, Real};
use crate::error::Result;

#[inline(always)]
fn sigmoid<T: Real>(g: T) -> T {
    T::ONE / (T::ONE + (-g).exp())
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
        let out = by_dtype(
            self.name(),
            [(g, lg), (u, lu)],
            |[g, u]| forward(g, u),
            |[g, u]| forward(g, u),
        )?;
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
        let out = by_dtype(
            self.name(),
            [(g, lg), (u, lu), (d, ld)],
            |[g, u, d]| backward(g, u, d),
            |[g, u, d]| backward(g, u, d),
        )?;
        let mut dims = vec![2];
        dims.extend_from_slice(lg.dims());
        Ok((out, Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::max_rel;
    use super::*;
    use candle_core::{DType, Device};

    /// SwiGLU as candle ops, the portable path's formula.
    fn reference(g: &Tensor, u: &Tensor, d: &Tensor) -> Result<[Tensor; 3]> {
        let s = (g.neg()?.exp()? + 1.0)?.recip()?;
        let silu = (g * &s)?;
        let out = (&silu * u)?;
        let dup = (d * &silu)?;
        let dgate = ((d * u)? * (&s + (silu * (1.0 - &s)?)?)?)?;
        Ok([out, dgate, dup])
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
    fn bf16_keeps_the_candle_path() -> Result<()> {
        let g = Tensor::zeros((2, 3), DType::BF16, &Device::Cpu)?;
        assert!(swiglu_forward(&g, &g)?.is_none());
        assert!(swiglu_backward(&g, &g, &g)?.is_none());
        Ok(())
    }
}
