//! Cross-entropy over a vocabulary split into row shards of the LM head (vocabulary parallelism:
//! each pipeline rank holds `V/p` rows).
//!
//! Each shard computes, for every row, the log-sum-exp of its own logits and the target's logit
//! where the target falls in its rows ([`vocab_shard_forward`]); the shards' statistics combine
//! into the whole vocabulary's (`lse = m + ln Σ_r exp(lse_r − m)`, [`combine_lse`]) and the loss
//! ([`sharded_loss`]); with the combined `lse` each shard computes its share of `d_hidden` and
//! its own rows of `d_lm_head` ([`vocab_shard_backward`]). Summing the shares of `d_hidden` and
//! stacking the shards' `d_lm_head` gives exactly [`crate::cross_entropy_backward`]'s result.
//! Logits still exist one `[n, vocab_block]` block at a time.

use candle_core::{DType, Tensor, D};

use crate::check::{compute_dtype, dims, positive, positive_finite, same_dtype};
use crate::cross_entropy::{lse_blockwise, scaled_softmax, vocab_blocks};
use crate::error::{KernelError, Result};

/// One shard's statistics of each row's logits.
#[derive(Debug, Clone)]
pub struct ShardStats {
    /// `log Σ exp` of the row's logits over the shard's rows, `[n]`.
    pub lse: Tensor,
    /// The target's logit where the target is one of the shard's rows, 0 elsewhere, `[n]`.
    pub target_logit: Tensor,
}

/// A shard of the LM head: its rows `first .. first + rows` of a vocabulary of `vocab`.
#[derive(Debug, Clone, Copy)]
pub struct Shard<'a> {
    /// The shard's rows of the LM head, `[rows, H]`.
    pub weight: &'a Tensor,
    /// The vocabulary id of its first row.
    pub first: usize,
    /// The whole vocabulary's size.
    pub vocab: usize,
}

/// The rows whose target is in the shard, and each target's row within the shard.
struct Local {
    rows: Tensor,
    ids: Tensor,
}

