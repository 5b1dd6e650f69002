//! Attention of a query slice against a KV prefix (SPEC §4), forward pass, blockwise.
//!
//! Layout `[b, heads, s, d]`. `q` holds the slice's `sq` queries, `k`/`v` the `sk ≥ sq` keys of all
//! earlier slices plus the slice's own. The causal mask is aligned bottom-right: query `i` sees keys
//! `j ≤ sk − sq + i`, so a slice starting at token `sk − sq` of its sequence sees exactly what it
//! would see in full-sequence attention. Grouped-query attention: query head `hq` reads key/value
//! head `hq / (h / hkv)` (HF `repeat_kv` order).
//!
//! The pass is flash-style: queries and keys are cut into blocks of `block_size`, scores exist one
//! `[block, block]` tile (times the GQA group) at a time, and an online softmax carries the row max,
//! row sum and output accumulator across key blocks. Tiles entirely above the diagonal are skipped.
//! The log-sum-exp of every query row is returned: the backward needs it, and it is what
//! [`crate::merge_attention`] combines.

use candle_core::{DType, Tensor, D};

use crate::check::{compute_dtype, dims, positive, positive_finite, same_dtype};
use crate::error::{KernelError, Result};

/// Which keys a query may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Causal, aligned bottom-right: query `i` of `sq` sees keys `≤ sk − sq + i`.
    Causal,
    /// Every query sees every key (SlimPipe's exchanged prefix lies wholly before the queries).
    None,
}

/// Options shared by [`attention_forward`] and [`crate::attention_backward`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionOptions {
    /// Score scale, usually `1/√d`.
    pub scale: f64,
    /// Mask kind.
    pub mask: Mask,
    /// Tile edge in tokens, for queries and keys alike; memory per tile is `O(block² · h/hkv)`.
    pub block_size: usize,
}

impl AttentionOptions {
    /// Default tile edge: large enough for matmul efficiency, small enough to stay in cache.
    pub const DEFAULT_BLOCK: usize = 128;

    /// Causal attention with scale `1/√head_dim` and the default block.
    pub fn causal(head_dim: usize) -> Self {
        AttentionOptions {
            scale: 1.0 / (head_dim.max(1) as f64).sqrt(),
            mask: Mask::Causal,
            block_size: Self::DEFAULT_BLOCK,
        }
    }

    /// Unmasked attention with scale `1/√head_dim` and the default block.
    pub fn full(head_dim: usize) -> Self {
        AttentionOptions {
            mask: Mask::None,
            ..Self::causal(head_dim)
        }
    }
}

/// Checked sizes of one attention call, and the tiling helpers every pass uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub b: usize,
    pub h: usize,
    pub hkv: usize,
    /// Query heads per key/value head.
    pub g: usize,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    /// The dtype of the inputs and of `out`, `dq`, `dk`, `dv`.
    pub dtype: DType,
    /// The dtype the pass computes in (and of `lse`).
    pub ct: DType,
    pub opts: AttentionOptions,
}

