//! The vocabulary-parallel ops of a stage (`EMBED`, `HEAD`, `EMBED_B`): every stage holds rows
//! `vocab_rows` of the embedding and the LM head, and takes part in each unit's embedding, head
//! and embedding gradient with the unit's owner (stage 0 for the embedding, the last stage for
//! the head).
//!
//! - `EMBED`: each stage looks up the slice's tokens that fall in its rows (zeros elsewhere);
//!   stage 0 sums every stage's share, in stage order, into virtual stage 0's input.
//! - `HEAD`: the last stage applies the final norm and sends the normed hidden states to every
//!   stage; each computes its rows' log-sum-exp and target logits (`seqpipe_kernels`' shard
//!   ops) and sends them to every other stage; each combines them into the whole vocabulary's
//!   log-sum-exp, adds its LM-head rows' gradient and sends its share of the hidden states'
//!   gradient to the last stage, which sums them, takes the loss and answers, and runs the final
//!   norm's backward into the gradient of the last virtual stage's backward.
//! - `EMBED_B`: stage 0 sends virtual stage 0's input gradient to every stage; each adds it into
//!   its rows of the embedding gradient.
//!
//! Who sends what to whom, in which order, is [`vocab_sends`]: the inbox's expected order is
//! built from it, so both ends agree by construction.

use std::ops::Range;

use candle_core::{DType, Tensor, D};
use seqpipe_comm::TagKind;
use seqpipe_kernels::{
    combine_lse, rms_norm_backward, rms_norm_forward, sharded_loss, vocab_shard_backward,
    vocab_shard_forward, Shard,
};
use seqpipe_schedule::{Action, Op, Unit};

use super::compute::add_into;
use super::link::Link;
use super::{IterState, IterationInput, Slot, StageWorker};
use crate::error::{Error, Result};
use crate::model::ends::{scored_rows, Answers};
use crate::model::names::{EMBED, FINAL_NORM, LM_HEAD};

/// Every message stage `stage` of `stages` sends for a vocabulary op, in sending order:
/// (destination stage, kind).
pub(crate) fn vocab_sends(op: Op, stage: usize, stages: usize) -> Vec<(usize, TagKind)> {
    let last = stages - 1;
    let others = (0..stages).filter(move |&q| q != stage);
    match op {
        Op::VocabEmbed if stage > 0 => vec![(0, TagKind::EmbedShare)],
        Op::VocabEmbedGrad if stage == 0 => others.map(|q| (q, TagKind::EmbedGrad)).collect(),
        Op::VocabHead if stage == last => others
            .clone()
            .map(|q| (q, TagKind::HeadInput))
            .chain(others.map(|q| (q, TagKind::HeadStats)))
            .collect(),
        Op::VocabHead => others
            .map(|q| (q, TagKind::HeadStats))
            .chain([(last, TagKind::HeadGrad)])
            .collect(),
        _ => Vec::new(),
    }
}

/// Positions of a slice's tokens that fall in `rows`, and each one's row within the shard.
fn local_rows(ids: &[u32], rows: &Range<usize>) -> (Vec<u32>, Vec<u32>) {
    ids.iter()
        .enumerate()
        .filter(|(_, &t)| rows.contains(&(t as usize)))
        .map(|(i, &t)| (i as u32, (t as usize - rows.start) as u32))
        .unzip()
}

