//! RoPE's rotation (forward, or its inverse for the gradient) in one pass (see the module header).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::{by_dtype, fusable, Real};
use crate::error::Result;

/// `x·cos + rotate_half(x)·(±sin)` for `x [b, heads, s, d]` and tables `cos`, `sin [s, d]` of
/// x's dtype; `inverse` negates `sin` (the gradient). `None` where the candle-op path must serve.
pub(crate) fn rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    inverse: bool,
) -> Result<Option<Tensor>> {
    if !fusable(x) || x.dtype() != cos.dtype() {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3_no_bwd(
        &cos.contiguous()?,
        &sin.contiguous()?,
        &Rotate { inverse },
    )?))
}

struct Rotate {
    inverse: bool,
}

/// Rows of `d` values at positions `row mod s`; the first half pairs with the second.
fn rotate_rows<T: Real>(x: &[T], cos: &[T], sin: &[T], d: usize, inverse: bool) -> Vec<T> {
    struct Rows<'a, T>(&'a [T], &'a [T], &'a [T], usize, bool);
    impl<T: Real> pulp::WithSimd for Rows<'_, T> {
        type Output = Vec<T>;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<T> {
            let Rows(x, cos, sin, d, inverse) = self;
            let half = d / 2;
            let mut out = vec![T::default(); x.len()];
            let tables = cos.chunks(d).zip(sin.chunks(d)).cycle();
            for ((o, x), (c, s)) in out.chunks_mut(d).zip(x.chunks(d)).zip(tables) {
                let (x1, x2) = x.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                let (c1, c2) = c.split_at(half);
                let (s1, s2) = s.split_at(half);
                // The candle path's arithmetic, term for term: x·cos + [−x2, x1]·(±sin).
                let sign = |s: T| if inverse { -s } else { s };
                for j in 0..half {
                    o1[j] = x1[j] * c1[j] + (-x2[j]) * sign(s1[j]);
                    o2[j] = x2[j] * c2[j] + x1[j] * sign(s2[j]);
                }
            }
            out
        }
    }
    pulp::Arch::new().dispatch(Rows(x, cos, sin, d, inverse))
}

impl CustomOp3 for Rotate {
    fn name(&self) -> &'static str {
        "rope_cpu"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        cos: &CpuStorage,
        lc: &Layout,
        sin: &CpuStorage,
        ls: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let xd = lx.dims();
        let (s, d) = (xd[xd.len().saturating_sub(2)], *xd.last().unwrap_or(&0));
        if xd.len() != 4 || lc.dims() != [s, d] || ls.dims() != [s, d] || d % 2 != 0 {
            candle_core::bail!(
                "{op}: x {xd:?} must be [b, heads, s, d] with even d, cos {:?} and sin {:?} [s, d]",
                lc.dims(),
                ls.dims()
            );
        }
        let inverse = self.inverse;
        let out = by_dtype(
            op,
            [(x, lx), (cos, lc), (sin, ls)],
            |[x, c, s]| rotate_rows(x, c, s, d, inverse),
            |[x, c, s]| rotate_rows(x, c, s, d, inverse),
        )?;
        Ok((out, lx.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::max_rel;
    use super::*;
    use candle_core::{DType, Device, D};

    fn reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.dims()[3] / 2;
        let x1 = x.narrow(D::Minus1, 0, half).unwrap();
        let x2 = x.narrow(D::Minus1, half, half).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        (x.broadcast_mul(cos).unwrap() + rotated.broadcast_mul(sin).unwrap()).unwrap()
    }

    #[test]
    fn rotation_and_inverse_match_the_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f64, 1.0, (2, 3, 5, 8), &dev)?;
        let cos = Tensor::randn(0f64, 1.0, (5, 8), &dev)?;
        let sin = Tensor::randn(0f64, 1.0, (5, 8), &dev)?;
        for inverse in [false, true] {
            let s = if inverse { sin.neg()? } else { sin.clone() };
            let want = reference(&x, &cos, &s);
            let got = rope(&x, &cos, &sin, inverse)?.unwrap();
            assert_eq!(max_rel(&got, &want), 0.0, "f64 is the same arithmetic");
            let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let got = rope(&f(&x), &f(&cos), &f(&sin), inverse)?.unwrap();
            assert!(max_rel(&got, &want) < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn tables_of_another_dtype_or_shape_are_refused_or_left_to_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 1, 4, 6), DType::F32, &dev)?;
        let t64 = Tensor::zeros((4, 6), DType::F64, &dev)?;
        assert!(rope(&x, &t64, &t64, false)?.is_none());
        let short = Tensor::zeros((3, 6), DType::F32, &dev)?;
        let err = rope(&x, &short, &short, false).unwrap_err().to_string();
        assert!(err.contains("[b, heads, s, d]"), "{err}");
        Ok(())
    }
}
