//! `seqpipe plan --lengths … --context …`: elastic planning of a batch from a distribution or a
//! file prints chunks, pipelines, recomputation, iteration time, bubble and per-stage peaks;
//! bad input is a clean error.

mod common;

use common::seqpipe;

#[test]
fn elastic_plan_from_a_distribution() {
    let (ok, out, err) = seqpipe(&[
        "plan",
        "--model",
        "llama-7b",
        "--lengths",
        "dist:powerlaw:alpha=0.9,min=1024",
        "--context",
        "48k",
        "--pp",
        "4",
        "--sequences",
        "24",
        "--budget-gib",
        "80",
    ]);
    assert!(ok, "{err}");
    for needle in [
        "chunking: K = ",
        "pipeline 0:",
        "recomputation",
        "bubble",
        "peak GiB per stage",
        "seq1f1b (packed, fixed n)",
        "1f1b (packed)",
        "seqpipe train --elastic runs this kind of plan",
        "planner only, not run by seqpipe train yet: tensor parallelism (tp = 4)",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
}

#[test]
fn elastic_plan_from_files() {
    let dir = std::env::temp_dir().join(format!("seqpipe-elastic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lines = dir.join("lengths.txt");
    std::fs::write(&lines, "30000\n1200\n800\n4000\n2500\n").unwrap();
    let jsonl = dir.join("lengths.jsonl");
    std::fs::write(
        &jsonl,
        "{\"length\": 30000}\n{\"length\": 1200}\n{\"length\": 800}\n",
    )
    .unwrap();
    for file in [&lines, &jsonl] {
        let (ok, out, err) = seqpipe(&[
            "plan",
            "--model",
            "llama-7b",
            "--lengths",
            file.to_str().unwrap(),
            "--context",
            "32k",
        ]);
        assert!(ok, "{err}");
        assert!(out.contains("sequences,"), "{out}");
    }
    let (ok, _, err) = seqpipe(&[
        "plan",
        "--model",
        "llama-7b",
        "--lengths",
        lines.to_str().unwrap(),
        "--context",
        "16k",
    ]);
    assert!(!ok && err.contains("exceeds the context"), "{err}");
    let (ok, _, err) = seqpipe(&[
        "plan",
        "--model",
        "llama-7b",
        "--lengths",
        "dist:gamma:k=1",
        "--context",
        "16k",
    ]);
    assert!(!ok && err.contains("unknown distribution"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
