//! Kernel check cases: seeded inputs, and each `seqpipe_kernels` op run forward and backward
//! on a device, outputs returned as f32 on the CPU so any two runs can be compared.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use seqpipe_kernels::{
    attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward,
    rms_norm_backward, rms_norm_forward, swiglu_backward, swiglu_forward, AttentionOptions, Rope,
};

/// Named f32 tensors on the CPU.
pub type Named = BTreeMap<String, Tensor>;

/// One op on one set of inputs.
#[derive(Debug, Clone)]
pub struct Case {
    /// Unique name, e.g. `attention_d128_causal_gqa`.
    pub name: String,
    /// Which op (`rms_norm`, `rope`, `swiglu`, `attention`, `cross_entropy`).
    pub op: &'static str,
    /// Inputs as f32 on the CPU (targets as u32).
    pub inputs: Named,
    /// Scalar parameters (also handed to the PyTorch reference).
    pub params: serde_json::Value,
}

fn randn(rng: &mut ChaCha8Rng, shape: &[usize], std: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let x: f64 = StandardNormal.sample(rng);
            (std * x) as f32
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn case(
    name: String,
    op: &'static str,
    inputs: Vec<(&str, Tensor)>,
    params: serde_json::Value,
) -> Case {
    Case {
        name,
        op,
        inputs: inputs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        params,
    }
}

/// The cases `gpu-test` runs: small but with ragged edges (sizes that are not multiples of the
/// kernels' tiles), GQA, causal and unmasked attention, a slice at a non-zero offset.
pub fn all() -> Result<Vec<Case>> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let r = &mut rng;
    let mut cases = vec![
        case(
            "rms_norm".into(),
            "rms_norm",
            vec![
                ("x", randn(r, &[3, 37, 300], 1.0)?),
                ("w", randn(r, &[300], 1.0)?),
                ("dy", randn(r, &[3, 37, 300], 1.0)?),
            ],
            serde_json::json!({"eps": 1e-5}),
        ),
        case(
            "rope_offset".into(),
            "rope",
            vec![
                ("x", randn(r, &[2, 3, 45, 64], 1.0)?),
                ("dy", randn(r, &[2, 3, 45, 64], 1.0)?),
            ],
            serde_json::json!({"offset": 100, "theta": 10000.0, "max_positions": 256}),
        ),
        case(
            "swiglu".into(),
            "swiglu",
            vec![
                ("gate", randn(r, &[5, 77, 129], 3.0)?),
                ("up", randn(r, &[5, 77, 129], 1.0)?),
                ("d", randn(r, &[5, 77, 129], 1.0)?),
            ],
            serde_json::json!({}),
        ),
    ];
    // (d, h, hkv, sq, sk, causal): a slice after a prefix, a whole short sequence, unmasked.
    for (d, h, hkv, sq, sk, causal) in [
        (64, 4, 2, 100, 300, true),
        (128, 4, 1, 77, 77, true),
        (128, 2, 2, 50, 130, false),
        (64, 8, 8, 129, 129, true),
    ] {
        let name = format!(
            "attention_d{d}_h{h}_kv{hkv}_q{sq}_k{sk}_{}",
            if causal { "causal" } else { "full" }
        );
        cases.push(case(
            name,
            "attention",
            vec![
                ("q", randn(r, &[2, h, sq, d], 1.0)?),
                ("k", randn(r, &[2, hkv, sk, d], 1.0)?),
                ("v", randn(r, &[2, hkv, sk, d], 1.0)?),
                ("d_out", randn(r, &[2, h, sq, d], 1.0)?),
            ],
            serde_json::json!({"causal": causal, "scale": 1.0 / (d as f64).sqrt()}),
        ));
    }
    let (n, hidden, vocab) = (150, 64, 1000);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % vocab as u32).collect();
    let mask: Vec<f32> = (0..n).map(|i| if i % 5 == 0 { 0.0 } else { 1.0 }).collect();
    cases.push(case(
        "cross_entropy".into(),
        "cross_entropy",
        vec![
            ("hidden", randn(r, &[n, hidden], 1.0)?),
            ("lm_head", randn(r, &[vocab, hidden], 0.1)?),
            ("targets", Tensor::from_vec(targets, n, &Device::Cpu)?),
            ("mask", Tensor::from_vec(mask, n, &Device::Cpu)?),
        ],
        serde_json::json!({"normaliser": 120.0, "vocab_block": 256}),
    ));
    Ok(cases)
}

