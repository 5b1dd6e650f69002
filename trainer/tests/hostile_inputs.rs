//! Inputs a hostile but realistic user gives (issue 23): each family is refused where it starts,
//! with a message naming the bad value and what would be valid — never a panic (exit 101), an
//! abort, a hang, or a silent wrong result.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::seqpipe;
use seqpipe_trainer::config::TrainConfig;
use seqpipe_trainer::train::check;

/// A short 2-stage training run.
const TINY_RUN: &[&str] = &[
    "train",
    "--seq-len",
    "32",
    "--stages",
    "2",
    "--schedule",
    "1f1b",
    "--chunks",
    "1",
    "--slices",
    "1",
];

fn problem(edit: impl FnOnce(&mut TrainConfig)) -> String {
    let mut cfg = TrainConfig::default();
    edit(&mut cfg);
    format!("{:#}", check(&cfg).expect_err("must be refused"))
}

/// A run that must fail cleanly: exit 1 (not 101), with `needle` in its message.
fn refused(args: &[&str], needle: &str) {
    let (ok, _, err) = seqpipe(args);
    assert!(!ok, "{args:?} was accepted");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in: {err}"
    );
}

#[test]
fn absurd_sizes_are_bounded_with_the_bound_in_the_message() {
    let m = problem(|c| c.model.vocab = usize::MAX);
    assert!(m.contains("model.vocab") && m.contains("at most"), "{m}");
    let m = problem(|c| c.model.hidden = 1 << 40);
    assert!(m.contains("model.hidden"), "{m}");
    let m = problem(|c| {
        c.model.layers = 4000;
        c.model.hidden = 1 << 17;
        c.model.heads = 1024;
        c.model.ffn_hidden = 1 << 18;
    });
    assert!(m.contains("parameters"), "{m}");
    let m = problem(|c| c.parallel.microbatches = u32::MAX);
    assert!(m.contains("parallel.microbatches"), "{m}");
    let m = problem(|c| {
        c.data.batch = 1 << 15;
        c.parallel.microbatches = 1 << 15;
    });
    assert!(m.contains("tokens per step"), "{m}");
    let m = problem(|c| c.parallel.timeout_secs = 0);
    assert!(m.contains("timeout_secs = 0"), "{m}");
    refused(
        &[
            "plan",
            "--model",
            "llama-7b",
            "--seq",
            "8k",
            "--gpus",
            "8",
            "--global-batch",
            "18446744073709551615",
        ],
        "global batch",
    );
    refused(
        &[
            "plan",
            "--model",
            "llama-7b",
            "--seq",
            "8k",
            "--gpus",
            "18446744073709551615",
        ],
        "GPUs",
    );
}

#[test]
fn options_that_cannot_apply_are_errors() {
    let m = problem(|c| c.data.path = Some("corpus.bin".into()));
    assert!(m.contains("data.path is set but data.kind"), "{m}");
    let m = problem(|c| c.data.tokenizer = Some("tokenizer.json".into()));
    assert!(m.contains("data.tokenizer"), "{m}");
    let m = problem(|c| {
        c.optim.lr = 10.0;
        c.optim.weight_decay = 0.5;
    });
    assert!(m.contains("lr × optim.weight_decay"), "{m}");
    refused(
        &["slice", "--model", "llama-7b", "--seq", "4096", "--pad"],
        "--pad applies to uniform slicing only",
    );
    refused(
        &[
            "plan",
            "--model",
            "llama-7b",
            "--lengths",
            "1000,2000",
            "--context",
            "4k",
            "--format",
            "json",
        ],
        "--format",
    );
    refused(
        &[
            "plan", "--model", "llama-7b", "--seq", "8k", "--gpus", "8", "--pp", "2",
        ],
        "--pp",
    );
    refused(
        &["plan", "--model", "llama-7b", "--seq", "8k", "--gpus", "1"],
        "no configuration to search",
    );
    refused(
        &[
            "simulate",
            "--model",
            "llama-7b",
            "--seq",
            "4k",
            "--kind",
            "1f1b",
            "--stages",
            "64",
            "--microbatches",
            "64",
        ],
        "virtual stages",
    );
}

