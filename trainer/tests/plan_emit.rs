//! `seqpipe plan --emit-config` → `seqpipe train --config`: the emitted file is a configuration
//! `train` reads; what the trainer does not run (vocabulary sharding, tensor and context
//! parallelism, a CUDA device on a CPU build) is refused by name, and `--scale-down` runs the
//! plan's schedule on the tiny model. The file is never written over another one.

mod common;

use std::path::Path;

use common::seqpipe;
use seqpipe_trainer::config::{ExchangePairs, TrainConfig};

/// Plans `model` at `seq` on `gpus` H100s with `extra` flags and emits the best plan to `path`.
fn emit(path: &Path, model: &str, seq: &str, gpus: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "plan",
        "--model",
        model,
        "--seq",
        seq,
        "--gpus",
        gpus,
        "--emit-config",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, _, err) = seqpipe(&args);
    (ok, err)
}

fn train(path: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["train", "--config", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    seqpipe(&args)
}

#[test]
fn an_emitted_plan_is_read_by_train_which_names_what_it_does_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.toml");
    let flags = ["--global-batch", "1", "--max-tp", "1", "--max-cp", "1"];
    let (ok, err) = emit(&path, "llama-7b", "4k", "2", &flags);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("# seqpipe plan --emit-config\n# plan: "),
        "{text}"
    );
    let cfg = TrainConfig::from_toml(&text).unwrap();
    assert_eq!((cfg.model.layers, cfg.model.hidden), (32, 4096));
    assert_eq!(cfg.data.seq_len, 4096);
    assert_eq!(cfg.parallel.tensor_parallel, 1);
    // The planner's best plan here is SlimPipe, priced with a vocabulary-sharded head.
    assert_eq!(cfg.parallel.schedule, "slimpipe", "{text}");
    // SlimPipe as planned: its head sharded over the vocabulary, and its attention exchange
    // (every pair) on exactly where the simulation says it shortens the iteration.
    assert!(cfg.parallel.vocab_parallel, "{text}");
    assert!(
        text.contains("seqpipe train runs every part of this plan"),
        "{text}"
    );
    let figures = common::figures_on_line(&text, "# simulated bubble ");
    let [plain, exchange] = figures[..] else {
        panic!("{figures:?} in\n{text}");
    };
    let level = Some(ExchangePairs::Level);
    assert_eq!(
        cfg.parallel.attention_exchange && cfg.parallel.exchange_pairs == level,
        exchange < plain,
        "{text}"
    );
    // Without scale-down the plan's CUDA device is named (this build is CPU-only).
    let (ok, _, err) = train(&path, &["--steps", "1"]);
    assert!(!ok);
    assert!(err.contains("device = \"cuda\""), "{err}");

    // Scaled down, the plan's schedule trains on the tiny model.
    let (ok, out, err) = train(&path, &["--scale-down", "--steps", "1"]);
    assert!(ok, "{err}");
    assert!(err.contains("scaled down:"), "{err}");
    let p = &cfg.parallel;
    let head = format!(
        "on {} stages: slimpipe with {} micro-batches × {} slices × {} chunks",
        p.stages, p.microbatches, p.slices, p.chunks
    );
    assert!(out.contains(&head), "{head} not in\n{out}");
}

#[test]
fn tensor_or_context_parallel_plans_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.toml");
    let (ok, err) = emit(&path, "llama-70b", "512k", "256", &[]);
    assert!(ok, "{err}");
    let cfg = TrainConfig::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let p = &cfg.parallel;
    assert!(
        p.tensor_parallel > 1 || p.context_parallel > 1,
        "the 512K plan needs TP or CP: {p:?}"
    );
    let (ok, _, err) = train(&path, &["--scale-down"]);
    assert!(!ok);
    for (key, size) in [
        ("tensor_parallel", p.tensor_parallel),
        ("context_parallel", p.context_parallel),
    ] {
        let named = err.contains(&format!("parallel.{key} = {size}"));
        assert_eq!(named, size > 1, "{key} = {size}: {err}");
    }
}

#[test]
fn emit_config_writes_over_its_own_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.toml");
    std::fs::write(&path, "my notes\n").unwrap();
    let flags = ["--global-batch", "1", "--max-tp", "1", "--max-cp", "1"];
    let (ok, err) = emit(&path, "llama-7b", "4k", "2", &flags);
    assert!(!ok);
    assert!(err.contains("was not written by seqpipe plan"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "my notes\n");
    let own = dir.path().join("plan.toml");
    for _ in 0..2 {
        let (ok, err) = emit(&own, "llama-7b", "4k", "2", &flags);
        assert!(ok, "{err}");
    }
    let (ok, err) = emit(dir.path(), "llama-7b", "4k", "2", &flags);
    assert!(!ok);
    assert!(err.contains("is a directory"), "{err}");
}

#[test]
fn a_gpt_preset_is_not_emitted_as_a_llama() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.toml");
    let (ok, err) = emit(&path, "gpt-7b", "4k", "8", &[]);
    assert!(!ok);
    assert!(err.contains("GELU") && err.contains("SwiGLU"), "{err}");
    assert!(!path.exists());
}
