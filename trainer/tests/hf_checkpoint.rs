//! Hugging Face checkpoints: save → load → save → load is lossless, sharded checkpoints load, the
//! loss of a loaded checkpoint equals an independent reference forward, bad files are clear errors.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use candle_core::{DType, Tensor};
use common::{data, full_params, reference, tiny_model};
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_trainer::checkpoint::hf;
use seqpipe_trainer::model::TensorMap;
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::runtime::{IterationInput, Pipeline, Weights};

fn identical(a: &TensorMap, b: &TensorMap) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, t) in a {
        let (x, y) = (
            t.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
            b[name].flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        );
        assert!(x == y, "{name} changed in the round trip");
    }
}

#[test]
fn save_load_save_load_is_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let params = full_params(&model, 3, DType::F64);
    hf::save(&dir.path().join("a"), &model, &params).unwrap();
    let (model_a, loaded_a) = hf::load(&dir.path().join("a"), DType::F64).unwrap();
    assert_eq!(model_a, model);
    identical(&loaded_a, &params);
    hf::save(&dir.path().join("b"), &model_a, &loaded_a).unwrap();
    let (_, loaded_b) = hf::load(&dir.path().join("b"), DType::F64).unwrap();
    identical(&loaded_b, &params);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("a/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["num_key_value_heads"], 2);
}

#[test]
fn sharded_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let params = full_params(&model, 4, DType::F32);
    hf::save(dir.path(), &model, &params).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut weight_map = serde_json::Map::new();
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    for (i, (name, t)) in params.iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        shards[i % 2].insert(name.clone(), t.clone());
        weight_map.insert(name.clone(), file.into());
    }
    for (i, shard) in shards.iter().enumerate() {
        candle_core::safetensors::save(
            shard,
            dir.path()
                .join(format!("model-0000{}-of-00002.safetensors", i + 1)),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let (_, loaded) = hf::load(dir.path(), DType::F32).unwrap();
    identical(
        &loaded
            .iter()
            .map(|(n, t)| (n.clone(), t.to_dtype(DType::F64).unwrap()))
            .collect(),
        &params
            .iter()
            .map(|(n, t)| (n.clone(), t.to_dtype(DType::F64).unwrap()))
            .collect(),
    );
}

#[test]
fn loaded_checkpoint_loss_equals_the_reference_forward() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    hf::save(dir.path(), &model, &full_params(&model, 9, DType::F64)).unwrap();
    let (model, params) = hf::load(dir.path(), DType::F64).unwrap();
    let tokens = data(&model, 2, 2, 16, 9);
    let (want, _) = reference::loss_and_grads(&model, &params, &tokens);
    let cfg = ScheduleConfig::new(ScheduleKind::Seq1F1B, 2, 2).with_slices(4);
    let mut pl = Pipeline::with_weights(
        &model,
        cfg,
        None,
        &OptimConfig::default(),
        Weights::Loaded(&params),
        DType::F64,
        Duration::from_secs(20),
    )
    .unwrap();
    let input = IterationInput {
        ragged: None,
        documents: None,
        tokens,
        masks: None,
        slices: vec![0..4, 4..8, 8..12, 12..16],
        normaliser: 64.0,
    };
    let (reports, _) = pl.run_iteration(&input).unwrap();
    let got: f64 = reports.iter().map(|r| r.loss).sum();
    assert!(
        (got - want).abs() <= 1e-10 * want,
        "pipelined {got} vs reference {want}"
    );
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    hf::save(dir.path(), &model, &full_params(&model, 1, DType::F32)).unwrap();
    // Truncated weights.
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", hf::load(dir.path(), DType::F32).unwrap_err());
    assert!(e.contains("not a readable safetensors file"), "{e}");
    // Unsupported architecture.
    let config = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("LlamaForCausalLM", "MambaForCausalLM");
    std::fs::write(&config, text).unwrap();
    let e = format!("{:#}", hf::load(dir.path(), DType::F32).unwrap_err());
    assert!(
        e.contains("unsupported architecture [\"MambaForCausalLM\"]")
            && e.contains("LlamaForCausalLM"),
        "{e}"
    );
    // A tensor missing.
    let other = tempfile::tempdir().unwrap();
    let mut params = full_params(&model, 1, DType::F32);
    params.remove("model.layers.3.mlp.up_proj.weight");
    hf::save(other.path(), &model, &params).unwrap();
    let e = format!("{:#}", hf::load(other.path(), DType::F32).unwrap_err());
    assert!(
        e.contains("lacks tensor model.layers.3.mlp.up_proj.weight"),
        "{e}"
    );
    // A bias the config does not enable: refused, not dropped.
    let mut params = full_params(&model, 1, DType::F32);
    let stray = "model.layers.1.self_attn.q_proj.bias";
    params.insert(
        stray.into(),
        Tensor::zeros(64, DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    hf::save(other.path(), &model, &params).unwrap();
    let e = format!("{:#}", hf::load(other.path(), DType::F32).unwrap_err());
    assert!(
        e.contains(stray) && e.contains("attention_bias = false"),
        "{e}"
    );
    // With biases on, one missing is named.
    let biased = seqpipe_trainer::model::ModelConfig {
        attention_bias: true,
        ..model.clone()
    };
    let mut params = full_params(&biased, 1, DType::F32);
    params.remove("model.layers.2.self_attn.o_proj.bias");
    hf::save(other.path(), &biased, &params).unwrap();
    let e = format!("{:#}", hf::load(other.path(), DType::F32).unwrap_err());
    assert!(
        e.contains("lacks tensor model.layers.2.self_attn.o_proj.bias"),
        "{e}"
    );
}
