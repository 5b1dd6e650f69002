//! The compute ops of a stage: a unit's forward (a pure function of its input, the weights and
//! the K/V prefix, whose results the caller stores: K/V through the sink, the loss into the
//! iteration's sum), the input half of its backward and the weight half.

use crate::error::{fail, Error, Result};
use candle_core::Tensor;
use seqpipe_kernels::SliceKvCache;
use seqpipe_schedule::Action;

use super::exchange::{at_site, own_entries};
use super::link::Link;
use super::recompute::{checkpoint, recomputed_whole, whole_records};
use super::{unit, IterState, IterationInput, PendingWeight, Slot, StageWorker, UnitSaved};
use crate::model::ends::{
    answer_hits, embed_backward, embed_forward, head_backward_input, head_backward_weight,
    head_forward, Answers, HeadSaved,
};
use crate::model::layer::{
    self, AttentionSite, LayerSaved, Place, SliceKv, WeightGradInputs, MATRIX_SLOTS,
};
use crate::model::names::{layer_param, EMBED, FINAL_NORM, LAYER_BIASES, LAYER_PARTS, LM_HEAD};
use crate::model::params::TensorMap;

pub(super) fn add_into(map: &mut TensorMap, name: &str, g: &Tensor) -> Result<()> {
    let acc = map
        .get_mut(name)
        .ok_or_else(|| Error::Runtime(format!("no gradient slot for {name}")))?;
    *acc = (&*acc + g.to_dtype(acc.dtype())?)?;
    Ok(())
}

/// Where compute `a`'s tokens lie: from `offset` on, in its micro-batch's packed documents if
/// the input has them.
fn place(input: &IterationInput, a: &Action, offset: usize) -> Result<Place> {
    let documents = match &input.documents {
        Some(all) => Some(all.get(a.mb.index()).cloned().ok_or_else(|| {
            Error::Runtime(format!("micro-batch {} has no document layout", a.mb.0))
        })?),
        None => None,
    };
    Ok(Place { offset, documents })
}

/// Score entries one layer's attention computes on this stage for `len` queries at `place`
/// (`batch_heads` rows of heads), less the `handed` prefix tokens a partner attends to.
fn attended(place: &Place, batch_heads: usize, len: usize, handed: usize) -> u64 {
    match &place.documents {
        // The exchange does not run over documents, so nothing is handed here.
        Some(docs) => {
            let heads = (batch_heads / docs.rows().max(1)) as u64;
            let range = place.offset..place.offset + len;
            (0..docs.rows())
                .map(|row| heads * docs.causal_entries(row, range.clone()))
                .sum()
        }
        None => own_entries(batch_heads, place.offset, len, handed),
    }
}

impl StageWorker {
    pub(super) fn forward(
        &mut self,
        link: &mut Link,
        input: &IterationInput,
        st: &mut IterState,
        a: &Action,
        k: usize,
    ) -> Result<()> {
        let u = unit(a);
        let range = input
            .slices_of(a.mb.index())
            .get(a.slice.index())
            .ok_or_else(|| Error::Runtime(format!("slice {} is not in the plan", a.slice.0)))?;
        let tokens = input
            .tokens
            .get(a.mb.index())
            .ok_or_else(|| Error::Runtime(format!("micro-batch {} has no data", a.mb.0)))?;
        let (offset, len) = (range.start, range.len());
        let (x, ids) = if k == 0 && self.vocab_rows.is_none() {
            let ids = tokens
                .narrow(1, offset, len)?
                .to_device(&self.device)?
                .contiguous()?;
            (embed_forward(&self.params[EMBED], &ids)?, Some(ids))
        } else {
            // Virtual stage 0's input under vocabulary parallelism is its `EMBED`'s sum.
            let received = st.store.take(Slot::ActIn, &u).or_else(|| {
                let before = self.local_neighbour(&u, -1)?;
                st.store.take(Slot::ActOut, &before)
            });
            (
                received
                    .ok_or_else(|| Error::Runtime("input activation was not received".into()))?,
                None,
            )
        };
        let chunk = a.chunk.index();
        let layers = self.weights[chunk].len();
        let granularity = st
            .recomputed
            .contains(&u)
            .then(|| self.recompute.of(&u))
            .flatten();
        let last_slice = a.slice.index() + 1 == input.slices_of(a.mb.index()).len();
        let site = self.site(link, st, a, input)?;
        let caches = st.store.caches(&u, layers);
        let place = place(input, a, offset)?;
        let batch_heads = x.dim(0)? * self.model.heads;
        let ((x, saved_layers, kv), handed) = at_site(site, |site| {
            self.chunk_forward(chunk, caches, x, &place, site)
        })?;
        st.attention += layers as u64 * attended(&place, batch_heads, len, handed);
        // The K/V sink: the slice's keys and values join the prefix of the later slices — but
        // a layer recomputed whole on the last slice keeps none: no later slice reads them, and
        // its RECOMPUTE makes them again.
        let mut kv_cached = Vec::with_capacity(layers);
        for (i, (cache, kv)) in caches.iter_mut().zip(&kv).enumerate() {
            let keep = !(last_slice && recomputed_whole(granularity, i));
            if keep {
                cache.append(&kv.k, &kv.v)?;
            }
            kv_cached.push(keep);
        }
        let mut head = None;
        // Under vocabulary parallelism the head is the `HEAD` action's, on every stage.
        if k + 1 == self.spec.virtual_stages && self.vocab_rows.is_none() {
            let (loss, saved) = self.head_forward(input, a, tokens, &x, &mut st.answers)?;
            st.loss += loss;
            head = Some(saved);
        } else {
            st.store.put(Slot::ActOut, u, x);
        }
        st.store.save(
            u,
            UnitSaved {
                layers: checkpoint(saved_layers, granularity, &kv_cached),
                head,
                tokens: ids,
            },
        );
        Ok(())
    }

