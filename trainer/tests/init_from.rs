//! `--init-from`: a run that starts from a Hugging Face checkpoint trains the checkpoint's
//! weights (its losses are, bit for bit, those of a run whose seed made the same weights, and
//! other weights give other losses), extends the context as asked (RoPE base, YaRN scaling,
//! positions) and writes the extension into its own checkpoint's config.json; bad checkpoints and conflicting settings are refused
//! before any work, by name.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use seqpipe_trainer::checkpoint::hf;
use seqpipe_trainer::config::TrainConfig;
use seqpipe_trainer::init::{resolved, InitFrom};
use seqpipe_trainer::model::params::TensorMap;
use seqpipe_trainer::model::{ModelConfig, RopeScaling};
use seqpipe_trainer::train::{check, train};

mod common;

/// Every parameter of `model` as a seed-`seed` run initialises them.
fn seeded(model: &ModelConfig, seed: u64) -> TensorMap {
    common::full_params(model, seed, DType::F32)
}

fn two_steps(seed: u64) -> TrainConfig {
    TrainConfig {
        seed,
        steps: 2,
        ..TrainConfig::default()
    }
}

fn from(dir: &Path) -> InitFrom {
    InitFrom {
        dir: dir.to_path_buf(),
        rope_theta: None,
        max_positions: None,
        rope_scaling: None,
    }
}

