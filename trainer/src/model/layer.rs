//! One Llama decoder layer with an explicit forward and a backward split into input and weight
//! halves (the zero-bubble B/W split).
//!
//! The forward of a slice returns its output and a [`LayerSaved`] holding exactly what the backward
//! needs; the K/V of the slice live in the caller's [`SliceKvCache`] (shared by all slices of a
//! micro-batch). The input-gradient half returns the input gradient, the norm-weight gradients
//! (small: computed at once) and a [`WeightGradInputs`] record from which the weight half computes
//! the seven matrix gradients (and their biases', where the model has them) later.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use seqpipe_kernels::{
    linear_backward_bias, linear_backward_input, linear_backward_weight, linear_forward,
    linear_forward_biased, rms_norm_backward, rms_norm_forward, swiglu_backward, swiglu_forward,
    AttentionOptions, Documents, Rope, SliceKvCache,
};

use super::config::ModelConfig;
use super::names::{layer_param, LAYER_BIASES, LAYER_PARTS};
use super::params::TensorMap;

fn k(e: seqpipe_kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// The weights of one layer (cheap clones of the stage's parameter tensors).
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// Global layer index.
    pub index: usize,
    /// `[attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down]`.
    pub w: [Tensor; 9],
    /// The biases of the seven matrices, in [`MATRIX_SLOTS`] order (`None`: no bias).
    pub b: [Option<Tensor>; 7],
}

impl LayerWeights {
    /// Looks layer `index`'s weights up in a parameter map, with the biases `cfg` says it has
    /// (one missing from the map is an error, never a silent bias-free layer).
    pub fn from_params(params: &TensorMap, cfg: &ModelConfig, index: usize) -> Result<Self> {
        let get = |part: &str| {
            let name = layer_param(index, part);
            params
                .get(&name)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("missing parameter {name}")))
        };
        let w = [
            get(LAYER_PARTS[0])?,
            get(LAYER_PARTS[1])?,
            get(LAYER_PARTS[2])?,
            get(LAYER_PARTS[3])?,
            get(LAYER_PARTS[4])?,
            get(LAYER_PARTS[5])?,
            get(LAYER_PARTS[6])?,
            get(LAYER_PARTS[7])?,
            get(LAYER_PARTS[8])?,
        ];
        let mut b: [Option<Tensor>; 7] = Default::default();
        for (i, slot) in b.iter_mut().enumerate() {
            if cfg.has_bias(i) {
                *slot = Some(get(LAYER_BIASES[i])?);
            }
        }
        Ok(LayerWeights { index, w, b })
    }

    /// `x · wᵀ (+ b)` for matrix `i` of the seven ([`MATRIX_SLOTS`] order).
    fn project(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        let w = &self.w[MATRIX_SLOTS[i]];
        match &self.b[i] {
            Some(b) => linear_forward_biased(x, w, b),
            None => linear_forward(x, w),
        }
        .map_err(k)
    }
}

/// Everything one slice's forward keeps for its backward (K and V are in the [`SliceKvCache`]).
#[derive(Debug, Clone)]
pub struct LayerSaved {
    /// Layer input `[b, s, H]`.
    pub x: Tensor,
    /// Inverse RMS of the attention norm.
    pub inv1: Tensor,
    /// Attention norm output.
    pub h1: Tensor,
    /// Queries after RoPE `[b, h, s, d]`.
    pub q: Tensor,
    /// Attention output `[b, h, s, d]`.
    pub o: Tensor,
    /// Attention log-sum-exp `[b, h, s]`.
    pub lse: Tensor,
    /// Residual after attention.
    pub x2: Tensor,
    /// Inverse RMS of the MLP norm.
    pub inv2: Tensor,
    /// MLP norm output.
    pub h2: Tensor,
    /// Gate projection.
    pub gate: Tensor,
    /// Up projection.
    pub up: Tensor,
    /// SiLU(gate)·up.
    pub act: Tensor,
    /// Where the slice's tokens lie.
    pub place: Place,
}

