//! `exp(s − m)` with `m` broadcast along the last dimension: the softmax numerator of every
//! attention tile, forward and backward, in one pass on CPU.
//!
//! Done as candle ops it is a broadcast subtraction and an `exp`, two passes, two allocations, and
//! libm's scalar `expf` per score (10 % of a 1024-token training step on CPU, measured with
//! `perf`). Here one pass writes the result, and f32 uses a polynomial `exp` that the compiler
//! vectorises at the widest SIMD the CPU has (dispatched at run time by `pulp`). f64 keeps the
//! standard library's `exp`, so the f64 oracle tests see the same numbers as before. Other devices
//! take the candle-op path.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::error::Result;

/// `exp(s − m)`: `s [.., n]`, `m [.., 1]` of the same leading shape and dtype.
pub(crate) fn exp_shifted(s: &Tensor, m: &Tensor) -> Result<Tensor> {
    if !s.device().is_cpu() {
        return Ok(s.broadcast_sub(m)?.exp()?);
    }
    Ok(s.contiguous()?
        .apply_op2_no_bwd(&m.contiguous()?, &ExpShifted)?)
}

struct ExpShifted;

impl CustomOp2 for ExpShifted {
    fn name(&self) -> &'static str {
        "exp_shifted"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        ls: &Layout,
        m: &CpuStorage,
        lm: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cols = *ls.dims().last().unwrap_or(&1);
        let rows = ls.shape().elem_count() / cols.max(1);
        if lm.shape().elem_count() != rows || lm.dims().last() != Some(&1) {
            candle_core::bail!(
                "exp_shifted: shift {:?} must hold one value per row of the scores {:?}",
                lm.dims(),
                ls.dims()
            );
        }
        let (Some((s0, s1)), Some((m0, m1))) = (ls.contiguous_offsets(), lm.contiguous_offsets())
        else {
            candle_core::bail!("exp_shifted: inputs must be contiguous (the caller makes them so)");
        };
        let out = match (s, m) {
            (CpuStorage::F32(s), CpuStorage::F32(m)) => {
                CpuStorage::F32(exp_rows_f32(&s[s0..s1], &m[m0..m1], cols))
            }
            (CpuStorage::F64(s), CpuStorage::F64(m)) => {
                let (s, m) = (&s[s0..s1], &m[m0..m1]);
                CpuStorage::F64(rows_map(s, m, cols, |x, shift| (x - shift).exp()))
            }
            _ => candle_core::bail!(
                "exp_shifted: scores and shift must both be f32 or both f64 (got {:?}, {:?})",
                s.dtype(),
                m.dtype()
            ),
        };
        Ok((out, ls.shape().clone()))
    }
}

#[inline(always)]
fn rows_map<T: Copy + Default>(s: &[T], m: &[T], cols: usize, f: impl Fn(T, T) -> T) -> Vec<T> {
    let mut out = vec![T::default(); s.len()];
    for ((o, x), &shift) in out.chunks_mut(cols).zip(s.chunks(cols)).zip(m) {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = f(x, shift);
        }
    }
    out
}

/// The f32 rows, compiled for the best instruction set this CPU has.
fn exp_rows_f32(s: &[f32], m: &[f32], cols: usize) -> Vec<f32> {
    // A struct, not a closure: `with_simd` is where pulp enables the target features, and only
    // what is inlined into it (hence `inline(always)` down to the loop) is compiled with them.
    struct Rows<'a>(&'a [f32], &'a [f32], usize);
    impl pulp::WithSimd for Rows<'_> {
        type Output = Vec<f32>;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<f32> {
            rows_map(self.0, self.1, self.2, |x, shift| exp_f32(x - shift))
        }
    }
    pulp::Arch::new().dispatch(Rows(s, m, cols))
}

/// `eˣ` for f32 within 2 ulp (Cody–Waite reduction, Cephes' degree-6 polynomial), branch-free so
/// a loop of it vectorises. Below `ln(2⁻¹²⁶)` it returns 0 (masked scores are −∞); from 127.5·ln 2
/// (88.37) on it returns +∞, a little early (`expf` overflows at 88.72): the scale 2ⁿ is built
/// from exponent bits, which hold n ≤ 127. Softmax arguments are ≤ 0.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer without SSE4.1's round instruction.
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.336_55; // ln(2⁻¹²⁶): below it the result would be subnormal
    const HIGH: f32 = 88.376_26; // 127.5 · ln 2: n rounds to at most 127
    let xc = x.clamp(LOW, HIGH);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2ⁿ from the rounded integer's bits: the low mantissa bits of `t` hold n + 2²², biased.
    let bits = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let two_n = f32::from_bits(((bits + 127) << 23) as u32);
    let y = er * two_n;
    let y = if x < LOW { 0.0 } else { y };
    if x > HIGH {
        f32::INFINITY
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i64 - b.to_bits() as i64).abs()
    }

    #[test]
    fn exp_f32_is_within_two_ulp_of_std_over_its_range() {
        let mut worst = (0, 0.0f32);
        let mut x = -87.3f32;
        while x < 88.37 {
            let e = ulps(exp_f32(x), x.exp());
            if e > worst.0 {
                worst = (e, x);
            }
            x += 0.000_37;
        }
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn exp_f32_ends_are_zero_and_infinity() {
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1e4), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn matches_the_candle_ops_in_f32_and_f64() -> Result<()> {
        let dev = Device::Cpu;
        let s = Tensor::randn(0f64, 3.0, (2, 3, 5, 7), &dev)?;
        let m = s.max_keepdim(3)?;
        let want = s.broadcast_sub(&m)?.exp()?;
        // f64: the standard library's exp, bit for bit.
        let got = exp_shifted(&s, &m)?;
        let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert_eq!(diff, 0.0);
        let (s32, m32) = (
            s.to_dtype(candle_core::DType::F32)?,
            m.to_dtype(candle_core::DType::F32)?,
        );
        let got = exp_shifted(&s32, &m32)?.to_dtype(candle_core::DType::F64)?;
        // f32's own bound, element by element: `s − m` rounded to f32 moves `exp` by up to
        // `|s − m|·2⁻²⁴` relative, and the polynomial adds at most 2 ulp (the inputs are random,
        // so a fixed bound fails whenever a large `|s − m|` is drawn).
        let rel = ((got - &want)? / &want)?.abs()?;
        let bound = ((s.broadcast_sub(&m)?.abs()? + 4.0)? * f64::from(f32::EPSILON))?;
        let over = rel
            .gt(&bound)?
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?;
        assert_eq!(
            over.to_scalar::<f64>()?,
            0.0,
            "f32 errors {rel} over {bound}"
        );
        // A non-contiguous view gives the same answer as its copy.
        let st = s32.transpose(2, 3)?;
        let mt = st.max_keepdim(3)?;
        let a = exp_shifted(&st, &mt)?;
        let b = exp_shifted(&st.contiguous()?, &mt)?;
        assert_eq!((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn a_shift_of_the_wrong_shape_is_named() {
        let s = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let m = Tensor::zeros((4, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = exp_shifted(&s, &m).unwrap_err().to_string();
        assert!(err.contains("one value per row"), "{err}");
    }
}
