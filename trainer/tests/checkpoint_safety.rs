//! Checkpoints a user can trust (issue 23): seqpipe never deletes or renames what it did not
//! create, finds a resumable checkpoint after a crash at any instant (injected at every file
//! operation of a save, and by SIGKILL at random instants), and refuses damaged or edited
//! checkpoints with a message naming what is wrong.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use candle_core::DType;
use rand::{Rng, SeedableRng};
use seqpipe_trainer::checkpoint::{hf, manifest, resume};
use seqpipe_trainer::error::Error;

use common::{step_losses as losses, SMALL_RUN as SMALL};

fn seqpipe() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_seqpipe"));
    cmd.args(SMALL).env_remove("RUST_BACKTRACE");
    cmd
}

fn run(extra: &[&str]) -> Output {
    seqpipe().args(extra).output().unwrap()
}

fn run_env(extra: &[&str], key: &str, value: &str) -> Output {
    seqpipe().args(extra).env(key, value).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_directory_seqpipe_did_not_create_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("exp");
    std::fs::create_dir(&exp).unwrap();
    std::fs::write(exp.join("notes.txt"), "keep").unwrap();
    let out = run(&["--steps", "1", "--checkpoint-dir", s(&exp)]);
    assert!(!out.status.success(), "a foreign directory must be refused");
    assert!(
        stderr(&out).contains("not a seqpipe checkpoint directory")
            && stderr(&out).contains("notes.txt"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(exp.join("notes.txt")).unwrap(),
        "keep"
    );

    // `--checkpoint-dir .` in a working directory with the user's files.
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("data.txt"), "mine").unwrap();
    let out = seqpipe()
        .args(["--steps", "1", "--checkpoint-dir", "."])
        .current_dir(&work)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(work.join("data.txt")).unwrap(),
        "mine"
    );

    // A file where the directory should be.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = run(&["--steps", "1", "--checkpoint-dir", s(&file)]);
    assert!(!out.status.success() && stderr(&out).contains("is a file"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn sibling_directories_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    // The old layout derived `run.old` from `run.v2` and deleted it.
    for sibling in ["run.old", "run.v2.old", "run.v2.tmp-1"] {
        std::fs::create_dir(dir.path().join(sibling)).unwrap();
        std::fs::write(dir.path().join(sibling).join("keep.txt"), sibling).unwrap();
    }
    let ck = dir.path().join("run.v2");
    // Two runs: the second republishes step 2 over the first's, and prunes.
    for steps in ["2", "4"] {
        let out = run(&["--steps", steps, "--checkpoint-dir", s(&ck)]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = run(&["--steps", "2", "--checkpoint-dir", s(&ck)]);
    assert!(out.status.success(), "{}", stderr(&out));
    for sibling in ["run.old", "run.v2.old", "run.v2.tmp-1"] {
        let kept = std::fs::read_to_string(dir.path().join(sibling).join("keep.txt")).unwrap();
        assert_eq!(kept, sibling);
    }
}

#[test]
fn checkpoint_options_that_cannot_apply_are_errors() {
    let out = run(&["--steps", "2", "--checkpoint-every", "1"]);
    assert!(
        !out.status.success() && stderr(&out).contains("without output.checkpoint_dir"),
        "{}",
        stderr(&out)
    );
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let out = run(&[
        "--steps",
        "2",
        "--checkpoint-dir",
        s(&ck),
        "--checkpoint-every",
        "0",
    ]);
    assert!(
        !out.status.success() && stderr(&out).contains("checkpoint_every = 0"),
        "{}",
        stderr(&out)
    );
    assert!(!ck.exists(), "nothing is created for a refused run");
}

/// Writes one checkpoint and returns its directory (`ck/step-00000002`).
fn one_checkpoint(dir: &Path) -> std::path::PathBuf {
    let ck = dir.join("ck");
    let out = run(&["--steps", "2", "--checkpoint-dir", s(&ck)]);
    assert!(out.status.success(), "{}", stderr(&out));
    ck.join("step-00000002")
}

#[test]
fn a_flipped_bit_or_an_edit_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let step = one_checkpoint(dir.path());
    let weights = step.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&weights, &bytes).unwrap();
    let err = refused(&step);
    assert!(
        err.contains("model.safetensors") && err.contains("SHA-256"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let step = one_checkpoint(dir.path());
    let config = step.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("10000.0", "500000.0")).unwrap();
    let err = refused(&step);
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn files_that_disagree_are_refused_even_with_a_matching_manifest() {
    let files = [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ];
    // rope_theta edited in config.json, manifest rewritten to match: the model differs from the
    // run's configuration.
    let dir = tempfile::tempdir().unwrap();
    let step = one_checkpoint(dir.path());
    let config = step.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("10000.0", "500000.0")).unwrap();
    manifest::write(&step, &files).unwrap();
    let err = refused(&step);
    assert!(err.contains("another model"), "{err}");

    // An extra tensor in the weights.
    let dir = tempfile::tempdir().unwrap();
    let step = one_checkpoint(dir.path());
    let (model, mut params) = hf::load(&step, DType::F32).unwrap();
    let extra = params.values().next().unwrap().clone();
    params.insert("model.layers.0.surprise".into(), extra);
    let staged = dir.path().join("rewritten");
    hf::save(&staged, &model, &params).unwrap();
    std::fs::copy(
        staged.join("model.safetensors"),
        step.join("model.safetensors"),
    )
    .unwrap();
    manifest::write(&step, &files).unwrap();
    let err = refused(&step);
    assert!(err.contains("model.layers.0.surprise"), "{err}");

    // A data position no data source can reach.
    let dir = tempfile::tempdir().unwrap();
    let step = one_checkpoint(dir.path());
    let state = step.join("trainer_state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    v["data_position"] = serde_json::json!(u128::MAX.to_string());
    std::fs::write(&state, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    manifest::write(&step, &files).unwrap();
    let out = run(&["--steps", "4", "--resume", s(&step)]);
    assert!(
        !out.status.success() && stderr(&out).contains("data position"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_checkpoint_file_that_is_a_link_to_a_device_is_refused_not_read_forever() {
    let dir = tempfile::tempdir().unwrap();
    let step = one_checkpoint(dir.path());
    let weights = step.join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &weights).unwrap();
    let err = refused(&step);
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_damaged_newest_checkpoint_names_the_older_one() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let out = run(&[
        "--steps",
        "4",
        "--checkpoint-dir",
        s(&ck),
        "--checkpoint-every",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(ck.join("step-00000004/optimizer.safetensors"), b"damaged").unwrap();
    let err = refused(&ck);
    assert!(err.contains("step-00000002"), "{err}");
}

/// The error of loading a checkpoint that must be refused; a bad checkpoint is its own kind.
fn refused(path: &Path) -> String {
    let e = resume::load(path, DType::F32).expect_err("the checkpoint must be refused");
    assert!(matches!(e.kind(), Error::Checkpoint(_)), "{e:?}");
    e.to_string()
}

/// Whether a published checkpoint exists in `ck`.
fn has_step(ck: &Path) -> bool {
    std::fs::read_dir(ck)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
        .unwrap_or(false)
}

/// The uninterrupted run every crash test must reproduce.
fn uninterrupted(dir: &Path, steps: &str) -> Vec<(u64, f64)> {
    let metrics = dir.join("whole.jsonl");
    let out = run(&["--steps", steps, "--metrics", s(&metrics)]);
    assert!(out.status.success(), "{}", stderr(&out));
    losses(&metrics)
}

/// Resumes from `ck` to the end and checks the resumed steps' losses against `want`.
fn resume_matches(ck: &Path, steps: &str, want: &[(u64, f64)], why: &str) {
    let metrics = ck.with_extension("resumed.jsonl");
    let _ = std::fs::remove_file(&metrics);
    let out = run(&[
        "--steps",
        steps,
        "--checkpoint-dir",
        s(ck),
        "--checkpoint-every",
        "1",
        "--resume",
        s(ck),
        "--metrics",
        s(&metrics),
    ]);
    assert!(
        out.status.success(),
        "{why}: resume failed: {}",
        stderr(&out)
    );
    let got = losses(&metrics);
    let first = got[0].0 as usize;
    assert_eq!(got, want[first..].to_vec(), "{why}: resumed losses differ");
}

#[test]
fn a_crash_at_every_file_operation_of_a_save_leaves_a_resumable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let want = uninterrupted(dir.path(), "4");
    // Checkpoints after steps 0..=3; the first save has 2 crash points (publish, latest), later
    // ones up to 4 more (pruning); k runs past them all.
    let mut crashed_saves = 0;
    for k in 1..=16 {
        let ck = dir.path().join(format!("ck{k}"));
        let args = [
            "--steps",
            "4",
            "--checkpoint-dir",
            s(&ck),
            "--checkpoint-every",
            "1",
        ];
        let out = run_env(&args, "SEQPIPE_CRASH_AT_POINT", &k.to_string());
        if out.status.success() {
            break; // k is past the last crash point of the run
        }
        assert!(stderr(&out).contains("crash injected"), "{}", stderr(&out));
        crashed_saves += 1;
        if !has_step(&ck) {
            // Crashed before its first checkpoint was published: nothing to resume yet, and
            // --resume says so.
            let out = run(&["--steps", "4", "--resume", s(&ck)]);
            assert!(
                stderr(&out).contains("no complete checkpoint yet"),
                "{}",
                stderr(&out)
            );
            continue;
        }
        let newest = resume::load(&ck, DType::F32).unwrap();
        if newest.state.next_step == 4 {
            // The crash came after the final checkpoint was published: training was complete,
            // and the checkpoint loads (verified) with nothing left to run.
            continue;
        }
        resume_matches(&ck, "4", &want, &format!("crash point {k}"));
    }
    assert!(
        crashed_saves >= 10,
        "only {crashed_saves} crash points were reached"
    );
}

/// SIGKILL at random instants of a run that checkpoints every step; every kill must leave a
/// checkpoint that resumes to the uninterrupted losses. `SEQPIPE_KILL_RUNS` sets how many kills
/// (CI runs 8; the long form, e.g. 60, is run by hand).
#[test]
fn killed_at_random_instants_it_always_resumes() {
    let runs: usize = std::env::var("SEQPIPE_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let steps = "12";
    let want = uninterrupted(dir.path(), steps);
    // How long a whole run takes here, to spread the kills over it.
    let start = std::time::Instant::now();
    let probe = dir.path().join("probe");
    let out = run(&[
        "--steps",
        steps,
        "--checkpoint-dir",
        s(&probe),
        "--checkpoint-every",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = start.elapsed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
    let (mut resumed, mut before_first) = (0, 0);
    for i in 0..runs {
        let ck = dir.path().join(format!("kill{i}"));
        let mut child = seqpipe()
            .args([
                "--steps",
                steps,
                "--checkpoint-dir",
                s(&ck),
                "--checkpoint-every",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = whole.mul_f64(rng.random_range(0.3..1.0));
        std::thread::sleep(at);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !has_step(&ck) {
            before_first += 1;
            continue;
        }
        if status.success() {
            // Finished before the kill: the final checkpoint is at the last step, nothing to do.
            continue;
        }
        let newest = resume::load(&ck, DType::F32).expect("a published checkpoint loads");
        if newest.state.next_step == 12 {
            // Killed after the final checkpoint was published but before the process exited:
            // training was complete, and the checkpoint loads (verified) with nothing to run.
            continue;
        }
        resume_matches(&ck, steps, &want, &format!("kill {i} after {at:?}"));
        resumed += 1;
    }
    eprintln!("{runs} kills: {resumed} resumed, {before_first} before the first checkpoint");
    assert!(
        resumed * 3 >= runs,
        "too few kills landed mid-run ({resumed} of {runs}) to test anything"
    );
}