/// Where a slice's tokens lie in their rows: the first token's index, and the rows' documents
/// when several are packed in a row (none: each row is one sequence).
#[derive(Debug, Clone)]
pub struct Place {
    /// Index of the slice's first token in its rows.
    pub offset: usize,
    /// The packed rows' documents: attention stays inside each, and RoPE positions restart at
    /// each one's first token.
    pub documents: Option<Arc<Documents>>,
}

impl Place {
    /// Tokens from `offset` on of rows that are one sequence each.
    pub fn at(offset: usize) -> Self {
        Place {
            offset,
            documents: None,
        }
    }

    /// RoPE of the slice's `x [b, heads, s, d]`.
    fn rope_forward(&self, rope: &Rope, x: &Tensor) -> Result<Tensor> {
        match &self.documents {
            Some(docs) => rope.forward_documents(x, self.offset, docs),
            None => rope.forward(x, self.offset),
        }
        .map_err(k)
    }

    /// Gradient of [`Place::rope_forward`].
    fn rope_backward(&self, rope: &Rope, dy: &Tensor) -> Result<Tensor> {
        match &self.documents {
            Some(docs) => rope.backward_documents(dy, self.offset, docs),
            None => rope.backward(dy, self.offset),
        }
        .map_err(k)
    }
}

/// Bytes of a tensor's elements.
pub fn bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

impl LayerSaved {
    /// The tensors held (the measured counterpart of the memory model's named terms).
    pub fn tensors(&self) -> [&Tensor; 12] {
        [
            &self.x, &self.inv1, &self.h1, &self.q, &self.o, &self.lse, &self.x2, &self.inv2,
            &self.h2, &self.gate, &self.up, &self.act,
        ]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tensors().into_iter().map(bytes).sum()
    }

    /// The record with `to` applied to every tensor (a move between memory tiers).
    pub fn map(&self, to: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(LayerSaved {
            x: to(&self.x)?,
            inv1: to(&self.inv1)?,
            h1: to(&self.h1)?,
            q: to(&self.q)?,
            o: to(&self.o)?,
            lse: to(&self.lse)?,
            x2: to(&self.x2)?,
            inv2: to(&self.inv2)?,
            h2: to(&self.h2)?,
            gate: to(&self.gate)?,
            up: to(&self.up)?,
            act: to(&self.act)?,
            place: self.place.clone(),
        })
    }
}

/// A layer record without its cheap tensors (selective recomputation, the `memory` crate's
/// `RecomputePolicy::Selective`): both norm outputs and the SwiGLU product are dropped after the
/// forward and rebuilt from the kept inputs and statistics before the backward. The attention
/// core keeps no score matrix to drop (its backward reruns it from `q`, K/V, `o` and `lse`).
#[derive(Debug, Clone)]
pub struct SelectiveSaved {
    /// The record with `h1`, `h2` and `act` taken out.
    kept: [Tensor; 9],
    place: Place,
}

impl LayerSaved {
    /// The record with its cheap tensors dropped.
    pub fn without_cheap(self) -> SelectiveSaved {
        let LayerSaved {
            x,
            inv1,
            q,
            o,
            lse,
            x2,
            inv2,
            gate,
            up,
            place,
            ..
        } = self;
        SelectiveSaved {
            kept: [x, inv1, q, o, lse, x2, inv2, gate, up],
            place,
        }
    }
}

impl SelectiveSaved {
    /// The tensors held.
    pub fn tensors(&self) -> &[Tensor; 9] {
        &self.kept
    }

    /// The record with `to` applied to every tensor (a move between memory tiers).
    pub fn map(&self, to: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let kept = self.kept.each_ref().map(to);
        Ok(SelectiveSaved {
            kept: kept
                .into_iter()
                .collect::<Result<Vec<_>>>()?
                .try_into()
                .expect("nine"),
            place: self.place.clone(),
        })
    }