impl StageWorker {
    fn shard_rows(&self) -> Result<&Range<usize>> {
        self.vocab_rows.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "stage {}'s program has vocabulary-parallel actions, but the stage holds whole \
                 tables: set parallel.vocab_parallel = true",
                self.spec.stage
            ))
        })
    }

    /// The unit of `a` on virtual stage chunk `chunk`.
    fn on_chunk(a: &Action, chunk: usize) -> Unit {
        Unit::new(a.mb.0, a.slice.0, chunk as u32)
    }

    /// The slice's token ids `[b, len]` (inputs) and their flat values.
    fn slice_ids(&self, input: &IterationInput, a: &Action) -> Result<(Tensor, Vec<u32>)> {
        let range = input
            .slices_of(a.mb.index())
            .get(a.slice.index())
            .ok_or_else(|| Error::Runtime(format!("slice {} is not in the plan", a.slice.0)))?;
        let tokens = input
            .tokens
            .get(a.mb.index())
            .ok_or_else(|| Error::Runtime(format!("micro-batch {} has no data", a.mb.0)))?;
        let ids = tokens.narrow(1, range.start, range.len())?.contiguous()?;
        let flat = ids.flatten_all()?.to_vec1::<u32>()?;
        Ok((ids, flat))
    }

    pub(super) fn vocab_embed(
        &mut self,
        link: &mut Link,
        input: &IterationInput,
        st: &mut IterState,
        a: &Action,
    ) -> Result<()> {
        let rows = self.shard_rows()?.clone();
        let (ids, flat) = self.slice_ids(input, a)?;
        let (b, len) = ids.dims2()?;
        let table = &self.params[EMBED];
        let mut share = Tensor::zeros((b * len, self.model.hidden), table.dtype(), &self.device)?;
        let (at, local) = local_rows(&flat, &rows);
        if !at.is_empty() {
            let at = Tensor::new(at, &self.device)?;
            let local = Tensor::new(local, &self.device)?;
            share = share.index_add(&at, &table.index_select(&local, 0)?, 0)?;
        }
        if self.spec.stage > 0 {
            return link.send_to(0, TagKind::EmbedShare, a, &share);
        }
        for q in 1..self.spec.stages {
            let theirs = link.recv_from(q, TagKind::EmbedShare, a, share.dtype())?;
            share = (share + theirs)?;
        }
        let x = share.reshape((b, len, self.model.hidden))?;
        st.store.put(Slot::ActIn, Self::on_chunk(a, 0), x);
        Ok(())
    }

    pub(super) fn vocab_embed_grad(
        &mut self,
        link: &mut Link,
        input: &IterationInput,
        st: &mut IterState,
        a: &Action,
    ) -> Result<()> {
        let rows = self.shard_rows()?.clone();
        let dx = if self.spec.stage == 0 {
            let dx = st
                .store
                .take(Slot::GradOut, &Self::on_chunk(a, 0))
                .ok_or_else(|| {
                    Error::Runtime("EMBED_B before virtual stage 0's backward".into())
                })?;
            for (q, kind) in vocab_sends(Op::VocabEmbedGrad, 0, self.spec.stages) {
                link.send_to(q, kind, a, &dx)?;
            }
            dx
        } else {
            link.recv_from(0, TagKind::EmbedGrad, a, link.dtype)?
        };
        let (_, flat) = self.slice_ids(input, a)?;
        let (at, local) = local_rows(&flat, &rows);
        if at.is_empty() {
            return Ok(());
        }
        let dx = dx.reshape(((), self.model.hidden))?;
        let at = Tensor::new(at, dx.device())?;
        let local = Tensor::new(local, dx.device())?;
        let table = &self.params[EMBED];
        let grad = Tensor::zeros(table.dims(), dx.dtype(), dx.device())?.index_add(
            &local,
            &dx.index_select(&at, 0)?,
            0,
        )?;
        add_into(&mut self.grads, EMBED, &grad)
    }

    /// The LM head's rows on this stage (the embedding's when tied).
    fn head_rows(&self) -> &Tensor {
        match self.model.tie_embeddings {
            true => &self.params[EMBED],
            false => &self.params[LM_HEAD],
        }
    }

    pub(super) fn vocab_head(
        &mut self,
        link: &mut Link,
        input: &IterationInput,
        st: &mut IterState,
        a: &Action,
    ) -> Result<()> {
        let rows = self.shard_rows()?.clone();
        let (targets, mask) = self.targets(input, a, &input.tokens[a.mb.index()])?;
        let (targets, mask) = (
            targets.flatten_all()?,
            mask.map(|m| m.flatten_all()).transpose()?,
        );
        let (h, normed) = self.head_input(link, st, a)?;
        let shard = Shard {
            weight: self.head_rows(),
            first: rows.start,
            vocab: self.model.vocab,
        };
        let own = self.shard_stats(&h, shard, &targets, mask.as_ref())?;
        let all = self.exchange_stats(link, a, own)?;
        let lse = combine_lse(
            &all.iter()
                .map(|s| s.get(0))
                .collect::<candle_core::Result<Vec<_>>>()?,
        )?;
        let (dh, dw) = vocab_shard_backward(
            &h,
            shard,
            &targets,
            mask.as_ref(),
            &lse,
            input.normaliser,
            self.head.vocab_block,
        )?;
        let head_name = if self.model.tie_embeddings {
            EMBED
        } else {
            LM_HEAD
        };
        add_into(&mut self.grads, head_name, &dw)?;
        let Some(normed) = normed else {
            return link.send_to(self.spec.stages - 1, TagKind::HeadGrad, a, &dh);
        };
        let target_logit = all
            .iter()
            .map(|s| s.get(1))
            .try_fold(lse.zeros_like()?, |acc, z| acc + z?)?;
        st.loss += sharded_loss(&lse, &target_logit, mask.as_ref(), input.normaliser)?;
        if mask.is_some() {
            st.answers.add(best_answers(&all, &targets, mask.as_ref())?);
        }
        self.head_backward(link, st, a, normed, dh)
    }

    /// The normed hidden states `[n, H]` of `a`'s unit: on the last stage made from the last
    /// virtual stage's output (kept with the norm's statistics for its backward) and sent to
    /// every other stage, elsewhere received.
    fn head_input(
        &self,
        link: &mut Link,
        st: &mut IterState,
        a: &Action,
    ) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let (p, stage) = (self.spec.stages, self.spec.stage);
        if stage + 1 < p {
            let h = link.recv_from(p - 1, TagKind::HeadInput, a, link.dtype)?;
            return Ok((h, None));
        }
        let u = Self::on_chunk(a, self.spec.chunk_layers.len() - 1);
        let x = st
            .store
            .take(Slot::ActOut, &u)
            .ok_or_else(|| Error::Runtime("HEAD before the last virtual stage's forward".into()))?;
        let (h, inv) = rms_norm_forward(&x, &self.params[FINAL_NORM], self.model.norm_eps)?;
        let h = h.reshape(((), self.model.hidden))?;
        for (q, kind) in vocab_sends(a.op, stage, p) {
            if kind == TagKind::HeadInput {
                link.send_to(q, kind, a, &h)?;
            }
        }
        Ok((h, Some((x, inv))))
    }

    /// The last stage's end of `HEAD`: every stage's share of the hidden states' gradient
    /// summed (in stage order) through the final norm's backward into the gradient the last
    /// virtual stage's backward takes.
    fn head_backward(
        &mut self,
        link: &mut Link,
        st: &mut IterState,
        a: &Action,
        (x, inv): (Tensor, Tensor),
        mut dh: Tensor,
    ) -> Result<()> {
        let dtype = dh.dtype();
        for q in 0..self.spec.stages - 1 {
            dh = (dh + link.recv_from(q, TagKind::HeadGrad, a, dtype)?)?;
        }
        let dh = dh.reshape(x.dims())?;
        let (dx, d_norm) = rms_norm_backward(&x, &self.params[FINAL_NORM], &inv, &dh)?;
        add_into(&mut self.grads, FINAL_NORM, &d_norm)?;
        let u = Self::on_chunk(a, self.spec.chunk_layers.len() - 1);
        st.store.put(Slot::GradIn, u, dx);
        Ok(())
    }

    /// This stage's statistics of each row, `[4, n]`: log-sum-exp over its rows, the target's
    /// logit where it is one of them, and (with a loss mask, on the scored rows) its most likely
    /// token's logit and id.
    fn shard_stats(
        &self,
        h: &Tensor,
        shard: Shard,
        targets: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let stats = vocab_shard_forward(h, shard, targets, mask, self.head.vocab_block)?;
        let n = h.dim(0)?;
        let (mut best, mut best_id) = (vec![f64::NEG_INFINITY; n], vec![0f64; n]);
        if let Some(m) = mask {
            let scored = scored_rows(m)?;
            if !scored.is_empty() {
                let index = Tensor::new(scored.as_slice(), h.device())?;
                // In the hidden states' dtype, as the whole-vocabulary count (`answer_hits`).
                let z = h
                    .index_select(&index, 0)?
                    .matmul(&shard.weight.to_dtype(h.dtype())?.t()?)?;
                let top = z.max(D::Minus1)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let arg = z.argmax(D::Minus1)?.to_vec1::<u32>()?;
                for (k, &row) in scored.iter().enumerate() {
                    best[row as usize] = top[k];
                    best_id[row as usize] = f64::from(arg[k]) + shard.first as f64;
                }
            }
        }
        let dtype = stats.lse.dtype();
        let best = Tensor::new(best, h.device())?.to_dtype(dtype)?;
        let best_id = Tensor::new(best_id, h.device())?.to_dtype(dtype)?;
        Ok(Tensor::stack(
            &[stats.lse, stats.target_logit, best, best_id],
            0,
        )?)
    }

    /// Every stage's statistics, in stage order: this stage's sent to every other, theirs
    /// received.
    fn exchange_stats(&self, link: &mut Link, a: &Action, own: Tensor) -> Result<Vec<Tensor>> {
        let (p, stage) = (self.spec.stages, self.spec.stage);
        for (q, kind) in vocab_sends(a.op, stage, p) {
            if kind == TagKind::HeadStats {
                link.send_to(q, kind, a, &own)?;
            }
        }
        let dtype = own.dtype();
        (0..p)
            .map(|q| match q == stage {
                true => Ok(own.clone()),
                false => link.recv_from(q, TagKind::HeadStats, a, dtype),
            })
            .collect()
    }
}