fn losses(cfg: &TrainConfig) -> Vec<f64> {
    let mut out = Vec::new();
    train(cfg, |e| {
        out.push(e.loss);
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn a_run_from_a_checkpoint_trains_its_weights() {
    let model = TrainConfig::default().model;
    let dir = tempfile::tempdir().unwrap();
    let (same, other) = (dir.path().join("seed-7"), dir.path().join("seed-9"));
    hf::save(&same, &model, &seeded(&model, 7)).unwrap();
    hf::save(&other, &model, &seeded(&model, 9)).unwrap();
    let seeded_run = losses(&two_steps(7));
    let mut cfg = two_steps(7);
    cfg.init_from = Some(from(&same));
    assert_eq!(
        losses(&cfg),
        seeded_run,
        "the checkpoint of seed 7's weights"
    );
    cfg.init_from = Some(from(&other));
    let other_run = losses(&cfg);
    assert_ne!(other_run[0], seeded_run[0], "other weights, other loss");
    println!(
        "seed 7: {seeded_run:?}; from seed 7's checkpoint: same; from seed 9's: {other_run:?}"
    );
}

#[test]
fn context_extension_changes_rope_and_positions_and_is_written_back() {
    let mut small = TrainConfig::default().model;
    small.max_positions = 128;
    let dir = tempfile::tempdir().unwrap();
    let (base, ckpt) = (dir.path().join("base"), dir.path().join("ckpt"));
    hf::save(&base, &small, &seeded(&small, 3)).unwrap();
    let mut cfg = two_steps(3);
    cfg.data.seq_len = 256;
    let yarn: RopeScaling =
        toml::from_str("type = \"yarn\"\nfactor = 4.0\noriginal_max_positions = 128\n").unwrap();
    cfg.init_from = Some(InitFrom {
        rope_theta: Some(500_000.0),
        max_positions: Some(1024),
        rope_scaling: Some(yarn.clone()),
        ..from(&base)
    });
    cfg.output.checkpoint_dir = Some(ckpt.clone());
    let cfg = resolved(&cfg).unwrap();
    assert_eq!(cfg.model.rope_scaling.as_ref(), Some(&yarn));
    assert_eq!(
        (cfg.model.rope_theta, cfg.model.max_positions),
        (500_000.0, 1024)
    );
    assert!(losses(&cfg).iter().all(|l| l.is_finite()));
    let newest = std::fs::read_dir(&ckpt)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .max()
        .unwrap();
    let written = std::fs::read_to_string(newest.join("config.json")).unwrap();
    let (model, _) = hf::load(&newest, DType::F32).unwrap();
    assert_eq!(
        (model.rope_theta, model.max_positions),
        (500_000.0, 1024),
        "{written}"
    );
    assert_eq!(model.rope_scaling, Some(yarn), "{written}");
    // Without the extension, 256 tokens do not fit the checkpoint's 128 positions.
    let mut short = two_steps(3);
    short.data.seq_len = 256;
    short.init_from = Some(from(&base));
    let e = check(&resolved(&short).unwrap()).unwrap_err().to_string();
    assert!(e.contains("128"), "{e}");
}

#[test]
fn bad_checkpoints_and_conflicting_settings_are_refused_by_name() {
    let model = TrainConfig::default().model;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = two_steps(1);
    // No checkpoint there.
    let missing = dir.path().join("nothing");
    cfg.init_from = Some(from(&missing));
    let e = resolved(&cfg).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("nothing"), "{e}");
    // A tensor whose shape disagrees with the config.
    let bent = dir.path().join("bent");
    let mut params = seeded(&model, 1);
    let name = "model.layers.0.mlp.up_proj.weight".to_string();
    params.insert(
        name.clone(),
        Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap(),
    );
    hf::save(&bent, &model, &params).unwrap();
    cfg.init_from = Some(from(&bent));
    let e = train(&resolved(&cfg).unwrap(), |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&name) && e.contains("[3, 5]"), "{e}");
    // A math-changing field the trainer does not implement.
    let scaled = dir.path().join("scaled");
    hf::save(&scaled, &model, &seeded(&model, 1)).unwrap();
    let text = std::fs::read_to_string(scaled.join("config.json")).unwrap();
    let text = text.replacen(
        '{',
        "{\n  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0},",
        1,
    );
    std::fs::write(scaled.join("config.json"), text).unwrap();
    cfg.init_from = Some(from(&scaled));
    let e = resolved(&cfg).unwrap_err().to_string();
    assert!(e.contains("rope_scaling"), "{e}");
    // Extension only grows the context; the model comes from one place.
    let fine = dir.path().join("fine");
    hf::save(&fine, &model, &seeded(&model, 1)).unwrap();
    cfg.init_from = Some(InitFrom {
        max_positions: Some(16),
        ..from(&fine)
    });
    let e = resolved(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("max_positions = 16") && e.contains("4096"),
        "{e}"
    );
    let toml = format!(
        "[init_from]\ndir = {:?}\n\n[model]\nlayers = 4\n",
        fine.display().to_string()
    );
    let e = TrainConfig::from_toml(&toml).unwrap_err().to_string();
    assert!(e.contains("[model]") && e.contains("init_from"), "{e}");
    // Text data needs a tokenizer: the checkpoint has none, and none is given.
    let mut text = two_steps(1);
    text.data.kind = seqpipe_trainer::config::DataKind::Text;
    text.data.path = Some(dir.path().join("corpus.txt"));
    text.init_from = Some(from(&fine));
    let e = check(&resolved(&text).unwrap()).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("fine"), "{e}");
    // A context the memory does not allow: the budget's shortfall is named before any work.
    let mut long = two_steps(1);
    long.init_from = Some(from(&fine));
    long.data.seq_len = 1024;
    long.parallel.memory_budget = Some(8_000_000);
    let e = check(&resolved(&long).unwrap()).unwrap_err().to_string();
    assert!(
        e.contains("memory budget 8000000") && e.contains("over"),
        "{e}"
    );
    // A configuration whose model was not resolved from the checkpoint.
    let mut unresolved = two_steps(1);
    unresolved.model.layers = 4;
    unresolved.init_from = Some(from(&fine));
    let e = check(&unresolved).unwrap_err().to_string();
    assert!(e.contains("not the checkpoint's"), "{e}");
}

#[test]
fn the_command_line_takes_a_checkpoint_and_its_printed_configuration_runs_again() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/gqa");
    let fixture = fixture.to_str().unwrap();
    let args = [
        "train",
        "--init-from",
        fixture,
        "--steps",
        "1",
        "--stages",
        "2",
        "--schedule",
        "seq1f1b",
        "--chunks",
        "1",
        "--slices",
        "2",
        "--seq-len",
        "96",
        "--max-positions",
        "128",
    ];
    let (ok, printed, err) = common::seqpipe(&[&args[..], &["--print-config"]].concat());
    assert!(ok, "{err}");
    assert!(printed.contains("[init_from]") && printed.contains("max_positions = 128"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, &printed).unwrap();
    let (ok, out, err) = common::seqpipe(&["train", "--config", path.to_str().unwrap()]);
    assert!(ok && out.contains("2-layer model"), "{out}\n{err}");
    // A configuration file with [model] beside --init-from is refused by name.
    std::fs::write(&path, "[model]\nlayers = 2\n").unwrap();
    let config = path.to_str().unwrap();
    let (ok, _, err) = common::seqpipe(&["train", "--config", config, "--init-from", fixture]);
    assert!(
        !ok && err.contains("[model]") && err.contains("init_from"),
        "{err}"
    );
}