    /// The whole record again: the norm outputs from the kept inputs (the same kernels on the
    /// same inputs, so the same values as the forward's) and the SwiGLU product from the kept
    /// gate and up projections.
    pub fn restore(self, ctx: &LayerCtx, w: &LayerWeights) -> Result<LayerSaved> {
        let [x, inv1, q, o, lse, x2, inv2, gate, up] = self.kept;
        let eps = ctx.cfg.norm_eps;
        let (h1, _) = rms_norm_forward(&x, &w.w[0], eps).map_err(k)?;
        let (h2, _) = rms_norm_forward(&x2, &w.w[5], eps).map_err(k)?;
        let act = swiglu_forward(&gate, &up).map_err(k)?;
        Ok(LayerSaved {
            x,
            inv1,
            h1,
            q,
            o,
            lse,
            x2,
            inv2,
            h2,
            gate,
            up,
            act,
            place: self.place,
        })
    }
}

/// What the weight half of the backward needs: each matrix's input and output gradient.
#[derive(Debug, Clone)]
pub struct WeightGradInputs {
    /// `(input, d_output)` for wq, wk, wv, wo, w_gate, w_up, w_down (weights 1–4 and 6–8).
    pub pairs: [(Tensor, Tensor); 7],
    /// Which of the seven have a bias (its gradient is the sum of `d_output`).
    pub biased: [bool; 7],
}

impl WeightGradInputs {
    /// The tensors held until the weight half runs (inputs are shared between matrices).
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.pairs.iter().flat_map(|(a, b)| [a, b])
    }
}

/// Positions of the seven matrices in [`LayerWeights::w`], in [`WeightGradInputs::pairs`] order.
pub const MATRIX_SLOTS: [usize; 7] = [1, 2, 3, 4, 6, 7, 8];

/// Shared, read-only context of a layer computation.
pub struct LayerCtx<'a> {
    /// Model sizes.
    pub cfg: &'a ModelConfig,
    /// RoPE tables.
    pub rope: &'a Rope,
    /// Attention options (scale, causal mask, block size).
    pub attention: AttentionOptions,
}

/// `[b, s, heads·d]` → `[b, heads, s, d]`.
fn split_heads(t: &Tensor, heads: usize, d: usize) -> Result<Tensor> {
    let (b, s, _) = t.dims3()?;
    t.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()
}

/// `[b, heads, s, d]` → `[b, s, heads·d]`.
fn merge_heads(t: &Tensor) -> Result<Tensor> {
    let (b, heads, s, d) = t.dims4()?;
    t.transpose(1, 2)?.contiguous()?.reshape((b, s, heads * d))
}

/// The post-RoPE keys and values of one slice in one layer, `[b, kv_heads, s, d]` each: what its
/// forward adds to the layer's K/V prefix.
#[derive(Debug, Clone)]
pub struct SliceKv {
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

/// Where a layer's attention against the K/V prefix is computed: on this stage alone
/// ([`Alone`]), or with part of it done by a SlimPipe exchange partner (the runtime's).
pub trait AttentionSite {
    /// `(out, lse)` of the slice's `q` against `prefix` and its own `k`, `v` (post-RoPE);
    /// with `documents`, each query sees only its own document.
    fn forward(
        &mut self,
        prefix: &SliceKvCache,
        qkv: [&Tensor; 3],
        opts: &AttentionOptions,
        documents: Option<&Documents>,
    ) -> Result<(Tensor, Tensor)>;

