//! `--schedule-file`: a run executes a schedule written elsewhere (PyTorch's CSV layout or
//! seqpipe's JSON) exactly like the generated one, and a schedule it cannot run is refused before
//! step 0 with the offending action's text — never skipped mid-run.

mod common;

use std::path::Path;

use common::{seqpipe, step_losses};

const RUN: &[&str] = &[
    "--stages",
    "2",
    "--microbatches",
    "2",
    "--slices",
    "2",
    "--schedule",
    "seq1f1b",
    "--chunks",
    "1",
    "--seq-len",
    "16",
    "--steps",
    "2",
];

/// `seqpipe schedule` output for the run's configuration.
fn schedule_text(format: &str, lowered: bool) -> String {
    let mut args = vec![
        "schedule",
        "--kind",
        "seq1f1b",
        "--stages",
        "2",
        "--microbatches",
        "2",
        "--slices",
        "2",
        "--format",
        format,
    ];
    if lowered {
        args.push("--lowered");
    }
    let (ok, out, err) = seqpipe(&args);
    assert!(ok, "{err}");
    out
}

/// Trains with `extra`; returns (success, stderr, the metrics file's losses if it exists).
fn train(dir: &Path, name: &str, extra: &[&str]) -> (bool, String, Option<Vec<(u64, f64)>>) {
    let metrics = dir.join(format!("{name}.jsonl"));
    let m = metrics.to_str().unwrap();
    let args = [&["train"][..], RUN, &["--metrics", m], extra].concat();
    let (ok, _, err) = seqpipe(&args);
    (ok, err, metrics.exists().then(|| step_losses(&metrics)))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_schedule_file_runs_exactly_like_the_generated_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err, generated) = train(dir.path(), "generated", &[]);
    assert!(ok, "{err}");
    for (name, text) in [
        ("lowered.csv", schedule_text("csv", true)),
        ("compute-only.csv", schedule_text("csv", false)),
        ("schedule.json", schedule_text("json", false)),
    ] {
        let file = write(dir.path(), name, &text);
        let (ok, err, losses) = train(dir.path(), name, &["--schedule-file", &file]);
        assert!(ok, "{name}: {err}");
        assert_eq!(losses, generated, "{name}");
    }
}

/// The lowered CSV with stage 0's unit (micro-batch 0, slice 0) offloaded after the next
/// slice's forward and reloaded before its backward.
fn with_offload() -> String {
    let csv = schedule_text("csv", true).replacen(
        "0F0.1,0SEND_F0.1,",
        "0F0.1,0SEND_F0.1,0OFFLOAD0.0,",
        1,
    );
    let csv = csv.replacen("0RECV_B0.0,0B0.0", "0RECV_B0.0,0RELOAD0.0,0B0.0", 1);
    assert!(csv.contains("OFFLOAD") && csv.contains("RELOAD"), "{csv}");
    csv
}

#[test]
fn offload_and_reload_in_a_schedule_file_run_and_leave_the_losses_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err, generated) = train(dir.path(), "generated", &[]);
    assert!(ok, "{err}");
    let file = write(dir.path(), "offload.csv", &with_offload());
    let (ok, err, losses) = train(dir.path(), "offload", &["--schedule-file", &file]);
    assert!(ok, "{err}");
    assert_eq!(losses, generated);
}

#[test]
fn a_recompute_in_a_schedule_file_runs_with_a_granularity_and_is_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, err, generated) = train(dir.path(), "generated", &[]);
    assert!(ok, "{err}");
    let csv = schedule_text("csv", true);
    let csv = csv.replacen("0RECV_B0.0,0B0.0", "0RECV_B0.0,0RECOMPUTE0.0,0B0.0", 1);
    assert!(csv.contains("RECOMPUTE"), "{csv}");
    let file = write(dir.path(), "recompute.csv", &csv);
    let (ok, err, losses) = train(dir.path(), "refused", &["--schedule-file", &file]);
    assert!(!ok, "a RECOMPUTE without a granularity must be refused");
    assert!(
        err.contains("0RECOMPUTE0.0") && err.contains("selective or full"),
        "{err}"
    );
    assert_eq!(losses, None, "no step may run before the refusal");
    for granularity in ["selective", "full"] {
        let args = ["--schedule-file", file.as_str(), "--recompute", granularity];
        let (ok, err, losses) = train(dir.path(), granularity, &args);
        assert!(ok, "{granularity}: {err}");
        assert_eq!(losses, generated, "{granularity}");
    }
    // One unit offloaded, reloaded, then recomputed.
    let both = with_offload().replacen("0RELOAD0.0,", "0RELOAD0.0,0RECOMPUTE0.0,", 1);
    let file = write(dir.path(), "both.csv", &both);
    let args = ["--schedule-file", file.as_str(), "--recompute", "full"];
    let (ok, err, losses) = train(dir.path(), "both", &args);
    assert!(ok, "{err}");
    assert_eq!(losses, generated, "offloaded and recomputed");
}

#[test]
fn a_broken_or_foreign_schedule_file_is_refused_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let broken = schedule_text("csv", true).replacen("1RECV_F1.1,", "", 1);
    let file = write(dir.path(), "broken.csv", &broken);
    let (ok, err, _) = train(dir.path(), "broken", &["--schedule-file", &file]);
    assert!(!ok && err.contains("rule violation"), "{err}");

    let foreign =
        schedule_text("json", false).replace("\"microbatches\": 2", "\"microbatches\": 3");
    assert!(foreign.contains("\"microbatches\": 3"), "{foreign}");
    let file = write(dir.path(), "foreign.json", &foreign);
    let (ok, err, _) = train(dir.path(), "foreign", &["--schedule-file", &file]);
    assert!(!ok && err.contains("microbatches: 3"), "{err}");

    let (ok, err, _) = train(
        dir.path(),
        "missing",
        &["--schedule-file", "/nonexistent/s.csv"],
    );
    assert!(!ok && err.contains("/nonexistent/s.csv"), "{err}");
}
