//! Shared helpers of the trainer's integration tests.
// A one-slice plan is a Vec holding one token range, by design.
#![allow(clippy::single_range_in_vec_init)]
#![allow(dead_code)]

pub mod reference;

use std::collections::BTreeMap;
use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use seqpipe_slicing::{balanced, uniform, CostModel, Padding};
use seqpipe_trainer::data::MarkovSource;
use seqpipe_trainer::model::params::{init_params, param_specs, Holding};
use seqpipe_trainer::model::ModelConfig;

/// The oracle tests' model: 8 layers so that 4 stages × 2 chunks each get one.
pub fn tiny_model() -> ModelConfig {
    ModelConfig {
        vocab: 32,
        hidden: 16,
        ffn_hidden: 24,
        heads: 4,
        kv_heads: 2,
        layers: 8,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        max_positions: 64,
        tie_embeddings: false,
        head_dim: None,
        rope_scaling: None,
        attention_bias: false,
        mlp_bias: false,
    }
}

/// How a sequence is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slicing {
    /// One slice.
    None,
    /// Equal lengths.
    Uniform,
    /// Equal FLOPs.
    Balanced,
}

/// Token ranges for `n` slices of `seq` tokens.
pub fn slice_ranges(
    model: &ModelConfig,
    slicing: Slicing,
    seq: usize,
    n: usize,
) -> Vec<Range<usize>> {
    let cost = CostModel::flops(&model.shape()).unwrap();
    let plan = match slicing {
        Slicing::None => return vec![0..seq],
        Slicing::Uniform => uniform(seq as u64, n, 1, Padding::None, &cost).unwrap(),
        Slicing::Balanced => balanced(seq as u64, n, 1, &cost).unwrap(),
    };
    plan.slices
        .iter()
        .map(|s| s.start as usize..s.end as usize)
        .collect()
}

/// Every parameter of the whole model, initialised from `seed`.
pub fn full_params(model: &ModelConfig, seed: u64, dtype: DType) -> BTreeMap<String, Tensor> {
    let holding = Holding {
        layers: vec![0..model.layers],
        embedding: true,
        head: true,
        vocab_rows: None,
    };
    init_params(&param_specs(model, &holding), seed, dtype, &Device::Cpu).unwrap()
}

/// `m` micro-batches of `[b, seq + 1]` tokens.
pub fn data(model: &ModelConfig, m: usize, b: usize, seq: usize, seed: u64) -> Vec<Tensor> {
    MarkovSource::new(model.vocab, seed)
        .batch(m, b, seq, &Device::Cpu)
        .unwrap()
}

/// `‖a − b‖∞ / ‖b‖∞`.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    diff / scale.max(f64::MIN_POSITIVE)
}

/// The worst relative error over two maps with the same names (panics on a missing name).
pub fn worst_rel_err(
    got: &BTreeMap<String, Tensor>,
    want: &BTreeMap<String, Tensor>,
) -> (f64, String) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "parameter sets differ"
    );
    want.iter()
        .map(|(n, w)| (rel_err(&got[n], w), n.clone()))
        .fold((0.0, String::new()), |a, b| if b.0 > a.0 { b } else { a })
}