    /// `(dq, dk, dv)` of the last slice in `cache` (which it leaves), as
    /// [`SliceKvCache::backward`] (or [`SliceKvCache::backward_documents`] for the documents of
    /// `saved.place`).
    fn backward(
        &mut self,
        cache: &mut SliceKvCache,
        saved: &LayerSaved,
        d_out: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<(Tensor, Tensor, Tensor)>;
}

/// Attention on this stage alone.
pub struct Alone;

impl AttentionSite for Alone {
    fn forward(
        &mut self,
        prefix: &SliceKvCache,
        [q, k, v]: [&Tensor; 3],
        opts: &AttentionOptions,
        documents: Option<&Documents>,
    ) -> Result<(Tensor, Tensor)> {
        match documents {
            Some(docs) => prefix.attend_documents(q, k, v, opts, docs),
            None => prefix.attend(q, k, v, opts),
        }
        .map_err(self::k)
    }

    fn backward(
        &mut self,
        cache: &mut SliceKvCache,
        saved: &LayerSaved,
        d_out: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        backward_alone(cache, saved, d_out, opts)
    }
}

/// The attention backward of the last slice in `cache`, all on this stage.
pub fn backward_alone(
    cache: &mut SliceKvCache,
    saved: &LayerSaved,
    d_out: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (q, o, lse) = (&saved.q, &saved.o, &saved.lse);
    match &saved.place.documents {
        Some(docs) => cache.backward_documents(q, o, lse, d_out, opts, docs),
        None => cache.backward(q, o, lse, d_out, opts),
    }
    .map_err(self::k)
}

/// Forward of one slice `x [b, s, H]` whose tokens lie at `place`, against the K/V of the
/// earlier slices in `prefix`, which it leaves unchanged (a forward can run again:
/// recomputation). Returns the output, what the backward needs, and the slice's own K/V for the
/// caller to append.
pub fn forward(
    ctx: &LayerCtx,
    w: &LayerWeights,
    prefix: &SliceKvCache,
    x: &Tensor,
    place: &Place,
) -> Result<(Tensor, LayerSaved, SliceKv)> {
    forward_at(ctx, w, prefix, x, place, &mut Alone)
}

/// [`forward`] with the attention computed at `site`.
pub fn forward_at(
    ctx: &LayerCtx,
    w: &LayerWeights,
    prefix: &SliceKvCache,
    x: &Tensor,
    place: &Place,
    site: &mut dyn AttentionSite,
) -> Result<(Tensor, LayerSaved, SliceKv)> {
    let (cfg, d) = (ctx.cfg, ctx.cfg.head_dim());
    let (attn_norm, mlp_norm) = (&w.w[0], &w.w[5]);
    let (h1, inv1) = rms_norm_forward(x, attn_norm, cfg.norm_eps).map_err(k)?;
    let q = split_heads(&w.project(&h1, 0)?, cfg.heads, d)?;
    let kk = split_heads(&w.project(&h1, 1)?, cfg.kv_heads, d)?;
    let v = split_heads(&w.project(&h1, 2)?, cfg.kv_heads, d)?;
    let q = place.rope_forward(ctx.rope, &q)?;
    let kk = place.rope_forward(ctx.rope, &kk)?;
    let docs = place.documents.as_deref();
    let (o, lse) = site.forward(prefix, [&q, &kk, &v], &ctx.attention, docs)?;
    let x2 = (x + w.project(&merge_heads(&o)?, 3)?)?;
    let (h2, inv2) = rms_norm_forward(&x2, mlp_norm, cfg.norm_eps).map_err(k)?;
    let gate = w.project(&h2, 4)?;
    let up = w.project(&h2, 5)?;
    let act = swiglu_forward(&gate, &up).map_err(k)?;
    let y = (&x2 + w.project(&act, 6)?)?;
    let saved = LayerSaved {
        x: x.clone(),
        inv1,
        h1,
        q,
        o,
        lse,
        x2,
        inv2,
        h2,
        gate,
        up,
        act,
        place: place.clone(),
    };
    Ok((y, saved, SliceKv { k: kk, v }))
}

/// Input half of the backward of the slice `saved` came from (the last slice in `cache`).
/// Returns `dx`, the two norm-weight gradients and the weight half's inputs.
pub fn backward_input(
    ctx: &LayerCtx,
    w: &LayerWeights,
    cache: &mut SliceKvCache,
    saved: &LayerSaved,
    dy: &Tensor,
) -> Result<(Tensor, [Tensor; 2], WeightGradInputs)> {
    backward_input_at(ctx, w, cache, saved, dy, &mut Alone)
}

/// [`backward_input`] with the attention's backward computed at `site`.
pub fn backward_input_at(
    ctx: &LayerCtx,
    w: &LayerWeights,
    cache: &mut SliceKvCache,
    saved: &LayerSaved,
    dy: &Tensor,
    site: &mut dyn AttentionSite,
) -> Result<(Tensor, [Tensor; 2], WeightGradInputs)> {
    let [attn_norm, wq, wk, wv, wo, mlp_norm, w_gate, w_up, w_down] = &w.w;
    // MLP: y = x2 + down(swiglu(gate(h2), up(h2))).
    let d_act = linear_backward_input(dy, w_down).map_err(k)?;
    let (d_gate, d_up) = swiglu_backward(&saved.gate, &saved.up, &d_act).map_err(k)?;
    let dh2 = (linear_backward_input(&d_gate, w_gate).map_err(k)?
        + linear_backward_input(&d_up, w_up).map_err(k)?)?;
    let (dx2_norm, d_mlp_norm) =
        rms_norm_backward(&saved.x2, mlp_norm, &saved.inv2, &dh2).map_err(k)?;
    let dx2 = (dy + dx2_norm)?;
    // Attention: x2 = x + o_proj(attention(rope(q), rope(k), v)).
    let o_flat = merge_heads(&saved.o)?;
    let d_o = split_heads(
        &linear_backward_input(&dx2, wo).map_err(k)?,
        ctx.cfg.heads,
        ctx.cfg.head_dim(),
    )?;
    let (dq, dk, dv) = site.backward(cache, saved, &d_o, &ctx.attention)?;
    let dq = merge_heads(&saved.place.rope_backward(ctx.rope, &dq)?)?;
    let dk = merge_heads(&saved.place.rope_backward(ctx.rope, &dk)?)?;
    let dv = merge_heads(&dv)?;
    let dh1 = ((linear_backward_input(&dq, wq).map_err(k)?
        + linear_backward_input(&dk, wk).map_err(k)?)?
        + linear_backward_input(&dv, wv).map_err(k)?)?;
    let (dx_norm, d_attn_norm) =
        rms_norm_backward(&saved.x, attn_norm, &saved.inv1, &dh1).map_err(k)?;
    let dx = (&dx2 + dx_norm)?;
    let pairs = [
        (saved.h1.clone(), dq),
        (saved.h1.clone(), dk),
        (saved.h1.clone(), dv),
        (o_flat, dx2.clone()),
        (saved.h2.clone(), d_gate),
        (saved.h2.clone(), d_up),
        (saved.act.clone(), dy.clone()),
    ];
    let biased = w.b.each_ref().map(Option::is_some);
    Ok((
        dx,
        [d_attn_norm, d_mlp_norm],
        WeightGradInputs { pairs, biased },
    ))
}

/// Weight half: the seven matrix gradients with their biases' (`None` where a matrix has no
/// bias), in [`MATRIX_SLOTS`] order.
pub fn backward_weight(inputs: &WeightGradInputs) -> Result<[(Tensor, Option<Tensor>); 7]> {
    let grads: Vec<(Tensor, Option<Tensor>)> = inputs
        .pairs
        .iter()
        .zip(inputs.biased)
        .map(|((x, dy), biased)| {
            let dw = linear_backward_weight(x, dy).map_err(k)?;
            let db = biased
                .then(|| linear_backward_bias(dy).map_err(k))
                .transpose()?;
            Ok((dw, db))
        })
        .collect::<Result<_>>()?;
    Ok(grads.try_into().expect("seven pairs give seven gradients"))
}