/// Answers of the scored rows: a row is right when the most likely token over every shard
/// (the first shard's on a tie, as a whole-vocabulary argmax takes the first) is its target.
fn best_answers(all: &[Tensor], targets: &Tensor, mask: Option<&Tensor>) -> Result<Answers> {
    let Some(mask) = mask else {
        return Ok(Answers::default());
    };
    let weights = mask.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let wanted = targets.to_vec1::<u32>()?;
    let shards: Vec<[Vec<f64>; 2]> = all
        .iter()
        .map(|s| {
            let s = s.to_dtype(DType::F64)?;
            Ok([s.get(2)?.to_vec1::<f64>()?, s.get(3)?.to_vec1::<f64>()?])
        })
        .collect::<Result<_>>()?;
    let mut answers = Answers::default();
    for (row, _) in weights.iter().enumerate().filter(|(_, w)| **w > 0.0) {
        let mut top = (f64::NEG_INFINITY, 0.0);
        for [best, id] in &shards {
            if best[row] > top.0 {
                top = (best[row], id[row]);
            }
        }
        answers.scored += 1;
        answers.correct += usize::from(top.1 as u32 == wanted[row]);
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_of_a_vocabulary_op_has_one_sender_and_one_receiver() {
        // Stage 0 receives one EMBED share from each other stage; the last stage sends its
        // hidden states to each other stage, everyone's statistics go to everyone, and every
        // other stage's gradient share comes back to the last.
        let p = 3;
        let to = |op, q| vocab_sends(op, q, p);
        assert_eq!(to(Op::VocabEmbed, 0), vec![]);
        assert_eq!(to(Op::VocabEmbed, 2), vec![(0, TagKind::EmbedShare)]);
        assert_eq!(
            to(Op::VocabEmbedGrad, 0),
            vec![(1, TagKind::EmbedGrad), (2, TagKind::EmbedGrad)]
        );
        assert_eq!(
            to(Op::VocabHead, 2),
            vec![
                (0, TagKind::HeadInput),
                (1, TagKind::HeadInput),
                (0, TagKind::HeadStats),
                (1, TagKind::HeadStats)
            ]
        );
        assert_eq!(
            to(Op::VocabHead, 1),
            vec![
                (0, TagKind::HeadStats),
                (2, TagKind::HeadStats),
                (2, TagKind::HeadGrad)
            ]
        );
        assert_eq!(vocab_sends(Op::VocabHead, 0, 1), vec![]);
    }

    #[test]
    fn local_rows_keep_the_tokens_of_the_shard() {
        assert_eq!(
            local_rows(&[5, 1, 7, 4, 9], &(4..8)),
            (vec![0, 2, 3], vec![1, 3, 0])
        );
    }
}
