//! Cross-entropy fused with the LM head, in vocabulary blocks.
//!
//! `loss = Σᵢ wᵢ·(lseᵢ − zᵢ,tᵢ) / normaliser` with logits `z = hidden · lm_headᵀ`, targets `t`,
//! token weights `w` (the mask, 1 when absent) and a caller-given normaliser: a slice's loss is
//! divided by its whole micro-batch's token count, so slice losses add up to the unsliced loss.
//! Logits exist one `[n, vocab_block]` block at a time: the forward keeps an online log-sum-exp per
//! row, the backward recomputes each block's softmax from the saved `lse`. The target logit is a
//! row-wise dot with the gathered target rows of the LM head, so no block needs to know where the
//! targets are. Gradients (`g = w/normaliser` per row, `P = softmax(z)`):
//! `d_hidden = (g⊙P)·W − g⊙W[t]`, `d_lm_head = (g⊙P)ᵀ·hidden − scatter_t(g⊙hidden)`.

use candle_core::{DType, Tensor, D};

use crate::check::{compute_dtype, dims, positive, positive_finite, same_dtype};
use crate::error::{KernelError, Result};

/// What the cross-entropy forward keeps for its backward.
#[derive(Debug, Clone)]
pub struct CrossEntropySaved {
    /// Log-sum-exp of each row's logits, `[n]`, f32 (f64 for f64 inputs).
    pub lse: Tensor,
}

/// Checked inputs: compute dtype, per-row weights `w/normaliser` `[n, 1]`, gather-safe targets.
struct Prepared {
    ct: DType,
    n: usize,
    vocab: usize,
    /// `[n, 1]` in `ct`.
    row_scale: Tensor,
    /// `[n]` u32; masked-out targets outside the vocabulary replaced by 0 (their weight is 0).
    targets: Tensor,
}

fn prepare(
    op: &'static str,
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
    normaliser: f64,
    vocab_block: usize,
) -> Result<Prepared> {
    let ct = compute_dtype(op, "hidden", hidden)?;
    same_dtype(op, "lm_head", lm_head, hidden.dtype())?;
    let hd = dims(op, "hidden", hidden, 2, "[n, H]")?;
    let wd = dims(op, "lm_head", lm_head, 2, "[V, H]")?;
    positive(op, "vocab_block", vocab_block)?;
    positive_finite(op, "normaliser", normaliser)?;
    positive(op, "vocabulary size (lm_head dim 0)", wd[0])?;
    let n = hd[0];
    let bad = |what: &str, t: &Tensor| KernelError::Shape {
        op,
        detail: format!("`{what}` {:?} must be [{n}] for `hidden` {hd:?}", t.dims()),
    };
    if hd[1] != wd[1] {
        let detail = format!("`hidden` {hd:?} and `lm_head` {wd:?} must agree in H (dim 1)");
        return Err(KernelError::Shape { op, detail });
    }
    if targets.dims() != [n] {
        return Err(bad("targets", targets));
    }
    same_dtype(op, "targets", targets, DType::U32)?;
    let weights = match mask {
        Some(m) if m.dims() != [n] => return Err(bad("mask", m)),
        Some(m) => m.to_dtype(DType::F64)?.to_vec1::<f64>()?,
        None => vec![1.0; n],
    };
    let mut ids = targets.to_vec1::<u32>()?;
    for (token, (t, w)) in ids.iter_mut().zip(&weights).enumerate() {
        if (*t as usize) < wd[0] {
            continue;
        }
        if *w != 0.0 {
            return Err(KernelError::Target {
                token,
                target: *t,
                vocab: wd[0],
            });
        }
        *t = 0;
    }
    let scale: Vec<f64> = weights.iter().map(|w| w / normaliser).collect();
    let device = hidden.device();
    Ok(Prepared {
        ct,
        n,
        vocab: wd[0],
        row_scale: Tensor::from_vec(scale, (n, 1), device)?.to_dtype(ct)?,
        targets: Tensor::from_vec(ids, n, device)?,
    })
}

