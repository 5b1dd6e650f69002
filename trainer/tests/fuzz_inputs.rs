//! The fuzz layer that stays (issue 23): generated configurations, Hugging Face `config.json`
//! files, token files and damaged checkpoints go through the real parsers and checks, which must
//! answer with a value or an error — never a panic (proptest fails a case that panics), never a
//! damaged checkpoint accepted. CI runs the default case counts; the long form is
//! `SEQPIPE_FUZZ_SECONDS=600 cargo test --release -p seqpipe-trainer --test fuzz_inputs -- NAME`
//! (or `PROPTEST_CASES=N`), which prints the executions.

use std::path::Path;

use candle_core::DType;
use proptest::prelude::*;
use proptest::test_runner::TestCaseResult;
use seqpipe_trainer::checkpoint::hf::config_from_json;
use seqpipe_trainer::checkpoint::resume::{self, TrainerState};
use seqpipe_trainer::checkpoint::store::CheckpointDir;
use seqpipe_trainer::config::{DataConfig, DataKind, TrainConfig};
use seqpipe_trainer::data::DataSource;
use seqpipe_trainer::model::params::{init_params, param_specs, Holding};
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::train::check;

/// Values a hostile user types: edge integers, floats that are not numbers, wrong types.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1".to_string()),
        Just("3".to_string()),
        Just("9223372036854775807".to_string()),
        Just("4294967296".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("1e308".to_string()),
        Just("0.5".to_string()),
        Just("\"slimpipe\"".to_string()),
        Just("\"x\"".to_string()),
        Just("true".to_string()),
        Just("[1, 2]".to_string()),
        (0u64..1 << 20).prop_map(|v| v.to_string()),
    ]
}

const KEYS: &[(&str, &str)] = &[
    ("", "steps"),
    ("", "seed"),
    ("model", "vocab"),
    ("model", "hidden"),
    ("model", "ffn_hidden"),
    ("model", "heads"),
    ("model", "kv_heads"),
    ("model", "layers"),
    ("model", "max_positions"),
    ("model", "rope_theta"),
    ("model", "norm_eps"),
    ("parallel", "stages"),
    ("parallel", "microbatches"),
    ("parallel", "slices"),
    ("parallel", "chunks"),
    ("parallel", "group"),
    ("parallel", "schedule"),
    ("parallel", "timeout_secs"),
    ("data", "batch"),
    ("data", "seq_len"),
    ("data", "token_bytes"),
    ("optim", "lr"),
    ("optim", "weight_decay"),
    ("optim", "beta1"),
    ("optim", "clip_norm"),
    ("output", "checkpoint_every"),
];

fn toml_config() -> impl Strategy<Value = String> {
    prop::collection::vec((0..KEYS.len(), toml_value()), 0..8).prop_map(|pairs| {
        let mut sections: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (k, v) in pairs {
            let (section, key) = KEYS[k];
            sections
                .entry(section)
                .or_default()
                .push(format!("{key} = {v}"));
        }
        let mut text = String::new();
        for (section, lines) in sections {
            if !section.is_empty() {
                text.push_str(&format!("[{section}]\n"));
            }
            let mut seen = std::collections::BTreeSet::new();
            for l in lines {
                // TOML refuses a key twice; keep the first so the document stays TOML.
                if seen.insert(l.split(' ').next().unwrap_or_default().to_string()) {
                    text.push_str(&l);
                    text.push('\n');
                }
            }
        }
        text
    })
}

fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-5".to_string()),
        Just("18446744073709551615".to_string()),
        Just("1e400".to_string()),
        Just("null".to_string()),
        Just("\"64\"".to_string()),
        Just("{\"rope_type\": \"llama3\"}".to_string()),
        Just("true".to_string()),
        (1u64..5000).prop_map(|v| v.to_string()),
    ]
}

const HF_KEYS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "head_dim",
    "rope_scaling",
    "sliding_window",
    "tie_word_embeddings",
];

const ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM", "GPT2LMHeadModel"];

fn hf_config() -> impl Strategy<Value = String> {
    (
        0..ARCHITECTURES.len(),
        prop::collection::vec((0..HF_KEYS.len(), json_value()), 0..10),
    )
        .prop_map(|(arch, pairs)| {
            let mut fields = std::collections::BTreeMap::new();
            // A valid base the generated fields override.
            for (k, v) in [
                ("vocab_size", "256"),
                ("hidden_size", "64"),
                ("intermediate_size", "128"),
                ("num_attention_heads", "4"),
                ("num_hidden_layers", "2"),
            ] {
                fields.insert(k.to_string(), v.to_string());
            }
            for (k, v) in pairs {
                fields.insert(HF_KEYS[k].to_string(), v);
            }
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            format!(
                "{{\"architectures\": [\"{}\"], {}}}",
                ARCHITECTURES[arch],
                body.join(", ")
            )
        })
}

fn tiny() -> ModelConfig {
    ModelConfig {
        vocab: 32,
        hidden: 16,
        ffn_hidden: 24,
        heads: 2,
        kv_heads: 1,
        layers: 1,
        max_positions: 64,
        ..ModelConfig::tiny()
    }
}

