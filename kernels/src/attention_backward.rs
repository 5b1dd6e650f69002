//! Attention backward, blockwise (FlashAttention-2 order), from the forward's `out` and `lse`.
//!
//! Per tile, with `qₛ = q·scale`: `P = exp(qₛKᵀ − lse)` (recomputed, never stored whole),
//! `dV += Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − δ)` with `δ = rowsum(dO ⊙ O)`,
//! `dQ += dS·K·scale`, `dK += dSᵀ·qₛ`. Under GQA the grouped layout makes the `Pᵀ·dO` and `dSᵀ·qₛ`
//! matmuls sum over the query heads that share a key head.
//!
//! Because `P` uses the *given* `lse` and `δ` uses the *given* `out`, the same function gives the
//! gradients of a partial key range when called with the merged `out`/`lse` of a split attention:
//! that is SlimPipe's exchange backward.

use candle_core::{Tensor, D};

use crate::attention::{geometry, AttentionOptions, Geometry};
use crate::check::same_dtype;
use crate::error::{KernelError, Result};

/// Attention backward: returns (`dq [b, h, sq, d]`, `dk`, `dv [b, hkv, sk, d]`) in q's dtype.
///
/// `out` and `lse` are what [`crate::attention_forward`] returned (or their log-sum-exp merge
/// with other key ranges); `d_out` has the shape of `q`.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (geo, dq, dk, dv) = backward_compute(q, k, v, out, lse, d_out, opts)?;
    Ok((
        dq.to_dtype(geo.dtype)?,
        dk.to_dtype(geo.dtype)?,
        dv.to_dtype(geo.dtype)?,
    ))
}

/// [`attention_backward`] with the gradients in the compute dtype (f32, or f64): the part a
/// SlimPipe exchange partner returns to the rank whose prefix it attended to, which adds it to
/// its own without rounding to bf16 first.
pub fn attention_backward_unrounded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_, dq, dk, dv) = backward_compute(q, k, v, out, lse, d_out, opts)?;
    Ok((dq, dk, dv))
}