/// Vocabulary blocks `(start, len)`.
pub(crate) fn vocab_blocks(vocab: usize, block: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..vocab.div_ceil(block)).map(move |i| (i * block, block.min(vocab - i * block)))
}

/// Forward: `hidden [n, H]`, `lm_head [V, H]`, `targets [n]` u32, optional `mask [n]` (any dtype;
/// each token's loss is multiplied by it, so 0/1 masks out tokens, and masked-out tokens may hold
/// any target), `normaliser > 0`. Returns the loss as f64 and what the backward needs.
pub fn cross_entropy_forward(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
    normaliser: f64,
    vocab_block: usize,
) -> Result<(f64, CrossEntropySaved)> {
    let p = prepare(
        "cross_entropy_forward",
        hidden,
        lm_head,
        targets,
        mask,
        normaliser,
        vocab_block,
    )?;
    let h = hidden.to_dtype(p.ct)?.contiguous()?;
    #[cfg(feature = "cuda")]
    let on_device = crate::cuda::lse_update(&h, lm_head, p.vocab, vocab_block)?;
    #[cfg(not(feature = "cuda"))]
    let on_device: Option<Tensor> = None;
    let lse = match on_device {
        Some(lse) => lse,
        None => lse_blockwise(&h, lm_head, p.ct, vocab_block)?,
    }; // [n, 1]
    let w_t = lm_head.index_select(&p.targets, 0)?.to_dtype(p.ct)?;
    let z_t = (&h * w_t)?.sum_keepdim(D::Minus1)?;
    let loss = ((&lse - z_t)? * &p.row_scale)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?;
    debug_assert_eq!(lse.dims(), [p.n, 1]);
    Ok((
        loss,
        CrossEntropySaved {
            lse: lse.squeeze(1)?,
        },
    ))
}

/// `lse [n, 1]` of the logits `h · lm_headᵀ` (`h` already in the compute dtype `ct`) with candle
/// ops, one vocabulary block at a time.
pub(crate) fn lse_blockwise(
    h: &Tensor,
    lm_head: &Tensor,
    ct: DType,
    vocab_block: usize,
) -> Result<Tensor> {
    let mut state: Option<(Tensor, Tensor)> = None; // (row max, row sum of exp(z − max))
    for (v0, lv) in vocab_blocks(lm_head.dim(0)?, vocab_block) {
        let z = h.matmul(&lm_head.narrow(0, v0, lv)?.to_dtype(ct)?.t()?)?;
        let m_blk = z.max_keepdim(D::Minus1)?;
        let m_new = match &state {
            Some((m, _)) => m.maximum(&m_blk)?,
            None => m_blk,
        };
        let sum = z.broadcast_sub(&m_new)?.exp()?.sum_keepdim(D::Minus1)?;
        state = Some(match state {
            None => (m_new, sum),
            Some((m, l)) => {
                let l = ((l * (m - &m_new)?.exp()?)? + sum)?;
                (m_new, l)
            }
        });
    }
    let (m, l) = state.ok_or_else(|| KernelError::Shape {
        op: "cross_entropy_forward",
        detail: "empty vocabulary (unreachable after the shape checks)".to_string(),
    })?;
    Ok((m + l.log()?)?)
}

/// `row_scale ⊙ softmax` of one logit block `z [n, vb]` given the rows' `lse [n, 1]`.
pub(crate) fn scaled_softmax(z: &Tensor, lse: &Tensor, row_scale: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(g) = crate::cuda::softmax_grad(z, lse, row_scale)? {
        return Ok(g);
    }
    Ok(z.broadcast_sub(lse)?.exp()?.broadcast_mul(row_scale)?)
}

/// Which gradients a backward pass produces (the zero-bubble B/W split asks for one at a time).
#[derive(Clone, Copy)]
struct Want {
    input: bool,
    weight: bool,
}