/// The inputs of `case` as `dtype` on `device` (u32 targets untouched).
fn load(case: &Case, device: &Device, dtype: DType) -> Result<BTreeMap<String, Tensor>> {
    case.inputs
        .iter()
        .map(|(k, t)| {
            let t = if t.dtype() == DType::U32 || k == "mask" {
                t.clone()
            } else {
                t.to_dtype(dtype)?
            };
            Ok((k.clone(), t.to_device(device)?))
        })
        .collect()
}

fn f32_cpu(outs: Vec<(&str, Tensor)>) -> Result<Named> {
    outs.into_iter()
        .map(|(k, t)| {
            Ok((
                k.to_string(),
                t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            ))
        })
        .collect()
}

fn param(case: &Case, key: &str) -> Result<f64> {
    case.params[key]
        .as_f64()
        .with_context(|| format!("case {} lacks the number {key}", case.name))
}

/// Runs `case` forward and backward on `device` in `dtype`; returns every output as f32 CPU.
pub fn run(case: &Case, device: &Device, dtype: DType) -> Result<Named> {
    let i = load(case, device, dtype)?;
    let t = |k: &str| &i[k];
    match case.op {
        "rms_norm" => {
            let (y, inv) = rms_norm_forward(t("x"), t("w"), param(case, "eps")?)?;
            let (dx, dw) = rms_norm_backward(t("x"), t("w"), &inv, t("dy"))?;
            f32_cpu(vec![("y", y), ("inv_rms", inv), ("dx", dx), ("dw", dw)])
        }
        "rope" => {
            let d = t("x").dims()[3];
            let rope = Rope::new(
                d,
                param(case, "max_positions")? as usize,
                param(case, "theta")?,
                dtype,
                device,
            )?;
            let offset = param(case, "offset")? as usize;
            f32_cpu(vec![
                ("y", rope.forward(t("x"), offset)?),
                ("dx", rope.backward(t("dy"), offset)?),
            ])
        }
        "swiglu" => {
            let out = swiglu_forward(t("gate"), t("up"))?;
            let (dg, du) = swiglu_backward(t("gate"), t("up"), t("d"))?;
            f32_cpu(vec![("out", out), ("d_gate", dg), ("d_up", du)])
        }
        "attention" => {
            let d = t("q").dims()[3];
            let opts = AttentionOptions {
                scale: param(case, "scale")?,
                ..if case.params["causal"].as_bool() == Some(true) {
                    AttentionOptions::causal(d)
                } else {
                    AttentionOptions::full(d)
                }
            };
            let (out, lse) = attention_forward(t("q"), t("k"), t("v"), &opts)?;
            let (dq, dk, dv) =
                attention_backward(t("q"), t("k"), t("v"), &out, &lse, t("d_out"), &opts)?;
            f32_cpu(vec![
                ("out", out),
                ("lse", lse),
                ("dq", dq),
                ("dk", dk),
                ("dv", dv),
            ])
        }
        "cross_entropy" => {
            let (norm, block) = (
                param(case, "normaliser")?,
                param(case, "vocab_block")? as usize,
            );
            let (h, w, tg, m) = (t("hidden"), t("lm_head"), t("targets"), Some(t("mask")));
            let (loss, saved) = cross_entropy_forward(h, w, tg, m, norm, block)?;
            let (dh, dw) = cross_entropy_backward(h, w, tg, m, &saved, norm, block)?;
            let loss = Tensor::new(&[loss as f32], &Device::Cpu)?;
            f32_cpu(vec![
                ("loss", loss),
                ("lse", saved.lse),
                ("d_hidden", dh),
                ("d_lm_head", dw),
            ])
        }
        other => anyhow::bail!("unknown op {other}"),
    }
}

/// `max|got − want| / max|want|`; NaN anywhere (an unwritten, poisoned element) gives NaN.
pub fn rel_err(got: &Tensor, want: &Tensor) -> Result<f64> {
    let g = got.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let w = want.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    if g.len() != w.len() {
        anyhow::bail!("{} elements against {}", g.len(), w.len());
    }
    let scale = w.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
    let mut worst = 0f64;
    for (a, b) in g.iter().zip(&w) {
        let e = (a - b).abs();
        if e.is_nan() {
            return Ok(f64::NAN);
        }
        worst = worst.max(e);
    }
    Ok(worst / scale)
}