fn local_targets(
    op: &'static str,
    hidden: &Tensor,
    shard: &Shard,
    targets: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Option<Local>> {
    let hd = dims(op, "hidden", hidden, 2, "[n, H]")?;
    let wd = dims(op, "shard", shard.weight, 2, "[rows, H]")?;
    same_dtype(op, "shard", shard.weight, hidden.dtype())?;
    same_dtype(op, "targets", targets, DType::U32)?;
    if hd[1] != wd[1] || shard.first + wd[0] > shard.vocab || targets.dims() != [hd[0]] {
        let detail = format!(
            "`hidden` {hd:?}, `shard` {wd:?} at row {} of a vocabulary of {} and `targets` {:?} \
             must agree: H equal, the shard inside the vocabulary, one target per row",
            shard.first,
            shard.vocab,
            targets.dims()
        );
        return Err(KernelError::Shape { op, detail });
    }
    let weights = match mask {
        Some(m) => m.to_dtype(DType::F64)?.to_vec1::<f64>()?,
        None => vec![1.0; hd[0]],
    };
    let (mut rows, mut ids) = (Vec::new(), Vec::new());
    for (token, (&t, w)) in targets.to_vec1::<u32>()?.iter().zip(&weights).enumerate() {
        let t = t as usize;
        if t >= shard.vocab && *w != 0.0 {
            let (target, vocab) = (t as u32, shard.vocab);
            return Err(KernelError::Target {
                token,
                target,
                vocab,
            });
        }
        if (shard.first..shard.first + wd[0]).contains(&t) {
            rows.push(token as u32);
            ids.push((t - shard.first) as u32);
        }
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let device = hidden.device();
    Ok(Some(Local {
        rows: Tensor::new(rows, device)?,
        ids: Tensor::new(ids, device)?,
    }))
}

/// The shard's statistics of the logits `hidden · shardᵀ` (`hidden [n, H]`, `targets [n]` u32
/// vocabulary ids; a target outside the vocabulary is allowed only where `mask` is 0).
pub fn vocab_shard_forward(
    hidden: &Tensor,
    shard: Shard,
    targets: &Tensor,
    mask: Option<&Tensor>,
    vocab_block: usize,
) -> Result<ShardStats> {
    const OP: &str = "vocab_shard_forward";
    positive(OP, "vocab_block", vocab_block)?;
    positive(OP, "shard rows", shard.weight.dim(0)?)?;
    let ct = compute_dtype(OP, "hidden", hidden)?;
    let local = local_targets(OP, hidden, &shard, targets, mask)?;
    let h = hidden.to_dtype(ct)?.contiguous()?;
    let lse = lse_blockwise(&h, shard.weight, ct, vocab_block)?.squeeze(1)?;
    let n = h.dim(0)?;
    let target_logit = match local {
        Some(Local { rows, ids }) => {
            let w_t = shard.weight.index_select(&ids, 0)?.to_dtype(ct)?;
            let z_t = (h.index_select(&rows, 0)? * w_t)?.sum(D::Minus1)?;
            Tensor::zeros(n, ct, h.device())?.index_add(&rows, &z_t, 0)?
        }
        None => Tensor::zeros(n, ct, h.device())?,
    };
    Ok(ShardStats { lse, target_logit })
}

/// The whole vocabulary's `lse [n]` from every shard's (in shard order).
pub fn combine_lse(shards: &[Tensor]) -> Result<Tensor> {
    let stacked = Tensor::stack(shards, 0)?; // [p, n]
    let m = stacked.max_keepdim(0)?;
    let sum = stacked.broadcast_sub(&m)?.exp()?.sum_keepdim(0)?;
    Ok((m + sum.log()?)?.squeeze(0)?)
}

/// `Σ w·(lse − z_target) / normaliser` from the combined `lse` and the target logits summed over
/// the shards (each target is in exactly one).
pub fn sharded_loss(
    lse: &Tensor,
    target_logit: &Tensor,
    mask: Option<&Tensor>,
    normaliser: f64,
) -> Result<f64> {
    positive_finite("sharded_loss", "normaliser", normaliser)?;
    let per_row = (lse - target_logit)?;
    let weighted = match mask {
        Some(m) => (per_row * m.to_dtype(lse.dtype())?)?,
        None => per_row,
    };
    Ok(weighted
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?
        / normaliser)
}

/// The shard's share of `d_hidden [n, H]` and its own rows of `d_lm_head [rows, H]`, given the
/// whole vocabulary's `lse [n]`, in `hidden`'s dtype.
pub fn vocab_shard_backward(
    hidden: &Tensor,
    shard: Shard,
    targets: &Tensor,
    mask: Option<&Tensor>,
    lse: &Tensor,
    normaliser: f64,
    vocab_block: usize,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "vocab_shard_backward";
    positive(OP, "vocab_block", vocab_block)?;
    positive_finite(OP, "normaliser", normaliser)?;
    let ct = compute_dtype(OP, "hidden", hidden)?;
    let local = local_targets(OP, hidden, &shard, targets, mask)?;
    let n = hidden.dim(0)?;
    if lse.dims() != [n] {
        let detail = format!("`lse` {:?} must be [{n}]", lse.dims());
        return Err(KernelError::Shape { op: OP, detail });
    }
    let scale = match mask {
        Some(m) => (m.to_dtype(ct)? / normaliser)?,
        None => Tensor::full(1.0 / normaliser, n, hidden.device())?.to_dtype(ct)?,
    }
    .unsqueeze(1)?;
    let h = hidden.to_dtype(ct)?.contiguous()?;
    let lse = lse.to_dtype(ct)?.unsqueeze(1)?;
    let mut dh = h.zeros_like()?;
    let mut dw_blocks = Vec::new();
    for (v0, lv) in vocab_blocks(shard.weight.dim(0)?, vocab_block) {
        let w = shard.weight.narrow(0, v0, lv)?.to_dtype(ct)?;
        let gp = scaled_softmax(&h.matmul(&w.t()?)?, &lse, &scale)?;
        dh = (dh + gp.matmul(&w)?)?;
        dw_blocks.push(gp.t()?.matmul(&h)?);
    }
    let mut dw = Tensor::cat(&dw_blocks, 0)?;
    // The one-hot of each target in the shard: −w/normaliser at its logit.
    if let Some(Local { rows, ids }) = local {
        let g = scale.index_select(&rows, 0)?.neg()?;
        let w_t = shard.weight.index_select(&ids, 0)?.to_dtype(ct)?;
        dh = dh.index_add(&rows, &w_t.broadcast_mul(&g)?, 0)?;
        let g_h = h.index_select(&rows, 0)?.broadcast_mul(&g)?;
        dw = dw.index_add(&ids, &g_h, 0)?;
    }
    Ok((dh.to_dtype(hidden.dtype())?, dw.to_dtype(hidden.dtype())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cross_entropy_backward, cross_entropy_forward};
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Shards of 4, 3 and 4 rows of an 11-token vocabulary against the unsharded op.
    fn sharded_equals_whole(dtype: DType, tol: f64) {
        let dev = Device::Cpu;
        let (n, hsize, vocab) = (6, 5, 11);
        let hidden = Tensor::randn(0.0, 1.0, (n, hsize), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let head = Tensor::randn(0.0, 1.0, (vocab, hsize), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        // Row 4's target is outside the vocabulary but masked out.
        let targets = Tensor::new(&[0u32, 3, 4, 10, 99, 7], &dev).unwrap();
        let mask = Tensor::new(&[1f32, 1.0, 0.5, 1.0, 0.0, 1.0], &dev).unwrap();
        let normaliser = 9.0;
        let (loss, saved) =
            cross_entropy_forward(&hidden, &head, &targets, Some(&mask), normaliser, 2).unwrap();
        let (dh, dw) =
            cross_entropy_backward(&hidden, &head, &targets, Some(&mask), &saved, normaliser, 2)
                .unwrap();
        let bounds = [(0, 4), (4, 3), (7, 4)];
        let weights: Vec<Tensor> = bounds
            .iter()
            .map(|&(first, rows)| head.narrow(0, first, rows).unwrap())
            .collect();
        let shard = |i: usize| Shard {
            weight: &weights[i],
            first: bounds[i].0,
            vocab,
        };
        let stats: Vec<ShardStats> = (0..3)
            .map(|i| vocab_shard_forward(&hidden, shard(i), &targets, Some(&mask), 3).unwrap())
            .collect();
        let lse = combine_lse(&stats.iter().map(|s| s.lse.clone()).collect::<Vec<_>>()).unwrap();
        let z = stats
            .iter()
            .map(|s| s.target_logit.clone())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let sharded = sharded_loss(&lse, &z, Some(&mask), normaliser).unwrap();
        assert!(
            (sharded - loss).abs() <= tol * loss.abs(),
            "{sharded} vs {loss}"
        );
        assert!(max_diff(&lse, &saved.lse) <= tol * 10.0);
        let parts: Vec<(Tensor, Tensor)> = (0..3)
            .map(|i| {
                let s = shard(i);
                vocab_shard_backward(&hidden, s, &targets, Some(&mask), &lse, normaliser, 2)
                    .unwrap()
            })
            .collect();
        let dh_sum = parts
            .iter()
            .map(|(d, _)| d.clone())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        let dw_cat =
            Tensor::cat(&parts.iter().map(|(_, w)| w.clone()).collect::<Vec<_>>(), 0).unwrap();
        assert!(max_diff(&dh_sum, &dh) <= tol, "{}", max_diff(&dh_sum, &dh));
        assert!(max_diff(&dw_cat, &dw) <= tol, "{}", max_diff(&dw_cat, &dw));
    }

    #[test]
    fn shards_together_equal_the_whole_vocabulary_f64() {
        sharded_equals_whole(DType::F64, 1e-13);
    }

    #[test]
    fn shards_together_equal_the_whole_vocabulary_f32() {
        sharded_equals_whole(DType::F32, 1e-5);
    }

    #[test]
    fn an_unmasked_target_outside_the_vocabulary_is_named() {
        let dev = Device::Cpu;
        let hidden = Tensor::ones((2, 3), DType::F64, &dev).unwrap();
        let head = Tensor::ones((4, 3), DType::F64, &dev).unwrap();
        let targets = Tensor::new(&[1u32, 8], &dev).unwrap();
        let shard = Shard {
            weight: &head,
            first: 4,
            vocab: 8,
        };
        let e = vocab_shard_forward(&hidden, shard, &targets, None, 2).unwrap_err();
        assert!(e.to_string().contains('8'), "{e}");
        let outside = Shard { first: 6, ..shard };
        let e = vocab_shard_forward(&hidden, outside, &targets, None, 2).unwrap_err();
        assert!(e.to_string().contains("inside the vocabulary"), "{e}");
    }
}
