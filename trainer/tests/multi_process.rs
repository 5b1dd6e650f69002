//! One process per rank over TCP on loopback, started the way torchrun starts them (RANK,
//! WORLD_SIZE, MASTER_ADDR, MASTER_PORT): ranks equal the threaded run of the same configuration
//! bit for bit (schedules, a tied embedding, 2 stages × 2 replicas); checkpoints written
//! by the ranks survive killing them and resume (multi-process or threaded) to the same losses;
//! a rank that dies is named by the others, which stop with an error instead of hanging.

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
    "--precision",
    "f64",
];

/// Schedule settings a run takes unless its arguments give them.
const DEFAULTS: &[(&str, &str)] = &[
    ("--schedule", "seq1f1b"),
    ("--chunks", "1"),
    ("--slices", "2"),
];

/// The common arguments, the defaults `extra` does not override, then `extra`.
fn arguments<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = COMMON.to_vec();
    for &(flag, value) in DEFAULTS {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    args
}

/// A free port below the kernel's ephemeral range (32768 and up on Linux): a port from the
/// ephemeral range can be taken, between this probe and rank 0's bind, by an outgoing connection
/// of another test running in parallel ("Address already in use"). Ports are handed out once per
/// test process, spread by the process id so concurrent test binaries rarely meet.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 20; // + 2,000 stays below 32768
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn spawn_rank(rank: usize, world: usize, port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args(arguments(extra))
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

fn run_threaded(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args(arguments(args))
        .env_remove("WORLD_SIZE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `world` ranks with `args`; returns whether every rank succeeded and their stderr.
fn run_ranks(world: usize, args: &[&str]) -> (bool, String) {
    let port = free_port();
    let children: Vec<Child> = (0..world)
        .map(|r| spawn_rank(r, world, port, args))
        .collect();
    let (mut ok, mut err) = (true, String::new());
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        ok &= out.status.success();
        err += &format!("rank {rank}: {}\n", String::from_utf8_lossy(&out.stderr));
    }
    (ok, err)
}

/// Threaded and multi-process runs are the same rank loop over different transports: their
/// losses are equal bit for bit, for every schedule family, a tied embedding, data
/// parallelism (4 processes = 2 stages × 2 replicas against 4 threads), the
/// vocabulary-parallel head and elastic pipelines (each rank plans the same chunks).
#[test]
fn multi_process_losses_equal_the_threaded_run_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let tied = dir.path().join("tied.toml");
    std::fs::write(&tied, "[model]\ntie_embeddings = true\n").unwrap();
    let tied = tied.to_str().unwrap();
    // Documents ending in 255 for the elastic case: lengths 1 to 20 (some cut at the context).
    let docs = dir.path().join("docs.bin");
    let tokens: Vec<u8> = (0..2000u32)
        .map(|i| {
            if (i * i + 7 * i) % 23 == 0 {
                255
            } else {
                (i % 200) as u16
            }
        })
        .flat_map(u16::to_le_bytes)
        .collect();
    std::fs::write(&docs, tokens).unwrap();
    let docs = docs.to_str().unwrap();
    let elastic = [
        "--elastic",
        "--slices",
        "3",
        "--data-kind",
        "tokens",
        "--data-path",
        docs,
        "--eos",
        "255",
    ];
    let cases: [(&str, usize, Vec<&str>); 10] = [
        ("elastic, masked documents", 2, elastic.to_vec()),
        ("1f1b", 2, vec!["--schedule", "1f1b", "--slices", "1"]),
        ("seq1f1b", 2, vec![]),
        (
            "slimpipe",
            2,
            vec!["--schedule", "slimpipe", "--chunks", "2"],
        ),
        ("zb-h1", 2, vec!["--schedule", "zb-h1", "--slices", "1"]),
        ("tied embedding", 2, vec!["--config", tied]),
        ("2 replicas", 4, vec!["--replicas", "2"]),
        (
            "vocab-parallel slimpipe",
            2,
            vec![
                "--schedule",
                "slimpipe",
                "--chunks",
                "2",
                "--vocab-parallel",
            ],
        ),
        (
            "exchange, vocab-parallel, 4 slices",
            2,
            vec![
                "--schedule",
                "slimpipe",
                "--chunks",
                "2",
                "--slices",
                "4",
                "--exchange",
                "--vocab-parallel",
            ],
        ),
        (
            "vocab-parallel tied, 2 replicas",
            4,
            vec!["--config", tied, "--vocab-parallel", "--replicas", "2"],
        ),
    ];
    for (name, world, extra) in cases {
        let metrics = |kind: &str| dir.path().join(format!("{name}-{kind}.jsonl"));
        let run = [&["--steps", "3", "--microbatches", "2"][..], &extra].concat();
        let m = metrics("ranks");
        let (ok, err) = run_ranks(
            world,
            &[&run[..], &["--metrics", m.to_str().unwrap()]].concat(),
        );
        assert!(ok, "{name}: {err}");
        let t = metrics("threads");
        run_threaded(&[&run[..], &["--metrics", t.to_str().unwrap()]].concat());
        let (ranks, threads) = (losses(&m), losses(&t));
        assert_eq!(ranks.len(), 3, "{name}");
        assert_eq!(ranks, threads, "{name}: multi-process vs threaded losses");
    }
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

#[test]
fn killed_ranks_resume_from_their_checkpoint_to_the_uninterrupted_losses() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ck, want) = (path("ck"), path("want.jsonl"));
    let run = ["--steps", "4", "--microbatches", "2"];
    run_threaded(&[&run[..], &["--metrics", &want]].concat());
    let want = losses(Path::new(&want));

    // Both ranks die right after step 1, whose checkpoint (every 2 steps) is complete.
    let (distributed_log, threaded_log) = (path("ranks.jsonl"), path("threaded.jsonl"));
    let writing = [
        "--checkpoint-dir",
        &ck,
        "--checkpoint-every",
        "2",
        "--metrics",
        &distributed_log,
    ];
    let (ok, _) = run_ranks(
        2,
        &[&run[..], &writing, &["--abort-after-step", "1"]].concat(),
    );
    assert!(!ok, "the ranks were told to abort");
    assert_eq!(losses(Path::new(&distributed_log)), want[..2]);

    // The ranks' checkpoint has the threaded format: a threaded run resumes from it...
    run_threaded(&[&run[..], &["--resume", &ck, "--metrics", &threaded_log]].concat());
    assert_eq!(losses(Path::new(&threaded_log)), want[2..]);
    // ...and so do the ranks, appending to their metrics file.
    let (ok, err) = run_ranks(2, &[&run[..], &writing, &["--resume", &ck]].concat());
    assert!(ok, "{err}");
    assert_eq!(losses(Path::new(&distributed_log)), want);
    let state =
        std::fs::read_to_string(dir.path().join("ck/step-00000004/trainer_state.json")).unwrap();
    assert!(state.contains("\"next_step\": 4"), "{state}");
}

