//! The checkpoint directory a run writes (`--checkpoint-dir`), laid out so that seqpipe never
//! deletes or renames anything it did not create and a crash at any instant leaves a complete,
//! verifiable checkpoint that `--resume DIR` finds:
//!
//! ```text
//! DIR/seqpipe-checkpoints.json    marker: this directory is seqpipe's (created by it)
//! DIR/step-00000012/              complete checkpoints, each with a manifest of checksums
//! DIR/step-00000015/
//! DIR/latest                      name of the newest one (informative; resume scans the steps)
//! DIR/.staging-step-00000018-PID/ a checkpoint being written (removed if a crash left it)
//! ```
//!
//! A checkpoint becomes visible only by the rename of its finished staging directory, so every
//! `step-*` directory is complete. A directory that is neither empty nor marked is refused before
//! training starts; inside a marked one, seqpipe touches only the names above.

use crate::error::{fail, Context, Result};
use std::path::{Path, PathBuf};

use super::atomic::write_atomic;

/// The marker file that makes a directory seqpipe's.
pub const MARKER: &str = "seqpipe-checkpoints.json";
/// The pointer to the newest checkpoint.
const LATEST: &str = "latest";
const STEP_PREFIX: &str = "step-";
const STAGING_PREFIX: &str = ".staging-";
const REPLACED_PREFIX: &str = ".replaced-";
/// Complete checkpoints kept: the newest and one before it, so a damaged newest one still
/// leaves something to resume from.
pub const KEEP: usize = 2;

/// Test hook: `SEQPIPE_CRASH_AT_POINT=k` aborts the process at the k-th (1-based) crash point of
/// checkpoint writing, so tests can stop a save between any two of its file operations.
fn crash_point(what: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PASSED: AtomicU64 = AtomicU64::new(0);
    let Some(at) = std::env::var("SEQPIPE_CRASH_AT_POINT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if PASSED.fetch_add(1, Ordering::SeqCst) + 1 == at {
        eprintln!("seqpipe: crash injected at checkpoint point {at} ({what})");
        std::process::abort();
    }
}

/// A run's checkpoint directory, checked to be seqpipe's own.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    root: PathBuf,
}

fn step_name(next_step: u64) -> String {
    format!("{STEP_PREFIX}{next_step:08}")
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix(STEP_PREFIX)?.parse().ok()
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Makes durable the renames and creations inside `dir` (POSIX: the directory entry itself
/// must be flushed too).
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("flushing directory {}", dir.display()))
}

