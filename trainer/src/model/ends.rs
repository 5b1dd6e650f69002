//! The two ends of the model: the token embedding (first virtual stage) and the final norm, LM
//! head and loss (last virtual stage), each with explicit forward and split backward.

use candle_core::{DType, Result, Tensor};
use seqpipe_kernels::{
    cross_entropy_backward_input, cross_entropy_backward_weight, cross_entropy_forward,
    rms_norm_backward, rms_norm_forward, CrossEntropySaved,
};

fn k(e: seqpipe_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Embedding lookup: `tokens [b, s]` (u32) → `[b, s, H]`.
pub fn embed_forward(embedding: &Tensor, tokens: &Tensor) -> Result<Tensor> {
    let (b, s) = tokens.dims2()?;
    let hidden = embedding.dim(1)?;
    embedding
        .index_select(&tokens.flatten_all()?, 0)?
        .reshape((b, s, hidden))
}

/// Embedding gradient: scatter-add `dx [b, s, H]` into the rows of `tokens`.
pub fn embed_backward(embedding: &Tensor, tokens: &Tensor, dx: &Tensor) -> Result<Tensor> {
    let hidden = embedding.dim(1)?;
    let rows = dx.reshape(((), hidden))?.to_dtype(embedding.dtype())?;
    embedding
        .zeros_like()?
        .index_add(&tokens.flatten_all()?, &rows, 0)
}

/// What the head keeps for its backward.
#[derive(Debug, Clone)]
pub struct HeadSaved {
    /// Head input `[b, s, H]`.
    pub x: Tensor,
    /// Inverse RMS of the final norm.
    pub inv: Tensor,
    /// Final norm output, `[b·s, H]`.
    pub h: Tensor,
    /// Targets `[b·s]`.
    pub targets: Tensor,
    /// Cross-entropy statistics (log-sum-exp per row).
    pub ce: CrossEntropySaved,
    /// Loss normaliser (tokens in the whole micro-batch).
    pub normaliser: f64,
}

impl HeadSaved {
    /// The tensors held.
    pub fn tensors(&self) -> [&Tensor; 4] {
        [&self.x, &self.inv, &self.h, &self.ce.lse]
    }
}

/// Settings of the head.
#[derive(Debug, Clone, Copy)]
pub struct HeadCtx {
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Vocabulary block of the fused cross-entropy.
    pub vocab_block: usize,
}

/// Final norm, LM head and cross-entropy of a slice, normalised by `normaliser` tokens so that the
/// slices of a micro-batch sum to its mean loss.
pub fn head_forward(
    ctx: HeadCtx,
    final_norm: &Tensor,
    lm_head: &Tensor,
    x: &Tensor,
    targets: &Tensor,
    normaliser: f64,
) -> Result<(f64, HeadSaved)> {
    let hidden = x.dim(2)?;
    let (h, inv) = rms_norm_forward(x, final_norm, ctx.eps).map_err(k)?;
    let h = h.reshape(((), hidden))?;
    let targets = targets.flatten_all()?.to_dtype(DType::U32)?;
    let (loss, ce) =
        cross_entropy_forward(&h, lm_head, &targets, None, normaliser, ctx.vocab_block)
            .map_err(k)?;
    Ok((
        loss,
        HeadSaved {
            x: x.clone(),
            inv,
            h,
            targets,
            ce,
            normaliser,
        },
    ))
}

/// Input half of the head backward: `(dx, d_final_norm)`.
pub fn head_backward_input(
    ctx: HeadCtx,
    final_norm: &Tensor,
    lm_head: &Tensor,
    saved: &HeadSaved,
) -> Result<(Tensor, Tensor)> {
    let dh = cross_entropy_backward_input(
        &saved.h,
        lm_head,
        &saved.targets,
        None,
        &saved.ce,
        saved.normaliser,
        ctx.vocab_block,
    )
    .map_err(k)?;
    let dh = dh.reshape(saved.x.dims())?.to_dtype(saved.x.dtype())?;
    let (dx, d_norm) = rms_norm_backward(&saved.x, final_norm, &saved.inv, &dh).map_err(k)?;
    Ok((dx, d_norm))
}

/// Weight half of the head backward: the LM head gradient.
pub fn head_backward_weight(ctx: HeadCtx, lm_head: &Tensor, saved: &HeadSaved) -> Result<Tensor> {
    cross_entropy_backward_weight(
        &saved.h,
        lm_head,
        &saved.targets,
        None,
        &saved.ce,
        saved.normaliser,
        ctx.vocab_block,
    )
    .map_err(k)
}
