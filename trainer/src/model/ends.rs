//! The two ends of the model: the token embedding (first virtual stage) and the final norm, LM
//! head and loss (last virtual stage), each with explicit forward and split backward.

use candle_core::{DType, Result, Tensor};
use seqpipe_kernels::{
    cross_entropy_backward_input, cross_entropy_backward_weight, cross_entropy_forward,
    rms_norm_backward, rms_norm_forward, CrossEntropySaved,
};
use serde::Serialize;

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
    /// Target weights `[b·s]` (none: all 1).
    pub mask: Option<Tensor>,
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

    /// The record with `to` applied to every tensor (a move between memory tiers).
    pub fn map(&self, to: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(HeadSaved {
            x: to(&self.x)?,
            inv: to(&self.inv)?,
            h: to(&self.h)?,
            targets: to(&self.targets)?,
            mask: self.mask.as_ref().map(to).transpose()?,
            ce: CrossEntropySaved {
                lse: to(&self.ce.lse)?,
            },
            normaliser: self.normaliser,
        })
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
    mask: Option<&Tensor>,
    normaliser: f64,
) -> Result<(f64, HeadSaved)> {
    let hidden = x.dim(2)?;
    let (h, inv) = rms_norm_forward(x, final_norm, ctx.eps).map_err(k)?;
    let h = h.reshape(((), hidden))?;
    let targets = targets.flatten_all()?.to_dtype(DType::U32)?;
    let mask = mask.map(|m| m.flatten_all()).transpose()?;
    let (loss, ce) = cross_entropy_forward(
        &h,
        lm_head,
        &targets,
        mask.as_ref(),
        normaliser,
        ctx.vocab_block,
    )
    .map_err(k)?;
    Ok((
        loss,
        HeadSaved {
            x: x.clone(),
            inv,
            h,
            targets,
            mask,
            ce,
            normaliser,
        },
    ))
}

/// Accuracy counts of the scored (masked-in) targets: the argmax of the logits against the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Answers {
    /// Targets scored.
    pub scored: usize,
    /// Targets whose most likely token was the target.
    pub correct: usize,
}

impl Answers {
    /// Adds another count.
    pub fn add(&mut self, other: Answers) {
        self.scored += other.scored;
        self.correct += other.correct;
    }

    /// `correct / scored`, none when nothing was scored.
    pub fn accuracy(&self) -> Option<f64> {
        (self.scored > 0).then(|| self.correct as f64 / self.scored as f64)
    }
}

/// The rows of a loss mask `[n]` with weight > 0: the targets scored for accuracy.
pub fn scored_rows(mask: &Tensor) -> Result<Vec<u32>> {
    Ok(mask
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0.0)
        .map(|(i, _)| i as u32)
        .collect())
}

/// Accuracy on the targets with weight > 0: only those rows' logits are formed, so scoring a few
/// answers costs a few rows of the LM head matmul.
pub fn answer_hits(lm_head: &Tensor, saved: &HeadSaved) -> Result<Answers> {
    let Some(mask) = &saved.mask else {
        return Ok(Answers::default());
    };
    let rows = scored_rows(mask)?;
    if rows.is_empty() {
        return Ok(Answers::default());
    }
    let index = Tensor::new(rows.as_slice(), saved.h.device())?;
    let h = saved.h.index_select(&index, 0)?;
    let logits = h.matmul(&lm_head.to_dtype(h.dtype())?.t()?)?;
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    let wanted = saved.targets.index_select(&index, 0)?.to_vec1::<u32>()?;
    Ok(Answers {
        scored: rows.len(),
        correct: predicted
            .iter()
            .zip(&wanted)
            .filter(|(p, w)| p == w)
            .count(),
    })
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
        saved.mask.as_ref(),
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
        saved.mask.as_ref(),
        &saved.ce,
        saved.normaliser,
        ctx.vocab_block,
    )
    .map_err(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn answer_hits_counts_argmax_matches_on_masked_rows_only() {
        // lm_head = I: each row's most likely token is its largest hidden coordinate.
        let dev = Device::Cpu;
        let lm_head = Tensor::eye(4, DType::F64, &dev).unwrap();
        let hot = [2u32, 0, 3, 1, 1];
        let x: Vec<f64> = hot
            .iter()
            .flat_map(|&h| (0..4).map(move |i| if i == h { 3.0 } else { 0.5 }))
            .collect();
        let x = Tensor::from_vec(x, (1, 5, 4), &dev).unwrap();
        let targets = Tensor::new(&[[2u32, 1, 3, 0, 1]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1.0, 0.0, 1.0, 1.0]], &dev).unwrap();
        let ctx = HeadCtx {
            eps: 1e-6,
            vocab_block: 3,
        };
        let norm = Tensor::ones(4, DType::F64, &dev).unwrap();
        let (_, saved) =
            head_forward(ctx, &norm, &lm_head, &x, &targets, Some(&mask), 4.0).unwrap();
        // Masked-in rows 0, 1, 3, 4: right, wrong, wrong, right (row 2 would be right).
        let hits = answer_hits(&lm_head, &saved).unwrap();
        assert_eq!(
            hits,
            Answers {
                scored: 4,
                correct: 2
            }
        );
        assert_eq!(hits.accuracy(), Some(0.5));
        let (_, unmasked) = head_forward(ctx, &norm, &lm_head, &x, &targets, None, 5.0).unwrap();
        assert_eq!(answer_hits(&lm_head, &unmasked).unwrap().accuracy(), None);
    }
}