impl CheckpointDir {
    /// Opens `root` for writing checkpoints: creates it (and its marker) when it does not exist
    /// or is empty; accepts it when it carries the marker; refuses anything else, naming it.
    /// Leftovers of crashed saves (staging and replaced directories) are removed.
    pub fn open_for_writing(root: &Path) -> Result<CheckpointDir> {
        if root.exists() && !root.is_dir() {
            fail!(
                Config,
                "--checkpoint-dir {} is a file, not a directory; give a new or empty directory",
                root.display()
            );
        }
        let marker = root.join(MARKER);
        if root.is_dir() && !marker.exists() {
            let names = entries(root)?;
            if !names.is_empty() {
                fail!(
                    Config,
                    "--checkpoint-dir {} is not empty and is not a seqpipe checkpoint directory \
                     (it has no {MARKER}; it holds {}). seqpipe never writes into a directory it \
                     did not create: give a new or empty directory",
                    root.display(),
                    preview(&names)
                );
            }
        }
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        if !marker.exists() {
            write_atomic(
                &marker,
                serde_json::to_string_pretty(&serde_json::json!({
                    "format": "seqpipe-checkpoints",
                    "version": 1,
                    "layout": "step-NNNNNNNN/ holds the checkpoint to resume at step NNNNNNNN",
                }))?
                .as_bytes(),
            )?;
        }
        let dir = CheckpointDir {
            root: root.to_path_buf(),
        };
        dir.remove_leftovers()?;
        Ok(dir)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn remove_leftovers(&self) -> Result<()> {
        for name in entries(&self.root)? {
            if name.starts_with(STAGING_PREFIX) || name.starts_with(REPLACED_PREFIX) {
                let path = self.root.join(&name);
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing the leftover {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// A fresh staging directory for the checkpoint that resumes at `next_step`.
    pub fn staging(&self, next_step: u64) -> Result<PathBuf> {
        let path = self.root.join(format!(
            "{STAGING_PREFIX}{}-{}",
            step_name(next_step),
            std::process::id()
        ));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }

    /// Publishes the finished `staged` checkpoint as the one resuming at `next_step`, points
    /// `latest` at it and removes the complete checkpoints older than the newest [`KEEP`].
    pub fn publish(&self, staged: &Path, next_step: u64) -> Result<PathBuf> {
        let name = step_name(next_step);
        let target = self.root.join(&name);
        crash_point("before publishing");
        if target.exists() {
            // The same step written again (a resumed run): move the old one aside first.
            let aside = self
                .root
                .join(format!("{REPLACED_PREFIX}{name}-{}", std::process::id()));
            std::fs::rename(&target, &aside)
                .with_context(|| format!("moving {} aside", target.display()))?;
            crash_point("between the two renames");
            std::fs::rename(staged, &target)
                .with_context(|| format!("moving {} into place", staged.display()))?;
            crash_point("before removing the replaced checkpoint");
            std::fs::remove_dir_all(&aside)
                .with_context(|| format!("removing {}", aside.display()))?;
        } else {
            std::fs::rename(staged, &target)
                .with_context(|| format!("moving {} into place", staged.display()))?;
        }
        sync_dir(&self.root)?;
        crash_point("before updating latest");
        write_atomic(&self.root.join(LATEST), format!("{name}\n").as_bytes())?;
        crash_point("before pruning");
        self.prune()?;
        Ok(target)
    }

    fn prune(&self) -> Result<()> {
        let steps = complete_steps(&self.root)?;
        for (_, name) in steps.iter().rev().skip(KEEP) {
            let path = self.root.join(name);
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing the old checkpoint {}", path.display()))?;
            crash_point("while pruning");
        }
        Ok(())
    }
}

/// A few names of a listing, for an error message.
fn preview(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The `step-*` directories of a checkpoint root, oldest first.
fn complete_steps(root: &Path) -> Result<Vec<(u64, String)>> {
    let mut steps: Vec<(u64, String)> = entries(root)?
        .into_iter()
        .filter_map(|n| step_of(&n).map(|s| (s, n)))
        .filter(|(_, n)| root.join(n).is_dir())
        .collect();
    steps.sort();
    Ok(steps)
}

/// What `--resume PATH` names: a checkpoint root (its newest checkpoint, and the older ones to
/// offer if that one fails to load), or one checkpoint directory itself.
pub fn resolve(path: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    if path.join(MARKER).is_file() {
        let steps = complete_steps(path)?;
        let mut dirs: Vec<PathBuf> = steps.iter().rev().map(|(_, n)| path.join(n)).collect();
        if dirs.is_empty() {
            fail!(
                Checkpoint,
                "--resume {}: the checkpoint directory holds no complete checkpoint yet \
                 (no step-* directory): the run that writes it has not finished a checkpoint",
                path.display()
            );
        }
        let newest = dirs.remove(0);
        return Ok((newest, dirs));
    }
    if path.join("trainer_state.json").is_file() {
        return Ok((path.to_path_buf(), Vec::new()));
    }
    if !path.exists() {
        fail!(Checkpoint, "--resume {}: no such directory", path.display());
    }
    fail!(
        Checkpoint,
        "--resume {}: neither a seqpipe checkpoint directory (with {MARKER}) nor one checkpoint \
         (with trainer_state.json)",
        path.display()
    )
}
