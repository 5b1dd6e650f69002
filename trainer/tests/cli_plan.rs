//! `seqpipe plan` end to end: the acceptance case (Llama-70B, 512K, 256 H100s) finishes in seconds,
//! its best plan is SlimPipe within 80 GB, and 1F1B without recomputation is reported as not fitting
//! with the amount; bad input is a clean error.

mod common;

use common::seqpipe;

use std::time::{Duration, Instant};

#[test]
fn llama70b_512k_on_256_h100() {
    let start = Instant::now();
    let (ok, out, err) = seqpipe(&[
        "plan",
        "--model",
        "llama-70b",
        "--seq",
        "512k",
        "--gpus",
        "256",
        "--gpu",
        "h100",
    ]);
    assert!(ok, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    let best = out
        .lines()
        .skip_while(|l| !l.starts_with("best plans:"))
        .nth(2)
        .unwrap_or_else(|| panic!("no plan table in\n{out}"));
    assert!(
        best.starts_with("slimpipe"),
        "best plan is not SlimPipe: {best}\n{out}"
    );
    // Peak column "GiB@stage": within 80 GB = 74.5 GiB.
    let peak: f64 = best
        .split_whitespace()
        .find(|w| w.contains('@'))
        .and_then(|w| w.split('@').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(peak * 1024f64.powi(3) <= 80e9, "{best}");
    let one_f1b = out
        .lines()
        .find(|l| l.trim_start().starts_with("1f1b "))
        .unwrap_or_else(|| panic!("no 1f1b verdict in\n{out}"));
    assert!(
        one_f1b.contains("does not fit") && one_f1b.contains("GiB over the budget"),
        "{one_f1b}"
    );
}

#[test]
fn json_output_and_errors() {
    let (ok, out, err) = seqpipe(&[
        "plan", "--model", "llama-7b", "--seq", "32k", "--gpus", "8", "--format", "json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.as_array().is_some_and(|a| !a.is_empty()));
    let (ok, _, err) = seqpipe(&[
        "plan", "--model", "llama-7b", "--seq", "32k", "--gpus", "8", "--gpu", "tpu",
    ]);
    assert!(
        !ok && err.contains("unknown GPU preset `tpu`") && err.contains("h100"),
        "{err}"
    );
    let (ok, _, err) = seqpipe(&[
        "plan",
        "--model",
        "llama-7b",
        "--seq",
        "32k",
        "--gpus",
        "8",
        "--budget-gib",
        "-3",
    ]);
    assert!(!ok && err.contains("-3"), "{err}");
}

/// Every configuration the planner prices with a feature `seqpipe train` does not run is marked
/// with it (JSON `planned_only`, a note under the row in text); what the trainer runs is not.
#[test]
fn features_the_trainer_does_not_run_are_marked_planner_only() {
    let args = ["plan", "--model", "llama-7b", "--seq", "32k", "--gpus", "8"];
    let (ok, out, err) = seqpipe(&[&args[..], &["--format", "json"]].concat());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut unmarked = 0;
    for e in v.as_array().unwrap() {
        let c = &e["candidate"];
        let marks: Vec<&str> = e["planned_only"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        let expect = [
            ("tensor parallelism", c["parallel"]["tp"].as_u64() > Some(1)),
            (
                "context parallelism",
                c["parallel"]["cp"].as_u64() > Some(1),
            ),
            // Selective and full recomputation run: never marked.
            ("recomputation", false),
            (
                "offload overlapped with GPU compute",
                c["offload_fraction"].as_f64() > Some(0.0),
            ),
            (
                "vocabulary-parallel head",
                c["kind"].get("slim_pipe").is_some(),
            ),
        ];
        for (mark, priced) in expect {
            assert_eq!(marks.contains(&mark), priced, "{mark}: {e}");
        }
        unmarked += usize::from(marks.is_empty());
    }
    assert!(
        unmarked > 0,
        "some configurations are ones the trainer runs"
    );
    let (ok, text, err) = seqpipe(&args);
    assert!(ok, "{err}");
    assert!(
        text.contains("planner only, not run by seqpipe train yet: "),
        "{text}"
    );
}
