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
    // The table is ranked by simulating the leading schedules as the trainer runs them: the
    // best row's bubble is simulated (with the attention exchange, which --emit-config turns
    // on), and the output says the top is not certain at the default cap, with the bound.
    let by = best
        .split_whitespace()
        .find(|w| w.starts_with("sim") || *w == "bound")
        .unwrap_or_else(|| panic!("no bubble source in {best}"));
    assert_eq!(by, "sim+x", "{best}");
    let ranked = common::figures_on_line(&out, "ranked by simulating");
    assert_eq!(ranked[0], 8.0, "{out}");
    let bound = common::figures_on_line(&out, "are not certain");
    let best_mfu = common::figures_on_line(best, "slimpipe")[12];
    assert!(bound[1] > best_mfu, "{bound:?} vs {best_mfu}\n{out}");
}

/// `--exact` simulates until the top is certain; the cap and the flag are checked.
#[test]
fn exact_ranking_certifies_the_top() {
    let args = [
        "plan", "--model", "llama-7b", "--seq", "64k", "--gpus", "8", "--top", "3",
    ];
    let (ok, out, err) = seqpipe(&[&args[..], &["--exact"]].concat());
    assert!(ok, "{err}");
    assert!(out.contains("the top 3 are certain"), "{out}");
    let (ok, out, err) = seqpipe(&[&args[..], &["--simulate", "1"]].concat());
    assert!(ok, "{err}");
    assert!(out.contains("ranked by simulating 1 schedule(s)"), "{out}");
    for bad in [
        &["--simulate", "0"][..],
        &["--exact", "--simulate", "4"],
        &["--top", "0"],
    ] {
        let (ok, _, err) = seqpipe(&[&args[..], bad].concat());
        assert!(!ok, "{bad:?} accepted");
        assert!(
            err.contains(bad[bad.len() - 2]) || err.contains(bad[0]),
            "{err}"
        );
    }
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
            // The trainer runs SlimPipe's vocabulary-parallel head and attention exchange: never
            // marked.
            ("vocabulary-parallel head", false),
            ("attention exchange", false),
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

/// `seqpipe plan`'s plans that use recomputation or offload, scaled down to the tiny model (as
/// many layers as virtual stages, two tokens per slice and at least 32 per sequence), run under
/// `seqpipe train` with their `[parallel]` settings unchanged.
#[test]
fn planned_recomputation_and_offload_run_under_train_unchanged() {
    let (ok, out, err) = seqpipe(&[
        "plan",
        "--model",
        "llama-7b",
        "--seq",
        "16k",
        "--gpus",
        "8",
        "--gpu",
        "h100",
        "--max-tp",
        "1",
        "--max-cp",
        "1",
        "--global-batch",
        "8",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runnable: Vec<&serde_json::Value> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["over_bytes"].as_f64().unwrap() <= 0.0)
        .filter_map(|e| e.get("train_parallel").filter(|p| !p.is_null()))
        .collect();
    let memory = |p: &&serde_json::Value, want: &dyn Fn(&str, &serde_json::Value) -> bool| {
        want(p["recompute"].as_str().unwrap(), &p["offload"])
    };
    // The plans with the fewest units (stages × chunks × micro-batches × slices), to keep the
    // runs short.
    let units = |p: &&&serde_json::Value| -> u64 {
        ["stages", "chunks", "microbatches", "slices"]
            .iter()
            .map(|k| p[*k].as_u64().unwrap())
            .product()
    };
    let smallest = |want: &dyn Fn(&str, &serde_json::Value) -> bool| {
        runnable
            .iter()
            .filter(|p| memory(p, want))
            .min_by_key(units)
    };
    let picks = [
        smallest(&|r, o| r != "none" && o == "none"),
        smallest(&|r, o| r == "none" && o != "none"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, pick) in picks.into_iter().enumerate() {
        let parallel = pick.unwrap_or_else(|| panic!("no runnable plan of kind {i} in\n{out}"));
        let table: toml::Table = toml::Value::try_from(parallel).unwrap().try_into().unwrap();
        let int = |key: &str| table[key].as_integer().unwrap();
        let virtual_stages = int("stages") * int("chunks");
        // Two tokens per slice at least, so every slice of the plan exists.
        let seq_len = (2 * int("slices")).max(32);
        let text = format!(
            "steps = 1\n[model]\nlayers = {virtual_stages}\nmax_positions = {}\n[data]\n\
             batch = 1\nseq_len = {seq_len}\n[parallel]\n{}",
            seq_len + 1,
            toml::to_string(&table).unwrap()
        );
        let file = dir.path().join(format!("plan{i}.toml"));
        std::fs::write(&file, &text).unwrap();
        let (ok, out, err) = seqpipe(&["train", "--config", file.to_str().unwrap()]);
        assert!(ok, "{text}\n{err}");
        assert!(out.contains("loss"), "{out}");
        println!("ran the plan's settings:\n{text}");
    }
}

#[test]
fn a_cluster_file_sets_measured_links_and_names_its_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    let plan = |file: &std::path::Path| {
        seqpipe(&[
            "plan",
            "--model",
            "llama-70b",
            "--seq",
            "32k",
            "--gpus",
            "64",
            "--gpu",
            file.to_str().unwrap(),
        ])
    };
    // A slow NVLink: tensor parallelism costs more than on the DGX H100 preset.
    std::fs::write(
        &file,
        "base = \"h100\"\n[interconnect]\nnvlink_gbps = 45\nnetwork_gbps = 5\nlatency_us = 20\n",
    )
    .unwrap();
    let (ok, out, err) = plan(&file);
    assert!(ok, "{err}");
    assert!(out.contains("NVLink 45 GB/s, network 5 GB/s"), "{out}");
    std::fs::write(&file, "base = \"h100\"\nnvlink_gbps = 45\n").unwrap();
    let (ok, _, err) = plan(&file);
    assert!(!ok);
    assert!(
        err.contains("nvlink_gbps") && err.contains("cluster.toml"),
        "{err}"
    );
    std::fs::write(&file, "base = \"h100\"\n[interconnect]\nlatency_us = -1\n").unwrap();
    let (ok, _, err) = plan(&file);
    assert!(!ok);
    assert!(err.contains("interconnect.latency_us = -1"), "{err}");
    std::fs::write(&file, "base = \"v100\"\n").unwrap();
    let (ok, _, err) = plan(&file);
    assert!(!ok);
    assert!(err.contains("v100"), "{err}");
}
