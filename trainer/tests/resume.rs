//! Checkpoint, crash, resume: the resumed run's losses equal an uninterrupted run's, bit for bit;
//! a crash while a checkpoint is being written leaves the previous one loadable.

mod common;

use std::path::Path;
use std::process::Command;

use candle_core::DType;
use seqpipe_trainer::checkpoint::resume;

use common::{step_losses as losses, SMALL_RUN as SMALL};

fn run(extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args(SMALL)
        .args(extra)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

#[test]
fn crash_then_resume_gives_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let whole = run(&["--steps", "6", "--metrics", &p("whole.jsonl")]);
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );

    let crashed = run(&[
        "--steps",
        "6",
        "--metrics",
        &p("cut.jsonl"),
        "--checkpoint-dir",
        &p("ckpt"),
        "--checkpoint-every",
        "3",
        "--abort-after-step",
        "3",
    ]);
    assert!(
        !crashed.status.success(),
        "the run must have been cut short"
    );
    let state = resume::load(Path::new(&p("ckpt")), DType::F32)
        .unwrap()
        .state;
    assert_eq!(
        state.next_step, 3,
        "the last complete checkpoint is the one after step 2"
    );

    // The resumed run recomputes every layer: memory settings may change across a resume, and
    // the numbers may not.
    let resumed = run(&[
        "--recompute",
        "full",
        "--steps",
        "6",
        "--metrics",
        &p("cut.jsonl"),
        "--checkpoint-dir",
        &p("ckpt"),
        "--checkpoint-every",
        "3",
        "--resume",
        &p("ckpt"),
    ]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let (whole, cut) = (
        losses(Path::new(&p("whole.jsonl"))),
        losses(Path::new(&p("cut.jsonl"))),
    );
    // The cut run logged steps 0..=3 before the crash, then the resumed run logged 3..=5 again.
    let resumed_part: Vec<_> = cut.iter().skip(4).copied().collect();
    assert_eq!(
        resumed_part,
        whole[3..].to_vec(),
        "resumed losses differ from the uninterrupted run"
    );
    assert_eq!(cut[..4].to_vec(), whole[..4].to_vec());
}

#[test]
fn a_half_written_checkpoint_never_replaces_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let ok = run(&["--steps", "2", "--checkpoint-dir", ckpt.to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A crash mid-write leaves a partial staging directory inside the checkpoint directory.
    let staged = ckpt.join(".staging-step-00000004-99999");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("model.safetensors"), b"half").unwrap();
    let loaded = resume::load(&ckpt, DType::F32).unwrap();
    assert_eq!(loaded.state.next_step, 2);
    // And the next run cleans the stale staging directory up and succeeds.
    let again = run(&["--steps", "4", "--checkpoint-dir", ckpt.to_str().unwrap()]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        !staged.exists(),
        "the crashed save's leftovers were removed"
    );
    assert_eq!(resume::load(&ckpt, DType::F32).unwrap().state.next_step, 4);
}

#[test]
fn resuming_with_another_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    assert!(
        run(&["--steps", "2", "--checkpoint-dir", ckpt.to_str().unwrap()])
            .status
            .success()
    );
    let out = run(&[
        "--steps",
        "4",
        "--slices",
        "2",
        "--resume",
        ckpt.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("another configuration"),
        "{err}"
    );
    assert!(
        err.contains("parallel.slices: 4 in the checkpoint, 2 now"),
        "the message names the setting that differs: {err}"
    );
}