    /// A unit's forward through the layers of `chunk`: a function of its input `x`, the weights
    /// and the K/V prefix of the earlier slices, with no side effect. Returns the output, each
    /// layer's saved record, and each layer's K/V of this slice (for the caller's K/V sink).
    fn chunk_forward(
        &self,
        chunk: usize,
        prefix: &[SliceKvCache],
        mut x: Tensor,
        place: &Place,
        site: &mut dyn AttentionSite,
    ) -> Result<(Tensor, Vec<LayerSaved>, Vec<SliceKv>)> {
        let ctx = self.ctx();
        let layers = &self.weights[chunk];
        let (mut saved, mut kv) = (Vec::with_capacity(layers.len()), Vec::new());
        for (w, cache) in layers.iter().zip(prefix) {
            let (y, s, slice_kv) = layer::forward_at(&ctx, w, cache, &x, place, site)?;
            saved.push(s);
            kv.push(slice_kv);
            x = y;
        }
        Ok((x, saved, kv))
    }

    /// The final norm, LM head and loss of a slice on the last virtual stage: its loss share
    /// and what its backward needs; masked tasks also count the answers scored right.
    fn head_forward(
        &self,
        input: &IterationInput,
        a: &Action,
        tokens: &Tensor,
        x: &Tensor,
        answers: &mut Answers,
    ) -> Result<(f64, HeadSaved)> {
        let (targets, mask) = self.targets(input, a, tokens)?;
        let (loss, saved) = head_forward(
            self.head,
            &self.params[FINAL_NORM],
            self.lm_head()?,
            x,
            &targets,
            mask.as_ref(),
            input.normaliser,
        )?;
        if mask.is_some() {
            answers.add(answer_hits(self.lm_head()?, &saved)?);
        }
        Ok((loss, saved))
    }

    /// A slice's targets `[b, len]` and loss mask, on this stage's device.
    pub(super) fn targets(
        &self,
        input: &IterationInput,
        a: &Action,
        tokens: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let range = input
            .slices_of(a.mb.index())
            .get(a.slice.index())
            .ok_or_else(|| Error::Runtime(format!("slice {} is not in the plan", a.slice.0)))?;
        let (offset, len) = (range.start, range.len());
        let targets = tokens
            .narrow(1, offset + 1, len)?
            .to_device(&self.device)?
            .contiguous()?;
        let mask = match &input.masks {
            Some(masks) => Some(
                masks
                    .get(a.mb.index())
                    .ok_or_else(|| {
                        Error::Runtime(format!("micro-batch {} has no loss mask", a.mb.0))
                    })?
                    .narrow(1, offset, len)?
                    .to_device(&self.device)?
                    .contiguous()?,
            ),
            None => None,
        };
        Ok((targets, mask))
    }

