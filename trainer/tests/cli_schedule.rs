//! `seqpipe schedule` and `seqpipe simulate` end to end: printed figures, machine-readable output
//! that reads back into the same schedule, and clean errors.

mod common;

use common::seqpipe;

use seqpipe_schedule::{csv, generate, lower, Schedule, ScheduleConfig, ScheduleKind};

const SEQ1F1B: [&str; 9] = [
    "schedule",
    "--kind",
    "seq1f1b",
    "--stages",
    "4",
    "--microbatches",
    "8",
    "--slices",
    "2",
];

#[test]
fn text_shows_bubble_peaks_and_grid() {
    let (ok, out, err) = seqpipe(&SEQ1F1B);
    assert!(ok, "{err}");
    assert!(out.contains("bubble ratio 15.79 %"), "{out}");
    assert!(
        out.contains("peak units in flight per stage: [5, 4, 3, 2]"),
        "{out}"
    );
    assert!(out.contains("0F0.0  0F0.1  0F1.0  0F1.1"), "{out}");
}

#[test]
fn csv_and_json_read_back_into_the_generated_schedule() {
    let config = ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 8).with_slices(2);
    let expected = generate(&config).unwrap();
    let (ok, out, err) = seqpipe(&[&SEQ1F1B[..], &["--format", "csv"]].concat());
    assert!(ok, "{err}");
    assert_eq!(csv::from_csv(&out, config, false).unwrap(), expected);
    assert!(
        out.starts_with(csv::SLICED_MARK),
        "a sliced CSV is marked for PyTorch readers"
    );
    // PyTorch's own dialect: refused when sliced, PyTorch's CSV otherwise.
    let (ok, _, err) = seqpipe(&[&SEQ1F1B[..], &["--format", "pytorch-csv"]].concat());
    assert!(!ok && err.contains("2 slices"), "{err}");
    let (ok, out, err) = seqpipe(&[
        "schedule",
        "--kind",
        "1f1b",
        "--stages",
        "2",
        "--microbatches",
        "2",
        "--format",
        "pytorch-csv",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n");
    let (ok, out, err) = seqpipe(&[&SEQ1F1B[..], &["--format", "json", "--lowered"]].concat());
    assert!(ok, "{err}");
    assert_eq!(
        Schedule::from_json(&out).unwrap(),
        lower(&expected).unwrap()
    );
}

#[test]
fn chrome_and_svg_are_produced() {
    let (ok, out, err) = seqpipe(&[&SEQ1F1B[..], &["--format", "chrome"]].concat());
    assert!(ok, "{err}");
    let trace: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(trace["traceEvents"].as_array().unwrap().len() > 4 * 32);
    let (ok, out, err) = seqpipe(&[&SEQ1F1B[..], &["--format", "svg"]].concat());
    assert!(ok, "{err}");
    assert!(
        out.starts_with("<svg") && out.trim_end().ends_with("</svg>"),
        "{out}"
    );
}

#[test]
fn invalid_configurations_are_one_line_errors() {
    let (ok, _, err) = seqpipe(&[
        "schedule",
        "--kind",
        "interleaved",
        "--stages",
        "4",
        "--microbatches",
        "6",
        "--chunks",
        "2",
    ]);
    assert!(!ok);
    assert!(
        err.starts_with("error: interleaved: micro-batches (m) = 6 must be a multiple of 4"),
        "{err}"
    );
    let (ok, _, err) = seqpipe(&[
        "schedule",
        "--kind",
        "pipedream",
        "--stages",
        "4",
        "--microbatches",
        "6",
    ]);
    assert!(!ok);
    assert!(err.contains("unknown schedule kind `pipedream`"), "{err}");
}

fn simulate_bubble(slicing: &str) -> f64 {
    let (ok, out, err) = seqpipe(&[
        "simulate",
        "--model",
        "gpt-7b",
        "--seq",
        "32k",
        "--kind",
        "seq1f1b",
        "--stages",
        "4",
        "--microbatches",
        "8",
        "--slices",
        "4",
        "--slicing",
        slicing,
        "--multiple",
        "8",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("units in flight"), "{out}");
    let line = out.lines().find(|l| l.contains("bubble ratio")).unwrap();
    let pct = line
        .split("bubble ratio ")
        .nth(1)
        .unwrap()
        .trim_end_matches(" %");
    pct.parse().unwrap()
}

#[test]
fn simulate_reports_balanced_slicing_beating_uniform() {
    let balanced = simulate_bubble("balanced");
    let uniform = simulate_bubble("uniform");
    // Balanced slices come close to the equal-unit 8.57 %; uniform causal slices stall more.
    assert!(balanced > 8.0 && balanced < 10.0, "balanced {balanced}");
    assert!(
        uniform > balanced + 1.0,
        "uniform {uniform} vs balanced {balanced}"
    );
}
