//! `xtask bench gpu` (GPU machine, cuda build): measured figures side by side in one run.
//!
//! 1. The bf16 matmul ceiling (candle → cuBLAS, 8192³): the MFU denominator.
//! 2. Attention forward+backward, bf16, causal bottom-right, GQA (32 query / 8 KV heads, d 128):
//!    our kernels against PyTorch's `scaled_dot_product_attention` on the same shapes, slices of
//!    2K–16K tokens against prefixes up to 128K. FLOPs: `4·h·d` per visible (query, key) pair
//!    forward, 2.5× that backward (FlashAttention's convention).
//! 3. One Llama-7B-shaped layer, forward+backward over the slices of one sequence (SliceKvCache
//!    walk): model FLOPs `6·(matmul params)·tokens + 12·h·d·pairs`, against the ceiling.
//! 4. A sliced training step of a 1.1B Llama at 32K on one GPU (two stage threads, SlimPipe):
//!    tokens/s, MFU against the ceiling, and memory three ways (`bench_step.rs`).
//! 5. The planner's cluster MFU for Llama-7B on 32 H100 at 128K with the efficiency measured in 3
//!    instead of its assumed 60 % (simulated, labelled so).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use seqpipe_kernels::{
    attention_backward, attention_forward, AttentionOptions, Rope, SliceKvCache,
};
use seqpipe_memory::gpu_preset;
use seqpipe_slicing::CostModel;
use seqpipe_trainer::model::layer::{self, LayerCtx, LayerWeights};
use seqpipe_trainer::model::params::{init_params, param_specs, Holding};
use seqpipe_trainer::model::ModelConfig;

use super::bench_step::{llama_1b, training_step};
use super::gpu_test::{device_description, one_line, open_gpu};
use super::report::Report;
use crate::bench::sim::{best_per_family, space, Setup};

/// Median seconds of `reps` runs of `f` after two warm-ups, synchronising the device.
fn time(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut t = Vec::with_capacity(reps);
    for i in 0..reps + 2 {
        dev.synchronize()?;
        let start = Instant::now();
        f()?;
        dev.synchronize()?;
        if i >= 2 {
            t.push(start.elapsed().as_secs_f64());
        }
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn ceiling(gpu: &Device) -> Result<f64> {
    let n = 8192;
    let a = Tensor::randn(0f32, 1.0, (n, n), gpu)?.to_dtype(DType::BF16)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), gpu)?.to_dtype(DType::BF16)?;
    let s = time(gpu, 10, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / s)
}

/// Attention shape `(sq, sk)` at b = 1, h = 32, hkv = 8, d = 128.
const HEADS: (usize, usize, usize) = (32, 8, 128);

fn attention_flops(sq: usize, sk: usize) -> f64 {
    let (h, _, d) = HEADS;
    // Bottom-right causal: query i of the slice sees (sk − sq) prefix keys plus i + 1 of its own.
    let visible = sq as f64 * (sk - sq) as f64 + sq as f64 * (sq as f64 + 1.0) / 2.0;
    3.5 * 4.0 * (h * d) as f64 * visible
}

fn our_attention(gpu: &Device, sq: usize, sk: usize) -> Result<f64> {
    let (h, hkv, d) = HEADS;
    let q = Tensor::randn(0f32, 1.0, (1, h, sq, d), gpu)?.to_dtype(DType::BF16)?;
    let k = Tensor::randn(0f32, 1.0, (1, hkv, sk, d), gpu)?.to_dtype(DType::BF16)?;
    let v = Tensor::randn(0f32, 1.0, (1, hkv, sk, d), gpu)?.to_dtype(DType::BF16)?;
    let d_out = Tensor::randn(0f32, 1.0, (1, h, sq, d), gpu)?.to_dtype(DType::BF16)?;
    let opts = AttentionOptions::causal(d);
    time(gpu, 5, || {
        let (out, lse) = attention_forward(&q, &k, &v, &opts)?;
        attention_backward(&q, &k, &v, &out, &lse, &d_out, &opts)?;
        Ok(())
    })
}