/// [`attention_backward`] with gradients left in the compute dtype (f32 or f64), so that callers
/// accumulating prefix gradients over many slices do not round to bf16 at every step.
pub(crate) fn backward_compute(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Geometry, Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let geo = geometry(OP, q, k, v, opts)?;
    check_saved(&geo, q, out, lse, d_out)?;
    #[cfg(feature = "cuda")]
    if let Some((dq, dk, dv)) = crate::cuda::attention_backward(q, k, v, out, lse, d_out, &geo)? {
        return Ok((geo, dq, dk, dv));
    }
    let ct = geo.ct;
    let qs = (q.to_dtype(ct)?.contiguous()? * opts.scale)?;
    let (kc, vc) = (k.to_dtype(ct)?.contiguous()?, v.to_dtype(ct)?.contiguous()?);
    let doc = d_out.to_dtype(ct)?.contiguous()?;
    let delta = (&doc * out.to_dtype(ct)?)?.sum_keepdim(D::Minus1)?;
    let lse4 = lse.to_dtype(ct)?.contiguous()?.unsqueeze(3)?;
    // Grouped copies of the per-query tensors, made once and reused by every key block.
    let mut rows = Vec::new();
    for (i0, lq) in geo.blocks(geo.sq) {
        rows.push(QueryRows {
            i0,
            lq,
            qs: geo.group_block(&qs, i0, lq)?,
            d_out: geo.group_block(&doc, i0, lq)?,
            lse: geo.group_block(&lse4, i0, lq)?,
            delta: geo.group_block(&delta, i0, lq)?,
            dq: None,
        });
    }
    let (mut dks, mut dvs) = (Vec::new(), Vec::new());
    for (j0, lk) in geo.blocks(geo.sk) {
        let (dk, dv) = key_block(
            &geo,
            &mut rows,
            &kc.narrow(2, j0, lk)?,
            &vc.narrow(2, j0, lk)?,
            j0,
        )?;
        dks.push(dk);
        dvs.push(dv);
    }
    let dq_blocks = rows
        .into_iter()
        .map(|r| match r.dq {
            Some(dq) => Ok(dq),
            None => Tensor::zeros((geo.b, geo.hkv, geo.g * r.lq, geo.d), ct, q.device()),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let dq = (geo.ungroup(&dq_blocks)? * opts.scale)?;
    Ok((geo, dq, Tensor::cat(&dks, 2)?, Tensor::cat(&dvs, 2)?))
}

/// One query block in the grouped layout `[b, hkv, g·lq, ·]`, with its running `dq`.
struct QueryRows {
    i0: usize,
    lq: usize,
    qs: Tensor,
    d_out: Tensor,
    lse: Tensor,
    delta: Tensor,
    dq: Option<Tensor>,
}

/// Gradients of one key block: its `dk`, `dv` summed over the query blocks that see it, and each
/// such query block's `dq` contribution added in place.
fn key_block(
    geo: &Geometry,
    rows: &mut [QueryRows],
    kb: &Tensor,
    vb: &Tensor,
    j0: usize,
) -> Result<(Tensor, Tensor)> {
    let lk = kb.dims()[2];
    let (mut dk, mut dv): (Option<Tensor>, Option<Tensor>) = (None, None);
    for r in rows.iter_mut() {
        if j0 >= geo.visible_end(r.i0, r.lq) {
            continue; // the whole tile lies above the diagonal
        }
        let s = geo.mask_tile(r.qs.matmul(&kb.t()?)?, r.i0, r.lq, j0, lk)?;
        let p = crate::exp_shifted::exp_shifted(&s, &r.lse)?;
        let dv_part = p.t()?.matmul(&r.d_out)?;
        let dp = r.d_out.matmul(&vb.t()?)?;
        let ds = match crate::fused_cpu::softmax_grad(&p, &dp, &r.delta)? {
            Some(ds) => ds,
            None => (p * dp.broadcast_sub(&r.delta)?)?,
        };
        let dq_part = ds.matmul(kb)?;
        let dk_part = ds.t()?.matmul(&r.qs)?;
        r.dq = Some(add(r.dq.take(), dq_part)?);
        dk = Some(add(dk, dk_part)?);
        dv = Some(add(dv, dv_part)?);
    }
    match (dk, dv) {
        (Some(dk), Some(dv)) => Ok((dk, dv)),
        // Only reachable for key blocks no query sees, which bottom-right causality rules out;
        // zeros keep the function total all the same.
        _ => {
            let z = Tensor::zeros((geo.b, geo.hkv, lk, geo.d), geo.ct, kb.device())?;
            Ok((z.clone(), z))
        }
    }
}

fn add(acc: Option<Tensor>, part: Tensor) -> Result<Tensor> {
    Ok(match acc {
        Some(a) => (a + part)?,
        None => part,
    })
}

/// `out`, `d_out` must have q's shape and dtype; `lse` must be `[b, h, sq]`.
fn check_saved(
    geo: &Geometry,
    q: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    d_out: &Tensor,
) -> Result<()> {
    const OP: &str = "attention_backward";
    same_dtype(OP, "out", out, geo.dtype)?;
    same_dtype(OP, "d_out", d_out, geo.dtype)?;
    for (name, t) in [("out", out), ("d_out", d_out)] {
        if t.dims() != q.dims() {
            let detail = format!(
                "`{name}` {:?} must have the shape of `q` {:?}",
                t.dims(),
                q.dims()
            );
            return Err(KernelError::Shape { op: OP, detail });
        }
    }
    if lse.dims() != [geo.b, geo.h, geo.sq] {
        let detail = format!(
            "`lse` {:?} must be [b, h, sq] = {:?} for `q` {:?}",
            lse.dims(),
            [geo.b, geo.h, geo.sq],
            q.dims()
        );
        return Err(KernelError::Shape { op: OP, detail });
    }
    crate::check::compute_dtype(OP, "lse", lse)?;
    Ok(())
}
