//! Hugging Face `transformers` as the reference: for each fixture that
//! `tests/fixtures/hf/make_fixtures.py` wrote with `transformers` (plain Llama, GQA with another
//! RoPE base, tied embeddings, a head dim other than hidden / heads, and RoPE scaling: linear,
//! Llama 3.1's, YaRN; biases on every projection), the checkpoint loads through `checkpoint::hf` as `transformers`
//! saved it, and a two-stage pipeline's loss and every parameter's gradient on the fixture's
//! batch equal those `transformers` computed (f32, 1e-5 relative).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use common::rel_err;
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_trainer::checkpoint::hf;
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::runtime::rank::Weights;
use seqpipe_trainer::runtime::{IterationInput, Pipeline};

const VARIANTS: [&str; 8] = [
    "llama", "gqa", "tied", "head_dim", "linear", "llama3", "yarn", "bias",
];

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// The fixture's batch, one sequence per micro-batch, as u32 token ids.
fn batch(expected: &HashMap<String, Tensor>) -> IterationInput {
    let tokens = expected["tokens"].to_dtype(DType::U32).unwrap();
    let (b, len) = tokens.dims2().unwrap();
    IterationInput {
        ragged: None,
        documents: None,
        tokens: (0..b).map(|i| tokens.narrow(0, i, 1).unwrap()).collect(),
        masks: None,
        slices: std::iter::once(0..len - 1).collect(),
        normaliser: (b * (len - 1)) as f64,
    }
}

#[test]
fn loss_and_every_gradient_equal_transformers_on_its_own_checkpoints() {
    for name in VARIANTS {
        let dir = fixture(name);
        let (model, params) = hf::load(&dir, DType::F32).unwrap();
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let input = batch(&expected);
        let schedule = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, input.tokens.len() as u32);
        let mut pl = Pipeline::with_weights(
            &model,
            schedule,
            None,
            &OptimConfig::default(),
            Weights::Loaded(&params),
            DType::F32,
            Duration::from_secs(30),
        )
        .unwrap();
        let report = pl.compute_gradients(&input).unwrap();
        let want = expected["loss"].to_vec1::<f32>().unwrap()[0] as f64;
        let off = (report.loss - want).abs() / want.abs();
        assert!(
            off <= 1e-5,
            "{name}: loss {} vs transformers' {want}",
            report.loss
        );
        let grads = pl.gradients().unwrap();
        let mut compared = 0;
        for (key, want) in expected.iter().filter(|(k, _)| k.starts_with("grad.")) {
            let param = &key["grad.".len()..];
            let got = grads
                .get(param)
                .unwrap_or_else(|| panic!("{name}: no gradient for {param}"));
            let err = rel_err(got, want);
            assert!(
                err <= 1e-5,
                "{name}: gradient of {param} differs by {err:e}"
            );
            compared += 1;
        }
        assert_eq!(compared, grads.len(), "{name}: every parameter compared");
        println!(
            "{name}: loss {:.6} (transformers {want:.6}), {compared} gradients within 1e-5",
            report.loss
        );
    }
}

#[test]
fn the_fixtures_configs_are_read_as_transformers_wrote_them() {
    // transformers 5 writes the RoPE base inside `rope_parameters`.
    let (gqa, _) = hf::load(&fixture("gqa"), DType::F32).unwrap();
    assert_eq!((gqa.rope_theta, gqa.heads, gqa.kv_heads), (500_000.0, 4, 2));
    let (tied, params) = hf::load(&fixture("tied"), DType::F32).unwrap();
    assert!(tied.tie_embeddings && !params.contains_key("lm_head.weight"));
    let (bias, params) = hf::load(&fixture("bias"), DType::F32).unwrap();
    assert!(bias.attention_bias && bias.mlp_bias);
    assert_eq!(
        params.keys().filter(|n| n.ends_with(".bias")).count(),
        2 * 7
    );
}
