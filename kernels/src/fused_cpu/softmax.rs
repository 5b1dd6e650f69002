//! Attention's score gradient `dS = P ⊙ (dP − δ)` in one pass per tile (see the module header).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::{by_dtype, fusable, Real};
use crate::error::Result;

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
        let out = by_dtype(
            op,
            [(p, lp), (dp, ldp), (delta, ldelta)],
            |[p, dp, d]| softmax_grad_rows(p, dp, d, cols),
            |[p, dp, d]| softmax_grad_rows(p, dp, d, cols),
        )?;
        Ok((out, lp.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::max_rel;
    use super::*;
    use candle_core::{DType, Device};

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
}
