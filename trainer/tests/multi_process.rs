//! One process per rank over TCP on loopback, started the way torchrun starts them (RANK,
//! WORLD_SIZE, MASTER_ADDR, MASTER_PORT): 2 ranks equal the threaded 2-stage run, 4 ranks (2
//! stages × 2 replicas) equal the threaded run over twice the micro-batches; a rank that dies is
//! named by the others, which stop with an error instead of hanging.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const COMMON: &[&str] = &[
    "train",
    "--seq-len",
    "16",
    "--stages",
    "2",
    "--schedule",
    "seq1f1b",
    "--chunks",
    "1",
    "--slices",
    "2",
    "--precision",
    "f64",
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_rank(rank: usize, world: usize, port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args(COMMON)
        .args(extra)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn losses(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn threaded(microbatches: &str, metrics: &Path) -> Vec<f64> {
    let out = Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args(COMMON)
        .args([
            "--steps",
            "3",
            "--microbatches",
            microbatches,
            "--metrics",
            metrics.to_str().unwrap(),
        ])
        .env_remove("WORLD_SIZE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    losses(metrics)
}

fn distributed(world: usize, metrics: &Path) -> Vec<f64> {
    let port = free_port();
    let m = metrics.to_str().unwrap();
    let children: Vec<Child> = (0..world)
        .map(|r| {
            spawn_rank(
                r,
                world,
                port,
                &["--steps", "3", "--microbatches", "2", "--metrics", m],
            )
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "rank {rank}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    losses(metrics)
}

fn assert_close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-10 * y.abs(), "{a:?} vs {b:?}");
    }
}

#[test]
fn two_and_four_ranks_equal_the_threaded_runs() {
    let dir = tempfile::tempdir().unwrap();
    let two = distributed(2, &dir.path().join("two.jsonl"));
    assert_close(&two, &threaded("2", &dir.path().join("threaded2.jsonl")));
    let four = distributed(4, &dir.path().join("four.jsonl"));
    assert_close(&four, &threaded("4", &dir.path().join("threaded4.jsonl")));
}

#[test]
fn a_dead_rank_is_named_and_nobody_hangs() {
    let port = free_port();
    let started = Instant::now();
    let survivor = spawn_rank(0, 2, port, &["--steps", "50", "--microbatches", "2"]);
    let victim = spawn_rank(
        1,
        2,
        port,
        &[
            "--steps",
            "50",
            "--microbatches",
            "2",
            "--abort-after-step",
            "1",
        ],
    );
    let out = survivor.wait_with_output().unwrap();
    let _ = victim.wait_with_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 must fail when rank 1 dies");
    assert!(err.contains("rank 1 disconnected"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}