/// One valid checkpoint, written through the library (as a run writes it).
fn write_checkpoint(root: &Path) -> std::path::PathBuf {
    let cfg = TrainConfig {
        model: tiny(),
        ..TrainConfig::default()
    };
    let whole = Holding {
        layers: std::iter::once(0..1).collect(),
        embedding: true,
        head: true,
        vocab_rows: None,
    };
    let params = init_params(
        &param_specs(&cfg.model, &whole),
        1,
        DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let moments = params
        .iter()
        .flat_map(|(n, t)| [(format!("m.{n}"), t.clone()), (format!("v.{n}"), t.clone())])
        .collect();
    let state = TrainerState {
        version: resume::VERSION,
        next_step: 2,
        optimizer_steps: 2,
        data_position: "7".into(),
        config: cfg,
    };
    let dir = CheckpointDir::open_for_writing(root).unwrap();
    resume::save(&dir, &state, &params, &moments).unwrap()
}

/// Runs `test` over `strategy`: `PROPTEST_CASES` cases (default `cases`), or, when
/// `SEQPIPE_FUZZ_SECONDS` is set, as many as fit in that many seconds (the long form), printing
/// the executions. A failing or panicking case fails with its minimal input.
fn fuzz<S>(name: &str, cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    use proptest::test_runner::{Config, TestRunner};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let Some(seconds) = std::env::var("SEQPIPE_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        if let Err(e) = runner.run(&strategy, test) {
            panic!("{name}: {e}");
        }
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut executions = 0u64;
    while std::time::Instant::now() < deadline {
        let tree = strategy
            .new_tree(&mut runner)
            .expect("the strategies never reject");
        if let Err(e) = runner.run_one(tree, &test) {
            panic!("{name}: after {executions} executions: {e}");
        }
        executions += 1;
    }
    eprintln!("fuzz {name}: {executions} executions in {seconds} s, no finding");
}

#[test]
fn train_configs_parse_and_check_without_panicking() {
    fuzz("train config", 256, toml_config(), |text| {
        if let Ok(cfg) = TrainConfig::from_toml(&text) {
            let _ = check(&cfg);
        }
        Ok(())
    });
}

#[test]
fn hf_configs_parse_without_panicking() {
    fuzz("hf config.json", 256, hf_config(), |text| {
        if let Ok(model) = config_from_json(&text) {
            // Whatever parses is a model the trainer can size.
            prop_assert!(model.problems().is_empty());
        }
        let _ = seqpipe_slicing::shape_from_hf_config(&text);
        Ok(())
    });
}

fn token_case() -> impl Strategy<Value = (Vec<u8>, usize, bool)> {
    (
        prop::collection::vec(any::<u8>(), 0..3000),
        prop_oneof![Just(2usize), Just(4usize)],
        any::<bool>(),
    )
}

#[test]
fn token_files_open_and_draw_without_panicking() {
    fuzz("token file", 256, token_case(), |(bytes, width, header)| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.bin");
        let mut data = Vec::new();
        if header {
            data.extend(20240520i32.to_le_bytes());
            data.extend(1i32.to_le_bytes());
            data.extend(((bytes.len() / 2) as i32).to_le_bytes());
            data.resize(1024, 0);
        }
        data.extend(&bytes);
        std::fs::write(&path, &data).unwrap();
        let cfg = DataConfig {
            kind: DataKind::Tokens,
            path: Some(path),
            token_bytes: width,
            ..DataConfig::default()
        };
        if let Ok(mut source) = DataSource::open(&cfg, 300, 0) {
            let _ = source.draw(1, 1, 8, &candle_core::Device::Cpu);
        }
        Ok(())
    });
}

fn damage() -> impl Strategy<Value = (usize, prop::sample::Index, u8, bool)> {
    (
        0usize..5,
        any::<prop::sample::Index>(),
        1u8..=255,
        any::<bool>(),
    )
}

/// Any flipped byte or truncation of any checkpoint file is refused, never loaded.
#[test]
fn damaged_checkpoints_are_refused() {
    fuzz(
        "damaged checkpoint",
        48,
        damage(),
        |(file, at, flip, truncate)| {
            let dir = tempfile::tempdir().unwrap();
            let step = write_checkpoint(&dir.path().join("ck"));
            let names = [
                "config.json",
                "model.safetensors",
                "optimizer.safetensors",
                "trainer_state.json",
                "manifest.json",
            ];
            let path = step.join(names[file]);
            let mut bytes = std::fs::read(&path).unwrap();
            let original: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            let i = at.index(bytes.len());
            if truncate {
                bytes.truncate(i);
            } else {
                bytes[i] ^= flip;
            }
            std::fs::write(&path, &bytes).unwrap();
            let loaded = resume::load(&step, DType::F32);
            // The manifest is the one file no checksum covers: damage that leaves it the same JSON
            // (whitespace turned into other whitespace) changes nothing it says, and may load.
            let same_manifest = names[file] == "manifest.json"
                && serde_json::from_slice::<serde_json::Value>(&bytes).ok() == original;
            prop_assert!(
                loaded.is_err() || same_manifest,
                "{} damaged at byte {} loaded",
                names[file],
                i
            );
            Ok(())
        },
    );
}