/// Spawns ranks with per-rank arguments; returns each rank's (success, stderr) and the seconds.
fn run_ranks_each(per_rank: &[&[&str]]) -> (Vec<(bool, String)>, f64) {
    let port = free_port();
    let started = Instant::now();
    let world = per_rank.len();
    let children: Vec<Child> = per_rank
        .iter()
        .enumerate()
        .map(|(r, args)| spawn_rank(r, world, port, args))
        .collect();
    let outcomes = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect();
    (outcomes, started.elapsed().as_secs_f64())
}

#[test]
fn ranks_started_with_other_settings_all_stop_before_step_0() {
    let (ranks, seconds) = run_ranks_each(&[
        &["--steps", "3", "--microbatches", "2"],
        &["--steps", "4", "--microbatches", "2"],
    ]);
    for (rank, (ok, err)) in ranks.iter().enumerate() {
        assert!(!ok, "rank {rank} must not train: {err}");
        assert!(err.contains("rank(s) [1]"), "rank {rank}: {err}");
    }
    assert!(
        ranks[1].1.contains("steps: 3 on rank 0, 4 here"),
        "{}",
        ranks[1].1
    );
    assert!(seconds < 30.0, "took {seconds} s");
}

#[test]
fn a_diverging_multi_process_run_stops_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hot.toml");
    std::fs::write(
        &cfg,
        "[optim]\nlr = 1000.0\nweight_decay = 0.0\nwarmup_steps = 0\n",
    )
    .unwrap();
    let args: &[&str] = &[
        "--config",
        cfg.to_str().unwrap(),
        "--steps",
        "30",
        "--microbatches",
        "2",
    ];
    let (ranks, _) = run_ranks_each(&[args, args]);
    for (rank, (ok, err)) in ranks.iter().enumerate() {
        assert!(!ok, "rank {rank} exited 0 on a diverging run");
        assert!(
            err.contains("step ") && err.contains("optim.lr"),
            "rank {rank}: {err}"
        );
    }
}

/// GPU stages in separate processes exchange tensors over NCCL: a build without the `cuda` and
/// `nccl` features refuses `--device cuda` at once, naming what is missing, before any rank waits
/// for another (rank 1 alone must not hang on the rendezvous).
#[test]
#[cfg(not(all(feature = "cuda", feature = "nccl")))]
fn a_cpu_build_refuses_gpu_ranks_before_the_rendezvous() {
    let started = Instant::now();
    let out = spawn_rank(1, 2, free_port(), &["--steps", "1", "--device", "cuda"])
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs a build with the `cuda` and `nccl` features")
            && err.contains("cargo xtask gpu-build"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
