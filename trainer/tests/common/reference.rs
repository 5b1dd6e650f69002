//! A single-device, unsliced Llama forward written independently of the trainer with candle's
//! composite ops, differentiated by candle's autograd: the oracle the pipelined runs must equal.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var, D};
use seqpipe_trainer::model::ModelConfig;

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// Llama RoPE (HF `rotate_half` convention) at positions `0..s` of `x [b, h, s, d]`.
fn rope(x: &Tensor, theta: f64) -> candle_core::Result<Tensor> {
    let (_, _, s, d) = x.dims4()?;
    let half = d / 2;
    let mut cos = Vec::with_capacity(s * d);
    let mut sin = Vec::with_capacity(s * d);
    for pos in 0..s {
        for j in 0..d {
            let angle = pos as f64 * theta.powf(-2.0 * (j % half) as f64 / d as f64);
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (s, d), x.device())?.to_dtype(x.dtype())?;
    let sin = Tensor::from_vec(sin, (s, d), x.device())?.to_dtype(x.dtype())?;
    let rotated = Tensor::cat(
        &[&x.narrow(3, half, half)?.neg()?, &x.narrow(3, 0, half)?],
        3,
    )?;
    x.broadcast_mul(&cos)?.add(&rotated.broadcast_mul(&sin)?)
}

/// `[b, hkv, s, d]` → `[b, h, s, d]`: KV head `j` serves query heads `j·g .. (j+1)·g`.
fn repeat_kv(x: &Tensor, groups: usize) -> candle_core::Result<Tensor> {
    let (b, hkv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, hkv, groups, s, d))?
        .reshape((b, hkv * groups, s, d))
}

fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_matmul(&w.t()?)
}

/// Projection `part` (e.g. `self_attn.q_proj`) of the layer whose parameters `get` names, plus
/// its bias when the parameters hold one.
fn project(
    x: &Tensor,
    p: &BTreeMap<String, Var>,
    layer: usize,
    part: &str,
) -> candle_core::Result<Tensor> {
    let name = |kind: &str| format!("model.layers.{layer}.{part}.{kind}");
    let y = linear(x, p[&name("weight")].as_tensor())?;
    match p.get(&name("bias")) {
        Some(b) => y.broadcast_add(b.as_tensor()),
        None => Ok(y),
    }
}

/// Mean next-token loss over all micro-batches (over the targets a mask scores, when masks are
/// given), as a scalar tensor in the autograd graph.
pub fn loss(
    cfg: &ModelConfig,
    p: &BTreeMap<String, Var>,
    batches: &[Tensor],
    masks: Option<&[Tensor]>,
) -> candle_core::Result<Tensor> {
    let get = |name: &str| p[name].as_tensor().clone();
    let (h, hkv, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim());
    let mut total: Option<Tensor> = None;
    let mut count = 0f64;
    for (mb, tokens) in batches.iter().enumerate() {
        let (b, s1) = tokens.dims2()?;
        let s = s1 - 1;
        let ids = tokens.narrow(1, 0, s)?.flatten_all()?;
        let targets = tokens.narrow(1, 1, s)?.flatten_all()?;
        let mut x = get("model.embed_tokens.weight")
            .index_select(&ids, 0)?
            .reshape((b, s, cfg.hidden))?;
        // Additive causal mask: far below any score, so exp() underflows to exactly 0.
        let mask: Vec<f64> = (0..s * s)
            .map(|i| if i % s > i / s { -1e30 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (s, s), x.device())?.to_dtype(x.dtype())?;
        for l in 0..cfg.layers {
            let w = |part: &str| get(&format!("model.layers.{l}.{part}"));
            let hn = rms_norm(&x, &w("input_layernorm.weight"), cfg.norm_eps)?;
            let heads =
                |t: Tensor, n: usize| t.reshape((b, s, n, d))?.transpose(1, 2)?.contiguous();
            let q = rope(
                &heads(project(&hn, p, l, "self_attn.q_proj")?, h)?,
                cfg.rope_theta,
            )?;
            let k = rope(
                &heads(project(&hn, p, l, "self_attn.k_proj")?, hkv)?,
                cfg.rope_theta,
            )?;
            let v = heads(project(&hn, p, l, "self_attn.v_proj")?, hkv)?;
            let (k, v) = (repeat_kv(&k, h / hkv)?, repeat_kv(&v, h / hkv)?);
            let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
            let e = scores.exp()?;
            let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let o = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, s, h * d))?;
            x = (x + project(&o, p, l, "self_attn.o_proj")?)?;
            let hn = rms_norm(&x, &w("post_attention_layernorm.weight"), cfg.norm_eps)?;
            let g = project(&hn, p, l, "mlp.gate_proj")?;
            let u = project(&hn, p, l, "mlp.up_proj")?;
            let silu = (&g * (g.neg()?.exp()? + 1.0)?.recip()?)?;
            x = (x + project(&(silu * u)?, p, l, "mlp.down_proj")?)?;
        }
        let hn =
            rms_norm(&x, &get("model.norm.weight"), cfg.norm_eps)?.reshape((b * s, cfg.hidden))?;
        let head = if cfg.tie_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let logits = linear(&hn, &get(head))?;
        let e = logits.exp()?;
        let log_probs = logits.broadcast_sub(&e.sum_keepdim(D::Minus1)?.log()?)?;
        let mut nll = log_probs.gather(&targets.unsqueeze(1)?, 1)?.neg()?;
        match masks {
            Some(masks) => {
                let w = masks[mb]
                    .flatten_all()?
                    .unsqueeze(1)?
                    .to_dtype(nll.dtype())?;
                count += w.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                nll = (nll * w)?;
            }
            None => count += (b * s) as f64,
        }
        let nll = nll.sum_all()?;
        total = Some(match total {
            Some(t) => (t + nll)?,
            None => nll,
        });
    }
    total.expect("at least one micro-batch") / count
}

/// Loss and gradient of every parameter by candle autograd.
pub fn loss_and_grads(
    cfg: &ModelConfig,
    params: &BTreeMap<String, Tensor>,
    batches: &[Tensor],
) -> (f64, BTreeMap<String, Tensor>) {
    loss_and_grads_masked(cfg, params, batches, None)
}

/// [`loss_and_grads`] of the targets the masks score.
pub fn loss_and_grads_masked(
    cfg: &ModelConfig,
    params: &BTreeMap<String, Tensor>,
    batches: &[Tensor],
    masks: Option<&[Tensor]>,
) -> (f64, BTreeMap<String, Tensor>) {
    let vars: BTreeMap<String, Var> = params
        .iter()
        .map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap()))
        .collect();
    let l = loss(cfg, &vars, batches, masks).unwrap();
    let store = l.backward().unwrap();
    let grads = vars
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                store
                    .get(v.as_tensor())
                    .expect("every parameter gets a gradient")
                    .clone(),
            )
        })
        .collect();
    (
        l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(),
        grads,
    )
}