/// PyTorch SDPA milliseconds per shape, from `gpu/torch_bench.py`.
fn torch_attention(
    script: &Path,
    out: &Path,
    shapes: &[(usize, usize)],
) -> Result<(String, Vec<f64>)> {
    let (h, hkv, d) = HEADS;
    let list: Vec<_> = shapes
        .iter()
        .map(|&(sq, sk)| serde_json::json!({"b": 1, "h": h, "hkv": hkv, "sq": sq, "sk": sk, "d": d, "reps": 5}))
        .collect();
    let (src, dst) = (out.join("sdpa_shapes.json"), out.join("sdpa_times.json"));
    std::fs::write(&src, serde_json::to_string(&list)?)?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let run = Command::new(&python)
        .arg(script)
        .arg(&src)
        .arg(&dst)
        .output()
        .context("running python3")?;
    if !run.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&dst)?)?;
    let ms: Vec<f64> = serde_json::from_value(v["ms"].clone())?;
    Ok((
        format!(
            "torch {} on {}",
            v["torch"].as_str().unwrap_or("?"),
            v["device"].as_str().unwrap_or("?")
        ),
        ms,
    ))
}

fn llama_7b() -> ModelConfig {
    ModelConfig {
        vocab: 32_000,
        hidden: 4096,
        ffn_hidden: 11_008,
        heads: 32,
        kv_heads: 32,
        layers: 32,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        max_positions: 131_072,
        tie_embeddings: false,
        head_dim: None,
        rope_scaling: None,
        attention_bias: false,
        mlp_bias: false,
    }
}

/// Model FLOPs of one layer, forward + backward, over a `context`-token sequence.
fn layer_flops(m: &ModelConfig, context: usize) -> f64 {
    let (h, f, kv) = (
        m.hidden as f64,
        m.ffn_hidden as f64,
        (m.kv_heads * m.head_dim()) as f64,
    );
    let matmul_params = h * (h + 2.0 * kv) + h * h + 3.0 * h * f;
    let pairs = CostModel::attention_pairs(0, context as u64);
    3.0 * (2.0 * matmul_params * context as f64 + 4.0 * h * pairs)
}

/// Seconds of one layer's forward+backward over `context` tokens cut into `slices`.
fn layer_walk(gpu: &Device, m: &ModelConfig, context: usize, slices: usize) -> Result<f64> {
    // One chunk holding layer 0 (a Vec of one range, by design).
    #[allow(clippy::single_range_in_vec_init)]
    let holding = Holding {
        layers: vec![0..1],
        embedding: false,
        head: false,
        vocab_rows: None,
    };
    let params = init_params(&param_specs(m, &holding), 5, DType::BF16, gpu)?;
    let w = LayerWeights::from_params(&params, m, 0)?;
    let rope = Rope::new(m.head_dim(), context, m.rope_theta, DType::BF16, gpu)?;
    let ctx = LayerCtx {
        cfg: m,
        rope: &rope,
        attention: AttentionOptions::causal(m.head_dim()),
    };
    let len = context / slices;
    let xs: Vec<Tensor> = (0..slices)
        .map(|_| Tensor::randn(0f32, 1.0, (1, len, m.hidden), gpu)?.to_dtype(DType::BF16))
        .collect::<candle_core::Result<_>>()?;
    let dy = Tensor::randn(0f32, 1.0, (1, len, m.hidden), gpu)?.to_dtype(DType::BF16)?;
    time(gpu, 3, || {
        let mut cache = SliceKvCache::new();
        let mut saved = Vec::with_capacity(slices);
        for (i, x) in xs.iter().enumerate() {
            let (_, s, kv) = layer::forward(&ctx, &w, &cache, x, i * len)?;
            cache.append(&kv.k, &kv.v)?;
            saved.push(s);
        }
        for s in saved.iter().rev() {
            let (_, _, inputs) = layer::backward_input(&ctx, &w, &mut cache, s, &dy)?;
            layer::backward_weight(&inputs)?;
        }
        Ok(())
    })
}

