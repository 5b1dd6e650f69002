//! The trainer's oracle on CUDA: every stage a thread on one GPU, pipelined loss and gradients
//! against single-device training in f64 on the CPU (which the CPU oracle tests tie to an
//! independent autograd reference). Head dim 64, so the attention runs our CUDA kernels.

use std::time::Duration;

use anyhow::Result;
use candle_core::{DType, Device};
use seqpipe_trainer::config::{SlicingMethod, TrainConfig};
use seqpipe_trainer::data::MarkovSource;
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::runtime::{IterationInput, Pipeline, Weights};
use seqpipe_trainer::train::{schedule_config, slice_ranges};

/// One oracle row: a schedule on the GPU against the CPU reference.
#[derive(Debug, Clone)]
pub struct OracleRow {
    /// `slimpipe p=2 m=4 n=4 v=2 f32`.
    pub label: String,
    /// Relative loss error.
    pub loss_err: f64,
    /// Worst `‖g − g_ref‖∞ / ‖g_ref‖∞` over the parameters, and which.
    pub grad_err: (f64, String),
    /// The bound the row must meet.
    pub bound: f64,
    /// Why the run did not finish, when it did not (the row then fails).
    pub error: Option<String>,
}

impl OracleRow {
    /// Whether both errors are within the bound (NaN fails).
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.loss_err <= self.bound && self.grad_err.0 <= self.bound
    }
}

fn model() -> ModelConfig {
    ModelConfig {
        vocab: 256,
        hidden: 256,
        ffn_hidden: 512,
        heads: 4,
        kv_heads: 2,
        layers: 4,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        max_positions: 512,
        tie_embeddings: false,
        head_dim: None,
        rope_scaling: None,
        attention_bias: false,
        mlp_bias: false,
    }
}

fn train_config(
    schedule: &str,
    stages: u32,
    slices: u32,
    chunks: u32,
    slicing: SlicingMethod,
) -> TrainConfig {
    let mut cfg = TrainConfig {
        model: model(),
        ..TrainConfig::default()
    };
    cfg.data.seq_len = 256;
    cfg.data.batch = 2;
    cfg.parallel.schedule = schedule.into();
    cfg.parallel.stages = stages;
    cfg.parallel.microbatches = 4;
    cfg.parallel.slices = slices;
    cfg.parallel.chunks = chunks;
    cfg.parallel.slicing = slicing;
    cfg
}

/// Loss and gradients of one iteration of `cfg` on `device` in `dtype`.
fn iteration(
    cfg: &TrainConfig,
    device: &Device,
    dtype: DType,
) -> Result<(f64, seqpipe_trainer::model::params::TensorMap)> {
    let (m, b, s) = (
        cfg.parallel.microbatches as usize,
        cfg.data.batch,
        cfg.data.seq_len,
    );
    let tokens = MarkovSource::new(cfg.model.vocab, 3).batch(m, b, s, &Device::Cpu)?;
    let input = IterationInput {
        ragged: None,
        documents: None,
        tokens,
        masks: None,
        slices: slice_ranges(cfg)?,
        normaliser: (m * b * s) as f64,
    };
    let mut pl = Pipeline::on_device(
        &cfg.model,
        schedule_config(cfg)?,
        None,
        &OptimConfig::default(),
        Weights::Seed(11),
        dtype,
        Duration::from_secs(120),
        device,
    )?;
    let (reports, _) = pl.run_iteration(&input)?;
    let loss = reports.iter().map(|r| r.loss).sum();
    Ok((loss, pl.gradients()?))
}

/// Runs the schedules on `gpu` and compares each with the f64 CPU single-device reference;
/// `on_row` sees each row as soon as it is measured (a run stopped at its time limit keeps them).
pub fn run(gpu: &Device, mut on_row: impl FnMut(&OracleRow) -> Result<()>) -> Result<()> {
    let started = std::time::Instant::now();
    let reference = train_config("1f1b", 1, 1, 1, SlicingMethod::Uniform);
    let (ref_loss, ref_grads) = iteration(&reference, &Device::Cpu, DType::F64)?;
    eprintln!(
        "oracle: CPU f64 reference in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (schedule, p, n, v, slicing, dtype, bound) in [
        ("1f1b", 2, 1, 1, SlicingMethod::Uniform, DType::F32, 1e-5),
        (
            "seq1f1b",
            2,
            4,
            1,
            SlicingMethod::Balanced,
            DType::F32,
            1e-5,
        ),
        (
            "slimpipe",
            2,
            4,
            2,
            SlicingMethod::Uniform,
            DType::F32,
            1e-5,
        ),
        ("zb-h1", 2, 1, 1, SlicingMethod::Uniform, DType::F32, 1e-5),
        // bf16 storage: only as close as bf16 rounding of weights and activations allows.
        (
            "slimpipe",
            2,
            4,
            2,
            SlicingMethod::Uniform,
            DType::BF16,
            5e-2,
        ),
    ] {
        let cfg = train_config(schedule, p, n, v, slicing);
        let label = format!("{schedule} p={p} m=4 n={n} v={v} {dtype:?}");
        let row_started = std::time::Instant::now();
        let (loss, grads) = match iteration(&cfg, gpu, dtype) {
            Ok(r) => r,
            Err(e) => {
                // One schedule failing on the GPU must not hide the others' results.
                on_row(&OracleRow {
                    label,
                    loss_err: f64::NAN,
                    grad_err: (f64::NAN, String::new()),
                    bound,
                    error: Some(super::gpu_test::one_line(&e)),
                })?;
                continue;
            }
        };
        eprintln!(
            "oracle: {label} in {:.1} s",
            row_started.elapsed().as_secs_f64()
        );
        let mut worst = (0f64, String::new());
        for (name, g) in &grads {
            let err = super::cases::rel_err(&g.to_device(&Device::Cpu)?, &ref_grads[name])?;
            // NaN (an unwritten gradient) must win, so no plain `>`.
            if err.is_nan() || err > worst.0 {
                worst = (err, name.clone());
            }
        }
        on_row(&OracleRow {
            label,
            loss_err: ((loss - ref_loss) / ref_loss).abs(),
            grad_err: worst,
            bound,
            error: None,
        })?;
    }
    Ok(())
}