#[test]
fn export_writes_a_hugging_face_directory_from_a_run_or_a_model() {
    use seqpipe_trainer::checkpoint::export::export_hf;
    let dir = tempfile::tempdir().unwrap();
    // A Hugging Face directory with a tokenizer beside the model.
    let model = TrainConfig::default().model;
    let base = dir.path().join("base");
    hf::save(&base, &model, &seeded(&model, 5)).unwrap();
    std::fs::write(base.join("tokenizer.json"), "{\"stand-in\": true}").unwrap();
    // A run from it, checkpointed.
    let ckpt = dir.path().join("ckpt");
    let mut cfg = two_steps(5);
    cfg.init_from = Some(from(&base));
    cfg.output.checkpoint_dir = Some(ckpt.clone());
    losses(&cfg);
    let out = dir.path().join("out");
    let done = export_hf(&ckpt, &out, DType::BF16).unwrap();
    assert_eq!(done.tokenizer_files, vec![out.join("tokenizer.json")]);
    let (exported, params) = hf::load(&out, DType::F32).unwrap();
    assert_eq!(exported, model);
    let (_, trained) = hf::load(&done.source, DType::F32).unwrap();
    for (name, t) in &trained {
        // bf16 keeps 8 significant bits: within 2^-8 of each weight's magnitude.
        let err = common::rel_err(&params[name], t);
        assert!(err > 0.0 && err < 1.0 / 256.0, "{name}: {err}");
    }
    // The run trained: its weights are not the starting ones.
    let start = seeded(&model, 5);
    assert!(trained
        .iter()
        .any(|(n, t)| common::rel_err(t, &start[n]) > 0.0));
    // A Hugging Face directory exports as is, in f32 bit for bit.
    let again = dir.path().join("again");
    export_hf(&base, &again, DType::F32).unwrap();
    let (_, copy) = hf::load(&again, DType::F32).unwrap();
    assert!(copy
        .iter()
        .all(|(n, t)| common::rel_err(t, &start[n]) == 0.0));
    // Never into a directory holding anything; never from something that is no model.
    let e = export_hf(&base, &out, DType::F32).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
    let e = export_hf(dir.path(), &dir.path().join("x"), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("neither a seqpipe checkpoint"), "{e}");
}

#[test]
fn eval_scores_each_length_as_the_first_training_step_would() {
    use seqpipe_trainer::eval::{evaluate, EvalData};
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/gqa");
    let (model, params) = hf::load(&fixture, DType::F32).unwrap();
    let data = seqpipe_trainer::config::DataConfig::default();
    let on = EvalData {
        data: &data,
        seed: 7,
        sequences: 4,
    };
    let rows = evaluate(&model, &params, &on, &[16, 40]).unwrap();
    for row in &rows {
        let mut cfg = two_steps(7);
        cfg.steps = 1;
        cfg.init_from = Some(from(&fixture));
        let p = &mut cfg.parallel;
        (p.stages, p.chunks, p.slices, p.microbatches) = (1, 1, 1, 4);
        p.schedule = "1f1b".into();
        (cfg.data.batch, cfg.data.seq_len) = (1, row.length);
        let first = losses(&resolved(&cfg).unwrap())[0];
        assert_eq!(first, row.loss, "length {}", row.length);
        assert_eq!(row.targets, (4 * row.length) as f64);
        assert_eq!(row.perplexity, row.loss.exp());
        assert_eq!(row.accuracy, None, "Markov data scores every target");
    }
    // Lengths the model has no positions for are refused by name.
    let e = evaluate(&model, &params, &on, &[16, 64])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("length 64") && e.contains("max_positions"),
        "{e}"
    );
}