fn gib(bytes: f64) -> String {
    format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
}

/// Part 2: one table row per attention shape; a shape that fails is an error row.
fn attention_rows(md: &mut Report, torch_script: &Path, out: &Path, quick: bool) -> Result<()> {
    let gpu = open_gpu()?;
    let shapes: Vec<(usize, usize)> = if quick {
        vec![(2048, 2048), (4096, 8192)]
    } else {
        vec![
            (2048, 2048),
            (4096, 4096),
            (8192, 8192),
            (16384, 16384),
            (4096, 32768),
            (8192, 65536),
            (16384, 131072),
        ]
    };
    writeln!(
        md,
        "## Attention fwd+bwd, bf16, causal bottom-right, h 32 / kv 8, d 128\n"
    )?;
    let torch = torch_attention(torch_script, out, &shapes);
    match &torch {
        Ok((about, _)) => writeln!(md, "PyTorch: {about}\n")?,
        Err(e) => writeln!(md, "PyTorch timing failed: {}\n", one_line(e))?,
    }
    writeln!(md, "| slice | prefix+slice | ours ms | ours TFLOP/s | SDPA ms | SDPA TFLOP/s | ours ÷ SDPA speed (goal ≥ 1.0) |\n|---|---|---|---|---|---|---|")?;
    for (i, &(sq, sk)) in shapes.iter().enumerate() {
        let flops = attention_flops(sq, sk);
        let theirs = torch.as_ref().ok().map(|(_, ms)| ms[i] / 1e3);
        let cell = |s: Option<f64>| s.map_or("n/a".into(), |s| format!("{:.2}", s * 1e3));
        let tf = |s: Option<f64>| s.map_or("n/a".into(), |s| format!("{:.0}", flops / s / 1e12));
        match our_attention(&gpu, sq, sk) {
            Ok(ours) => writeln!(
                md,
                "| {sq} | {sk} | {} | {} | {} | {} | {} |",
                cell(Some(ours)),
                tf(Some(ours)),
                cell(theirs),
                tf(theirs),
                theirs.map_or("n/a".into(), |t| format!("{:.2}", t / ours))
            )?,
            Err(e) => writeln!(
                md,
                "| {sq} | {sk} | error: {} | | {} | {} | |",
                one_line(&e),
                cell(theirs),
                tf(theirs)
            )?,
        }
    }
    Ok(())
}

/// Part 3: one Llama-7B layer walking the slices of a sequence; its achieved FLOP/s, if it ran.
fn layer_rows(md: &mut Report, gpu: &Device, quick: bool, peak: f64) -> Result<Option<f64>> {
    let m7 = llama_7b();
    let (context, slices) = if quick { (8192, 2) } else { (32_768, 8) };
    writeln!(md, "\n## One Llama-7B layer, fwd+bwd over a {context}-token sequence in {slices} slices, bf16\n")?;
    match layer_walk(gpu, &m7, context, slices) {
        Ok(s) => {
            let achieved = layer_flops(&m7, context) / s;
            writeln!(md, "| seconds | TFLOP/s | MFU vs ceiling (goal ≥ 55 %) |\n|---|---|---|\n| {s:.3} | {:.0} | {:.1} % |", achieved / 1e12, 100.0 * achieved / peak)?;
            Ok(Some(achieved))
        }
        Err(e) => {
            writeln!(md, "layer benchmark failed: {}", one_line(&e))?;
            Ok(None)
        }
    }
}