/// Checks `q`, `k`, `v` and the options; every error names the shapes.
pub(crate) fn geometry(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<Geometry> {
    let ct = compute_dtype(op, "q", q)?;
    same_dtype(op, "k", k, q.dtype())?;
    same_dtype(op, "v", v, q.dtype())?;
    let qd = dims(op, "q", q, 4, "[b, heads, s, d]")?;
    let kd = dims(op, "k", k, 4, "[b, kv_heads, s, d]")?;
    dims(op, "v", v, 4, "[b, kv_heads, s, d]")?;
    if v.dims() != kd {
        let detail = format!("`k` {kd:?} and `v` {:?} must have the same shape", v.dims());
        return Err(KernelError::Shape { op, detail });
    }
    if qd[0] != kd[0] || qd[3] != kd[3] {
        let detail =
            format!("`q` {qd:?} and `k` {kd:?} must agree in batch (dim 0) and head dim (dim 3)");
        return Err(KernelError::Shape { op, detail });
    }
    let (h, hkv) = (qd[1], kd[1]);
    if hkv == 0 || h == 0 || h % hkv != 0 {
        return Err(KernelError::Heads {
            op,
            q_heads: h,
            kv_heads: hkv,
            q_shape: qd.to_vec(),
            kv_shape: kd.to_vec(),
        });
    }
    let (sq, sk) = (qd[2], kd[2]);
    positive(op, "query tokens (q dim 2)", sq)?;
    positive(op, "key tokens (k dim 2)", sk)?;
    positive(op, "head dim (q dim 3)", qd[3])?;
    positive(op, "block_size", opts.block_size)?;
    positive_finite(op, "scale", opts.scale)?;
    if opts.mask == Mask::Causal && sk < sq {
        return Err(KernelError::PrefixShorterThanSlice {
            op,
            q_len: sq,
            kv_len: sk,
            q_shape: qd.to_vec(),
            kv_shape: kd.to_vec(),
        });
    }
    Ok(Geometry {
        b: qd[0],
        h,
        hkv,
        g: h / hkv,
        sq,
        sk,
        d: qd[3],
        dtype: q.dtype(),
        ct,
        opts: *opts,
    })
}

impl Geometry {
    /// `(start, len)` of the tiles of `n` tokens.
    pub fn blocks(&self, n: usize) -> Vec<(usize, usize)> {
        let bs = self.opts.block_size;
        (0..n.div_ceil(bs))
            .map(|i| (i * bs, bs.min(n - i * bs)))
            .collect()
    }

    /// Keys `0..end` are the ones any query of the block `i0..i0+lq` may see.
    pub fn visible_end(&self, i0: usize, lq: usize) -> usize {
        match self.opts.mask {
            Mask::Causal => (self.sk - self.sq + i0 + lq).min(self.sk),
            Mask::None => self.sk,
        }
    }

    /// Cuts query rows `i0..i0+lq` of `t [b, h, sq, x]` (contiguous) into the grouped layout
    /// `[b, hkv, g·lq, x]`, where one matmul against a key block serves the whole GQA group.
    pub fn group_block(&self, t: &Tensor, i0: usize, lq: usize) -> Result<Tensor> {
        let x = t.dims()[3];
        Ok(t.reshape((self.b, self.hkv, self.g, self.sq, x))?
            .narrow(3, i0, lq)?
            .contiguous()?
            .reshape((self.b, self.hkv, self.g * lq, x))?)
    }

    /// Inverse of [`Geometry::group_block`] over all query blocks, in order: `[b, h, sq, x]`.
    pub fn ungroup(&self, blocks: &[Tensor]) -> Result<Tensor> {
        let parts = blocks
            .iter()
            .map(|t| {
                let (rows, x) = (t.dims()[2], t.dims()[3]);
                t.reshape((self.b, self.hkv, self.g, rows / self.g, x))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let x = blocks.first().map_or(1, |t| t.dims()[3]);
        Ok(Tensor::cat(&parts, 3)?.reshape((self.b, self.h, self.sq, x))?)
    }

    /// Adds the causal mask of tile (queries `i0..+lq`, keys `j0..+lk`) to grouped scores
    /// `[b, hkv, g·lq, lk]`: `−∞` where key `j > sk − sq + i`. Tiles wholly visible pass through.
    pub fn mask_tile(
        &self,
        s: Tensor,
        i0: usize,
        lq: usize,
        j0: usize,
        lk: usize,
    ) -> Result<Tensor> {
        if self.opts.mask == Mask::None || j0 + lk <= self.sk - self.sq + i0 + 1 {
            return Ok(s);
        }
        let diag = self.sk - self.sq;
        let bias: Vec<f32> = (0..lq)
            .flat_map(|i| {
                (0..lk).map(move |j| {
                    if j0 + j <= diag + i0 + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let bias = Tensor::from_vec(bias, (lq, lk), s.device())?.to_dtype(self.ct)?;
        Ok(s.reshape((self.b, self.hkv, self.g, lq, lk))?
            .broadcast_add(&bias)?
            .reshape((self.b, self.hkv, self.g * lq, lk))?)
    }
}

/// Attention forward: `q [b, h, sq, d]`, `k`/`v [b, hkv, sk, d]` → (`out [b, h, sq, d]` in q's
/// dtype, `lse [b, h, sq]` in f32, or f64 for f64 inputs).
pub fn attention_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Tensor)> {
    let geo = geometry("attention_forward", q, k, v, opts)?;
    #[cfg(feature = "cuda")]
    if let Some(out) = crate::cuda::attention_forward(q, k, v, &geo)? {
        return Ok(out);
    }
    let qs = (q.to_dtype(geo.ct)?.contiguous()? * opts.scale)?;
    let (kc, vc) = (
        k.to_dtype(geo.ct)?.contiguous()?,
        v.to_dtype(geo.ct)?.contiguous()?,
    );
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for (i0, lq) in geo.blocks(geo.sq) {
        let qb = geo.group_block(&qs, i0, lq)?;
        let (o, lse) = forward_query_block(&geo, &qb, &kc, &vc, i0, lq)?;
        outs.push(o);
        lses.push(lse);
    }
    let out = geo.ungroup(&outs)?.to_dtype(geo.dtype)?;
    let lse = geo.ungroup(&lses)?.squeeze(3)?;
    Ok((out, lse))
}

/// Online softmax of one grouped query block over its visible key blocks. Key block 0 is visible
/// to every query (`sk ≥ sq` under the causal mask), so the running max is finite after it and
/// `exp(m_old − m_new)` never sees `−∞ − (−∞)`.
fn forward_query_block(
    geo: &Geometry,
    qb: &Tensor,
    k: &Tensor,
    v: &Tensor,
    i0: usize,
    lq: usize,
) -> Result<(Tensor, Tensor)> {
    let mut state: Option<(Tensor, Tensor, Tensor)> = None; // (row max, row sum, accumulator)
    for (j0, lk) in geo.blocks(geo.visible_end(i0, lq)) {
        let kb = k.narrow(2, j0, lk)?;
        let s = qb.matmul(&kb.t()?)?;
        let s = geo.mask_tile(s, i0, lq, j0, lk)?;
        let m_blk = s.max_keepdim(D::Minus1)?;
        let m_new = match &state {
            Some((m, _, _)) => m.maximum(&m_blk)?,
            None => m_blk,
        };
        let p = crate::exp_shifted::exp_shifted(&s, &m_new)?;
        let row_sum = p.sum_keepdim(D::Minus1)?;
        let pv = p.matmul(&v.narrow(2, j0, lk)?)?;
        state = Some(match state {
            None => (m_new, row_sum, pv),
            Some((m, l, acc)) => {
                let alpha = (m - &m_new)?.exp()?;
                let l = ((l * &alpha)? + row_sum)?;
                let acc = (acc.broadcast_mul(&alpha)? + pv)?;
                (m_new, l, acc)
            }
        });
    }
    let (m, l, acc) = state.ok_or_else(|| KernelError::Shape {
        op: "attention_forward",
        detail: "no visible key block (unreachable after the shape checks)".to_string(),
    })?;
    let out = acc.broadcast_div(&l)?;
    let lse = (m + l.log()?)?;
    Ok((out, lse))
}
