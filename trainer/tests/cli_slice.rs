//! `seqpipe slice` end to end: the printed plan, JSON output, config.json input and clean errors.

mod common;

use common::seqpipe;

#[test]
fn balanced_plan_is_printed() {
    let (ok, out, err) = seqpipe(&[
        "slice",
        "--model",
        "gpt-7b",
        "--seq",
        "32k",
        "--slices",
        "4",
        "--multiple",
        "8",
    ]);
    assert!(ok, "{err}");
    for len in ["11040", "8416", "7080", "6232"] {
        assert!(out.contains(len), "missing slice length {len} in\n{out}");
    }
    assert!(out.contains("max/min slice cost ratio"), "{out}");
}

#[test]
fn json_plan_parses_and_reads_config_json() {
    let dir = std::env::temp_dir().join(format!("seqpipe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":256,"intermediate_size":688,
            "num_attention_heads":8,"num_hidden_layers":4,"vocab_size":1000}"#,
    )
    .unwrap();
    let (ok, out, err) = seqpipe(&[
        "slice",
        "--model",
        config.to_str().unwrap(),
        "--seq",
        "1000",
        "--slices",
        "3",
        "--method",
        "uniform",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let lengths: Vec<u64> = plan["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap())
        .collect();
    assert_eq!(lengths, vec![334, 333, 333]);
}

#[test]
fn bad_input_is_one_clear_line_and_nonzero_exit() {
    let (ok, out, err) = seqpipe(&["slice", "--model", "gpt-7b", "--seq", "-64k"]);
    assert!(!ok && out.is_empty());
    assert!(err.contains("`-64k`"), "{err}");
    let (ok, _, err) = seqpipe(&["slice", "--model", "gpt-8b", "--seq", "64k"]);
    assert!(
        !ok && err.starts_with("error: unknown model preset `gpt-8b`"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn list_models_names_every_preset() {
    let (ok, out, _) = seqpipe(&["slice", "--list-models"]);
    assert!(ok);
    for name in ["gpt-1.3b", "gpt-30b", "llama-70b", "llama3-8b"] {
        assert!(out.contains(name), "{out}");
    }
}