/// Part 4: the 1.1B training step with measured and predicted memory.
fn step_rows(md: &mut Report, gpu: &Device, quick: bool, peak: f64) -> Result<()> {
    let (seq, n) = if quick { (4096, 2) } else { (32_768, 8) };
    let model = llama_1b(llama_7b());
    writeln!(md, "\n## Training step, 1.1B Llama, {seq} tokens × 2 micro-batches, SlimPipe p=2 v=2 n={n} (stage threads on one GPU), bf16\n")?;
    let f = training_step(gpu, model.clone(), seq, n, 2)?;
    let flops = 3.0 * CostModel::flops(&model.shape())?.sequence(seq as u64) * 2.0;
    writeln!(md, "| seconds | tokens/s | MFU vs ceiling |\n|---|---|---|")?;
    writeln!(
        md,
        "| {:.2} | {:.0} | {:.1} % |\n",
        f.seconds,
        (2 * seq) as f64 / f.seconds,
        100.0 * flops / f.seconds / peak
    )?;
    let predicted_saved: Option<f64> = f.saved_predicted.as_ref().map(|v| v.iter().sum());
    let measured_saved: usize = f.saved_measured.iter().sum();
    writeln!(md, "| memory | runtime bookkeeping | planner prediction | allocator (driver, sampled every ms) |\n|---|---|---|---|")?;
    writeln!(
        md,
        "| saved activations, both stages (sum of per-stage peaks) | {} | {} | |",
        gib(measured_saved as f64),
        predicted_saved.map_or("n/a".into(), gib)
    )?;
    writeln!(
        md,
        "| bf16 parameters + f32 gradients + f32 AdamW moments | {} | {} | |",
        gib(f.state_bytes as f64),
        gib(f.state_bytes as f64)
    )?;
    writeln!(
        md,
        "| device memory used by the step (peak − before) | | {} (states + saved; no transients) | {} |",
        predicted_saved.map_or("n/a".into(), |s| gib(s + f.state_bytes as f64)),
        gib(f.used_peak.saturating_sub(f.used_before) as f64)
    )?;
    Ok(())
}

/// Runs the measurements and writes `out/bench.md`, line by line.
pub fn run(torch_script: &Path, out: &Path, quick: bool, parts: &[String]) -> Result<()> {
    let part = |name: &str| parts.iter().any(|p| p == name);
    let gpu = open_gpu()?;
    let mut md = Report::create(&out.join("bench.md"))?;
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    writeln!(
        md,
        "# seqpipe bench gpu (measured, {date})\n\ndevice: {}\n",
        device_description()
    )?;
    let peak = ceiling(&gpu)?;
    writeln!(
        md,
        "bf16 matmul ceiling (candle/cuBLAS, 8192³, median of 10): **{:.0} TFLOP/s**\n",
        peak / 1e12
    )?;
    if part("attention") {
        if let Err(e) = attention_rows(&mut md, torch_script, out, quick) {
            writeln!(md, "\nattention benchmark failed: {}", one_line(&e))?;
        }
    }

    let achieved = if part("layer") {
        layer_rows(&mut md, &gpu, quick, peak)?
    } else {
        None
    };
    if part("step") {
        if let Err(e) = step_rows(&mut md, &gpu, quick, peak) {
            writeln!(md, "\ntraining-step benchmark failed: {}", one_line(&e))?;
        }
    }
    if let Some(achieved) = achieved {
        cluster_rows(&mut md, achieved)?;
    }
    Ok(())
}

/// Part 5: the planner's cluster MFU with the measured layer efficiency.
fn cluster_rows(md: &mut Report, achieved: f64) -> Result<()> {
    let h100 = gpu_preset("h100")?;
    let efficiency = (achieved / h100.peak_flops).min(1.0);
    let mut sp = space(
        &Setup {
            model: "llama-7b",
            gpu: "h100",
            gpus: 32,
            global_batch: 32,
            max_cp: 4,
        },
        128 * 1024,
    )?;
    sp.efficiency = efficiency.into();
    writeln!(md, "\n## Predicted cluster MFU (simulated): Llama-7B, 32 × H100, 128K, kernel efficiency {:.1} % of 989 TFLOP/s (measured above)\n", 100.0 * efficiency)?;
    writeln!(md, "| schedule | predicted MFU | fits |\n|---|---|---|")?;
    for (family, e) in best_per_family(&sp) {
        writeln!(md, "| {family} | {:.1} % | {} |", 100.0 * e.mfu, e.fits())?;
    }
    Ok(())
}