/// Backward of [`cross_entropy_forward`] (same arguments plus its `saved`): returns
/// (`d_hidden [n, H]`, `d_lm_head [V, H]`) in hidden's dtype, in one pass over the vocabulary.
pub fn cross_entropy_backward(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
    saved: &CrossEntropySaved,
    normaliser: f64,
    vocab_block: usize,
) -> Result<(Tensor, Tensor)> {
    let want = Want {
        input: true,
        weight: true,
    };
    let (dh, dw) = backward(
        hidden,
        lm_head,
        targets,
        mask,
        saved,
        normaliser,
        vocab_block,
        want,
    )?;
    Ok((wanted(dh)?, wanted(dw)?))
}

/// Input half of [`cross_entropy_backward`] (B of the B/W split): `d_hidden [n, H]` only.
pub fn cross_entropy_backward_input(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
    saved: &CrossEntropySaved,
    normaliser: f64,
    vocab_block: usize,
) -> Result<Tensor> {
    let want = Want {
        input: true,
        weight: false,
    };
    let (dh, _) = backward(
        hidden,
        lm_head,
        targets,
        mask,
        saved,
        normaliser,
        vocab_block,
        want,
    )?;
    wanted(dh)
}

/// Weight half of [`cross_entropy_backward`] (W of the B/W split): `d_lm_head [V, H]` only.
/// Recomputes the logit blocks, which is the price of deferring it.
pub fn cross_entropy_backward_weight(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
    saved: &CrossEntropySaved,
    normaliser: f64,
    vocab_block: usize,
) -> Result<Tensor> {
    let want = Want {
        input: false,
        weight: true,
    };
    let (_, dw) = backward(
        hidden,
        lm_head,
        targets,
        mask,
        saved,
        normaliser,
        vocab_block,
        want,
    )?;
    wanted(dw)
}

#[allow(clippy::too_many_arguments)]
fn backward(
    hidden: &Tensor,
    lm_head: &Tensor,
    targets: &Tensor,
    mask: Option<&Tensor>,
    saved: &CrossEntropySaved,
    normaliser: f64,
    vocab_block: usize,
    want: Want,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    const OP: &str = "cross_entropy_backward";
    let p = prepare(OP, hidden, lm_head, targets, mask, normaliser, vocab_block)?;
    if saved.lse.dims() != [p.n] {
        let detail = format!(
            "saved `lse` {:?} must be [{}] for `hidden` {:?}",
            saved.lse.dims(),
            p.n,
            hidden.dims()
        );
        return Err(KernelError::Shape { op: OP, detail });
    }
    let h = hidden.to_dtype(p.ct)?.contiguous()?;
    let lse = saved.lse.to_dtype(p.ct)?.unsqueeze(1)?;
    let (mut dh, mut dw_blocks): (Option<Tensor>, Vec<Tensor>) = (None, Vec::new());
    for (v0, lv) in vocab_blocks(p.vocab, vocab_block) {
        let w = lm_head.narrow(0, v0, lv)?.to_dtype(p.ct)?;
        let gp = scaled_softmax(&h.matmul(&w.t()?)?, &lse, &p.row_scale)?;
        if want.input {
            let part = gp.matmul(&w)?;
            dh = Some(match dh {
                Some(acc) => (acc + part)?,
                None => part,
            });
        }
        if want.weight {
            dw_blocks.push(gp.t()?.matmul(&h)?);
        }
    }
    let d_hidden = match dh {
        Some(dh) => {
            let w_t = lm_head.index_select(&p.targets, 0)?.to_dtype(p.ct)?;
            Some((dh - w_t.broadcast_mul(&p.row_scale)?)?.to_dtype(hidden.dtype())?)
        }
        None => None,
    };
    let d_lm_head = if want.weight {
        let dw = Tensor::cat(&dw_blocks, 0)?;
        let g_h = h.broadcast_mul(&p.row_scale)?.neg()?;
        Some(
            dw.index_add(&p.targets, &g_h, 0)?
                .to_dtype(hidden.dtype())?,
        )
    } else {
        None
    };
    Ok((d_hidden, d_lm_head))
}

/// Unwraps a gradient the caller asked for (always computed when wanted).
fn wanted(t: Option<Tensor>) -> Result<Tensor> {
    t.ok_or_else(|| KernelError::Shape {
        op: "cross_entropy_backward",
        detail: "requested gradient was not computed (unreachable)".to_string(),
    })
}