#[test]
fn a_partial_toml_section_takes_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.toml");
    std::fs::write(
        &path,
        "steps = 1\n[model]\nlayers = 4\n[optim]\nwarmup_steps = 0\n",
    )
    .unwrap();
    let cfg = TrainConfig::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(cfg.model.layers, 4);
    assert_eq!(cfg.model.hidden, TrainConfig::default().model.hidden);
    assert_eq!(cfg.optim.lr, TrainConfig::default().optim.lr);
}

#[test]
fn hugging_face_configs_that_change_the_math_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, extra: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                r#"{{"architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64,
                   "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2{extra}}}"#
            ),
        )
        .unwrap();
        p
    };
    use seqpipe_trainer::checkpoint::hf::config_from_json;
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    for (extra, needle) in [
        (
            r#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#,
            "rope_scaling",
        ),
        (
            r#", "rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}"#,
            "rope_type \"dynamic\"",
        ),
        (
            r#", "rope_theta": 10000.0, "rope_parameters": {"rope_theta": 500000.0}"#,
            "disagree",
        ),
        (r#", "attention_dropout": 0.1"#, "attention_dropout"),
        (r#", "sliding_window": 4096"#, "sliding_window"),
        (r#", "attention_bias": 1"#, "attention_bias"),
        (r#", "mlp_bias": "no""#, "mlp_bias"),
        (r#", "head_dim": 7"#, "head_dim = 7"),
        (r#", "num_key_value_heads": "two""#, "num_key_value_heads"),
        (r#", "vocab_size": 18446744073709551615"#, "vocab"),
    ] {
        let e = format!(
            "{:#}",
            config_from_json(&read(write("c.json", extra))).unwrap_err()
        );
        assert!(e.contains(needle), "{extra}: {e}");
    }
    // The planner's reader: hidden 64 over 3 heads has no integral head dim, u64::MAX overflows.
    let p = dir.path().join("odd.json");
    std::fs::write(
        &p,
        r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64,
        "intermediate_size": 128, "num_attention_heads": 3, "num_hidden_layers": 2}"#,
    )
    .unwrap();
    refused(
        &["slice", "--model", p.to_str().unwrap(), "--seq", "4096"],
        "not a multiple",
    );
    let p = dir.path().join("huge.json");
    std::fs::write(&p, r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 18446744073709551615,
        "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2}"#).unwrap();
    refused(
        &[
            "plan",
            "--model",
            p.to_str().unwrap(),
            "--seq",
            "8k",
            "--gpus",
            "8",
        ],
        "at most",
    );
}

/// Training on token file `path` must be refused with `needle` in the message.
fn tokens_refused(path: &std::path::Path, needle: &str) {
    let p = path.to_str().unwrap();
    refused(
        &[
            "train",
            "--steps",
            "1",
            "--data-kind",
            "tokens",
            "--data-path",
            p,
        ],
        needle,
    );
}

/// An llm.c token file: the 1024-byte header claiming `claimed` tokens, then `tokens`.
fn llmc_bytes(claimed: i32, tokens: impl Iterator<Item = u16>) -> Vec<u8> {
    let mut header = vec![0i32; 256];
    header[0] = 20240520;
    header[1] = 1;
    header[2] = claimed;
    let mut bytes: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.extend(tokens.flat_map(u16::to_le_bytes));
    bytes
}

#[test]
fn token_files_that_do_not_match_the_settings_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    // u32 tokens, read as the default u16: every second u16 is a zero high half.
    let u32_file = dir.path().join("u32.bin");
    let tokens: Vec<u8> = (0..4096u32)
        .flat_map(|i| (1 + i % 200).to_le_bytes())
        .collect();
    std::fs::write(&u32_file, &tokens).unwrap();
    tokens_refused(&u32_file, "data.token_bytes = 4");
    // A token beyond the vocabulary near the end: found at open, not when training reaches it.
    let late = dir.path().join("late.bin");
    let mut toks: Vec<u16> = (0..100_000u32).map(|i| (i % 250) as u16).collect();
    toks[99_000] = 300;
    std::fs::write(
        &late,
        toks.iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    tokens_refused(&late, "token 300 at position 99000");
    // An llm.c file whose header promises more tokens than follow.
    let llmc = dir.path().join("llmc.bin");
    std::fs::write(&llmc, llmc_bytes(5000, (0..1000u16).map(|t| t % 200))).unwrap();
    tokens_refused(&llmc, "llm.c header says 5000 tokens");
}

#[test]
fn a_valid_llmc_token_file_trains() {
    let dir = tempfile::tempdir().unwrap();
    let llmc = dir.path().join("llmc.bin");
    let tokens = (0..20_000u32).map(|t| ((t * 7) % 250 + 1) as u16);
    std::fs::write(&llmc, llmc_bytes(20_000, tokens)).unwrap();
    let data = [
        "--data-kind",
        "tokens",
        "--data-path",
        llmc.to_str().unwrap(),
    ];
    let (ok, _, err) = seqpipe(&[TINY_RUN, &["--steps", "1"], &data].concat());
    assert!(ok, "{err}");
}

#[test]
fn a_bad_world_size_is_an_error_not_a_lone_run() {
    for bad in ["abc", "0", "-1", "99999999999"] {
        let out = Command::new(env!("CARGO_BIN_EXE_seqpipe"))
            .args(["train", "--steps", "1"])
            .env("WORLD_SIZE", bad)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("WORLD_SIZE"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn divergence_stops_the_run_with_the_step_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hot.toml");
    std::fs::write(
        &cfg,
        "[optim]\nlr = 1000.0\nweight_decay = 0.0\nwarmup_steps = 0\n",
    )
    .unwrap();
    let config = ["--config", cfg.to_str().unwrap(), "--steps", "30"];
    let (ok, _, err) = seqpipe(&[TINY_RUN, &config].concat());
    assert!(!ok, "a diverging run must not exit 0");
    assert!(err.contains("step ") && err.contains("optim.lr"), "{err}");
}

/// Writing to a closed pipe or a full disk is an error (exit 1), never a panic, in every
/// subcommand.
#[test]
fn closed_or_full_output_is_an_error_not_a_panic() {
    let commands: [&[&str]; 4] = [
        &[
            "plan", "--model", "llama-7b", "--seq", "32k", "--gpus", "16",
        ],
        &["slice", "--model", "llama-7b", "--seq", "32k"],
        &[
            "simulate",
            "--model",
            "llama-7b",
            "--seq",
            "32k",
            "--kind",
            "1f1b",
            "--stages",
            "4",
            "--microbatches",
            "8",
        ],
        TINY_RUN,
    ];
    for args in commands {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_seqpipe"))
            .args(args)
            .stdout(full)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} > /dev/full: {err}");
        assert!(err.contains("standard output"), "{args:?}: {err}");

        let mut child = Command::new(env!("CARGO_BIN_EXE_seqpipe"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_BACKTRACE")
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away at once, like `| head -c0`
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?} | closed: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?} | closed: {err}");
        let _ = std::io::stderr().flush();
    }
}

/// Elastic planning of a 200-sequence batch used to run for minutes (branch-and-bound on large
/// recomputation programs); it must finish, and absurd batch sizes are refused.
#[test]
fn elastic_planning_of_200_sequences_finishes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args([
            "plan",
            "--model",
            "llama-7b",
            "--lengths",
            "dist:lognormal:mu=8.5,sigma=1.4",
            "--sequences",
            "200",
            "--context",
            "96k",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    // Debug build on a loaded 2-core machine: about 10 s; a minute and a half means it hung.
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(90) {
            let _ = child.kill();
            panic!("elastic planning of 200 sequences ran past 90 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("200 sequences"), "{text}");
    refused(
        &[
            "plan",
            "--model",
            "llama-7b",
            "--lengths",
            "dist:lognormal:mu=8.5,sigma=1.4",
            "--sequences",
            "1000000",
            "--context",
            "96k",
        ],
        "--sequences 1000000",
    );
}