/// `(step, loss)` of every line of a JSONL metrics file.
pub fn step_losses(metrics: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

/// A short 2-stage Seq1F1B training run (the checkpoint and resume tests add their options).
pub const SMALL_RUN: &[&str] = &[
    "train",
    "--seq-len",
    "32",
    "--stages",
    "2",
    "--schedule",
    "seq1f1b",
    "--chunks",
    "1",
];

/// The numbers of the first line of `text` that contains `marker` (panics naming the text
/// when none does).
pub fn figures_on_line(text: &str, marker: &str) -> Vec<f64> {
    let line = text
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?} in\n{text}"));
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Runs the `seqpipe` binary: (success, stdout, stderr); no backtraces, so errors read as users
/// see them.
pub fn seqpipe(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `recompute = auto` planned for `pl`'s current schedule (no `RECOMPUTE` yet) and `b`
/// sequences per micro-batch cut into `slices`, under per-stage activation budgets midway
/// between each stage's predicted peak with nothing recomputed and with every layer recomputed,
/// and those budgets. The f32 byte model prices the plan; the plan itself is per-unit layer
/// counts, whatever dtype runs it.
pub fn adaptive_midway(
    pl: &seqpipe_trainer::runtime::Pipeline,
    slices: &[Range<usize>],
    b: usize,
) -> (seqpipe_trainer::runtime::recompute::Recompute, Vec<f64>) {
    use seqpipe_trainer::predict::PredictInput;
    use seqpipe_trainer::runtime::adaptive;
    use seqpipe_trainer::runtime::recompute::Recompute;
    let model = tiny_model();
    let input = PredictInput {
        ragged: None,
        model: &model,
        dtype: DType::F32,
        batch: b,
        slices,
        schedule: &pl.schedule,
        partition: &pl.partition,
        recompute: &Recompute::None,
    };
    let stages = pl.schedule.actions.len();
    let problem = adaptive::program(&input, &vec![0.0; stages])
        .unwrap()
        .problem;
    let peak = |stage: usize, c: u64| {
        let values = vec![c; problem.weights.len()];
        let on_stage = problem.constraints.iter().filter(|k| k.stage == stage);
        on_stage.map(|k| k.usage(&values)).fold(0.0, f64::max)
    };
    let budgets: Vec<f64> = (0..stages)
        .map(|r| (peak(r, 0) + peak(r, problem.max_layers)) / 2.0)
        .collect();
    let plan = adaptive::plan(&input, &budgets).unwrap();
    assert!(plan.units() > 0, "midway budgets recompute something");
    (Recompute::Auto { plan: Some(plan) }, budgets)
}

/// A one-process pipeline of `cfg` for `model`, initialised from `seed`, with the default
/// optimizer and a 30-second message timeout.
pub fn pipeline_of(
    model: &ModelConfig,
    cfg: seqpipe_schedule::ScheduleConfig,
    dtype: DType,
    seed: u64,
) -> seqpipe_trainer::runtime::Pipeline {
    seqpipe_trainer::runtime::Pipeline::new(
        model,
        cfg,
        None,
        &seqpipe_trainer::optim::OptimConfig::default(),
        seed,
        dtype,
        std::time::Duration::from_secs(30),
    )
    .unwrap()
}

/// `m` micro-batches of `batch` sequences of `seq` tokens in `n` uniform slices.
pub fn uniform_input(
    model: &ModelConfig,
    (m, batch, seq, n): (usize, usize, usize, usize),
    seed: u64,
) -> seqpipe_trainer::runtime::IterationInput {
    seqpipe_trainer::runtime::IterationInput {
        ragged: None,
        documents: None,
        tokens: data(model, m, batch, seq, seed),
        masks: None,
        slices: slice_ranges(model, Slicing::Uniform, seq, n),
        normaliser: (m * batch * seq) as f64,
    }
}

/// Runs one iteration of `pl` on `inp` and checks its loss and every gradient against
/// single-device training of `model` from `seed` (relative `tol`); `what` names the case.
pub fn assert_matches_reference(
    pl: &mut seqpipe_trainer::runtime::Pipeline,
    model: &ModelConfig,
    seed: u64,
    inp: &seqpipe_trainer::runtime::IterationInput,
    tol: f64,
    what: &str,
) {
    let dtype = pl.ranks[0].worker.params.values().next().unwrap().dtype();
    let params = full_params(model, seed, dtype);
    let (reports, _) = pl.run_iteration(inp).unwrap();
    let loss: f64 = reports.iter().map(|r| r.loss).sum();
    let (ref_loss, ref_grads) = reference::loss_and_grads(model, &params, &inp.tokens);
    assert!(
        (loss - ref_loss).abs() <= tol * ref_loss.abs(),
        "{what}: loss {loss} vs {ref_loss}"
    );
    let (err, name) = worst_rel_err(&pl.gradients().unwrap(), &ref_grads);
    assert!(err <= tol, "{what}: gradient of {name} off by {err:e}");
}