    pub(super) fn backward_input(
        &mut self,
        link: &mut Link,
        input: &IterationInput,
        st: &mut IterState,
        a: &Action,
        k: usize,
        with_weights: bool,
    ) -> Result<()> {
        let u = unit(a);
        let saved = st.store.take_saved(&u)?;
        let layers = whole_records(&u, saved.layers)?;
        let mut pending = PendingWeight::default();
        let dy = match &saved.head {
            Some(h) => {
                let (dx, d_norm) =
                    head_backward_input(self.head, &self.params[FINAL_NORM], self.lm_head()?, h)?;
                add_into(&mut self.grads, FINAL_NORM, &d_norm)?;
                pending.head = Some(h.clone());
                dx
            }
            None => {
                let received = st.store.take(Slot::GradIn, &u).or_else(|| {
                    let after = self.local_neighbour(&u, 1)?;
                    st.store.take(Slot::GradOut, &after)
                });
                received.ok_or_else(|| Error::Runtime("output gradient was not received".into()))?
            }
        };
        let chunk = a.chunk.index();
        let site = self.site(link, st, a, input)?;
        let caches = st
            .store
            .existing_caches(&u)
            .ok_or_else(|| Error::Runtime("no KV cache for this micro-batch".into()))?;
        let (place, len, batch_heads) = match layers.first() {
            Some(l) => {
                let (b, len, _) = l.x.dims3()?;
                (l.place.clone(), len, b * self.model.heads)
            }
            None => (Place::at(0), 0, 0),
        };
        let ((dx, norm_grads, weight_inputs), handed) = at_site(site, |site| {
            self.chunk_backward(chunk, caches, &layers, dy, site)
        })?;
        st.attention += layers.len() as u64 * attended(&place, batch_heads, len, handed);
        let dy = dx;
        pending.layers.extend(weight_inputs);
        for (index, [d_attn, d_mlp]) in norm_grads {
            add_into(
                &mut self.grads,
                &layer_param(index, LAYER_PARTS[0]),
                &d_attn,
            )?;
            add_into(&mut self.grads, &layer_param(index, LAYER_PARTS[5]), &d_mlp)?;
        }
        st.store.release_emptied_caches(&u);
        match saved.tokens {
            Some(ids) => pending.embed = Some((ids, dy)),
            // Under vocabulary parallelism virtual stage 0's gradient goes to its `EMBED_B`.
            None if k > 0 || self.vocab_rows.is_some() => {
                st.store.put(Slot::GradOut, u, dy);
            }
            None => fail!(Runtime, "virtual stage 0 ran a forward without token ids"),
        }
        if with_weights {
            self.backward_weight(pending)
        } else {
            st.store.park(u, pending);
            Ok(())
        }
    }

    /// A unit's input-gradient backward through the layers of `chunk`, last layer first: the
    /// input gradient, each layer's norm-weight gradients and its weight half's inputs.
    #[allow(clippy::type_complexity)]
    fn chunk_backward(
        &self,
        chunk: usize,
        caches: &mut [SliceKvCache],
        records: &[LayerSaved],
        mut dy: Tensor,
        site: &mut dyn AttentionSite,
    ) -> Result<(
        Tensor,
        Vec<(usize, [Tensor; 2])>,
        Vec<(usize, WeightGradInputs)>,
    )> {
        let ctx = self.ctx();
        let (mut norm_grads, mut weight_inputs) = (Vec::new(), Vec::new());
        for ((w, cache), s) in self.weights[chunk]
            .iter()
            .zip(caches.iter_mut())
            .zip(records)
            .rev()
        {
            let (dx, norms, wgi) = layer::backward_input_at(&ctx, w, cache, s, &dy, site)?;
            norm_grads.push((w.index, norms));
            weight_inputs.push((w.index, wgi));
            dy = dx;
        }
        Ok((dy, norm_grads, weight_inputs))
    }

    pub(super) fn backward_weight(&mut self, pending: PendingWeight) -> Result<()> {
        for (index, wgi) in &pending.layers {
            let grads = layer::backward_weight(wgi)?;
            for (i, (dw, db)) in grads.iter().enumerate() {
                let weight = LAYER_PARTS[MATRIX_SLOTS[i]];
                add_into(&mut self.grads, &layer_param(*index, weight), dw)?;
                if let Some(db) = db {
                    add_into(&mut self.grads, &layer_param(*index, LAYER_BIASES[i]), db)?;
                }
            }
        }
        if let Some(h) = &pending.head {
            let g = head_backward_weight(self.head, self.lm_head()?, h)?;
            add_into(
                &mut self.grads,
                if self.model.tie_embeddings {
                    EMBED
                } else {
                    LM_HEAD
                },
                &g,
            )?;
        }
        if let Some((ids, dx)) = &pending.embed {
            let g = embed_backward(&self.params[EMBED], ids, dx)?;
            add_into(&mut self.grads, EMBED, &g)?;
        }
        Ok(())
    }
}
