//! Rotary position embedding (RoPE), Llama convention, with an absolute position offset.
//!
//! Llama/HF `rotate_half` convention: the head dim is split into halves `(x₁, x₂)` and pair `i` of
//! position `p` is rotated by `p·θ^(−2i/d)`: `y = x·cos + rotate_half(x)·sin` with
//! `rotate_half(x) = (−x₂, x₁)`. A slice covering tokens `a..b` of its sequence uses positions
//! `a..b` (SPEC §4), hence the `offset`. A rotation's inverse is its transpose, so the backward is
//! the forward with `sin` negated.

use candle_core::{DType, Device, Tensor, D};

use crate::check::{compute_dtype_of, dims, positive, positive_finite, same_dtype};
use crate::error::{KernelError, Result};

/// Precomputed cos/sin tables for positions `0..max_positions`.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `[max_positions, head_dim]`, halves repeated; f32 (f64 when `dtype` is f64).
    cos: Tensor,
    /// Same layout as `cos`.
    sin: Tensor,
    head_dim: usize,
    dtype: DType,
}

/// Llama's inverse frequencies `θ^(−2i/d)` for the `d/2` rotated pairs.
pub fn default_frequencies(theta: f64, head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64))
        .collect()
}

fn even_head_dim(op: &'static str, head_dim: usize) -> Result<()> {
    if head_dim == 0 || head_dim % 2 == 1 {
        return Err(KernelError::Param {
            op,
            what: "head_dim",
            value: head_dim.to_string(),
            valid: "even and at least 2 (RoPE rotates pairs)".to_string(),
        });
    }
    Ok(())
}

impl Rope {
    /// Builds the tables for `head_dim` (even) and positions `0..max_positions` with base `theta`
    /// (Llama 2: 10 000, Llama 3: 500 000) for inputs of `dtype` (f32, bf16 or f64) on `device`.
    /// Angles are computed in f64 whatever the dtype.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        theta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Rope> {
        positive_finite("Rope::new", "theta", theta)?;
        even_head_dim("Rope::new", head_dim)?;
        let inv_freq = default_frequencies(theta, head_dim);
        Rope::from_frequencies(&inv_freq, 1.0, max_positions, dtype, device)
    }

    /// Builds the tables from explicit inverse frequencies (one per rotated pair, `head_dim / 2`
    /// of them: what a RoPE scaling type computes from the base) and a factor on `cos` and
    /// `sin` (YaRN's attention factor; 1 otherwise), for positions `0..max_positions`.
    pub fn from_frequencies(
        inv_freq: &[f64],
        attention_factor: f64,
        max_positions: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Rope> {
        const OP: &str = "Rope::from_frequencies";
        positive(OP, "max_positions", max_positions)?;
        positive_finite(OP, "attention_factor", attention_factor)?;
        if let Some(bad) = inv_freq.iter().find(|f| !f.is_finite() || **f <= 0.0) {
            return Err(KernelError::Param {
                op: OP,
                what: "inv_freq",
                value: bad.to_string(),
                valid: "finite and positive".to_string(),
            });
        }
        let head_dim = 2 * inv_freq.len();
        even_head_dim(OP, head_dim)?;
        let ct = compute_dtype_of(OP, "dtype", dtype)?;
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        for p in 0..max_positions {
            let row: Vec<f64> = inv_freq.iter().map(|f| p as f64 * f).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| attention_factor * a.cos()));
                sin.extend(row.iter().map(|a| attention_factor * a.sin()));
            }
        }
        let shape = (max_positions, head_dim);
        Ok(Rope {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(ct)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(ct)?,
            head_dim,
            dtype,
        })
    }

    /// Head dim the tables were built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Number of positions in the tables.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x [b, heads, s, d]` as positions `offset..offset+s`.
    pub fn forward(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        self.rotate("rope.forward", x, offset, false)
    }

    /// Gradient of [`Rope::forward`]: `dy [b, heads, s, d]` at positions `offset..offset+s` → `dx`.
    pub fn backward(&self, dy: &Tensor, offset: usize) -> Result<Tensor> {
        self.rotate("rope.backward", dy, offset, true)
    }

    fn rotate(&self, op: &'static str, x: &Tensor, offset: usize, inverse: bool) -> Result<Tensor> {
        let d = dims(op, "x", x, 4, "[b, heads, s, d]")?;
        same_dtype(op, "x", x, self.dtype)?;
        if d[3] != self.head_dim {
            return Err(KernelError::Shape {
                op,
                detail: format!("`x` {d:?} must have head dim {} (last dim)", self.head_dim),
            });
        }
        let s = d[2];
        let end = offset.saturating_add(s);
        if end > self.max_positions() {
            return Err(KernelError::Positions {
                offset,
                end,
                max_positions: self.max_positions(),
            });
        }
        #[cfg(feature = "cuda")]
        if let Some(y) = crate::cuda::rope(
            x,
            &self.cos,
            &self.sin,
            offset,
            if inverse { -1.0 } else { 1.0 },
        )? {
            return Ok(y);
        }
        let cos = self.cos.narrow(0, offset, s)?;
        let mut sin = self.sin.narrow(0, offset, s)?;
        if let Some(y) = crate::fused_cpu::rope(x, &cos, &sin, inverse)? {
            return Ok(y);
        }
        if inverse {
            sin = sin.neg()?;
        }
        let xc = x.to_dtype(self.cos.dtype())?;
        let half = self.head_dim / 2;
        let x1 = xc.narrow(D::Minus1, 0, half)?;
        let x2 = xc.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let y = (xc.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
        Ok(y.to_dtype(self.dtype)?)
    }
}
