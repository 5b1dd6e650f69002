//! `bench peer`: the same Llama, data shape and schedule trained by seqpipe and by PyTorch on this
//! machine, side by side in one invocation.
//!
//! The peer is `xtask/peer/torch_pipeline.py`: one process with an ordinary training loop for one
//! stage, `torch.distributed.pipelining`'s `Schedule1F1B` over gloo (one process per stage) for
//! more. It runs in the project-local venv `.venv-peer`, which this module makes and fills from
//! `xtask/peer/requirements.txt` (never in CI). seqpipe runs as the release `seqpipe` binary, as a
//! user runs it, with its stages as threads.
//!
//! Both sides run the model of issue 21 (4 layers, hidden 256, 4 heads, FFN 688, vocabulary 256),
//! 4 micro-batches of one 1024-token sequence, AdamW with global-norm clipping, f32. PyTorch gives
//! each process `cores ÷ stages` intra-op threads; seqpipe runs one thread per stage and replica
//! with one thread per op (more made it slower, see `seqpipe_trainer::train::one_thread_per_op`).
//! A run's figure is the median tokens/s of its steps after the first; the runs of all cases are
//! interleaved, seqpipe and PyTorch alternating which goes first, and the table gives the median
//! over repetitions and the ratio.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::table::Table;

/// One row of the comparison.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Pipeline stages (processes for PyTorch, threads for seqpipe).
    pub stages: u32,
    /// seqpipe's schedule kind.
    pub schedule: &'static str,
    /// seqpipe's slices per sequence.
    pub slices: u32,
    /// seqpipe's model chunks per stage.
    pub chunks: u32,
    /// seqpipe's slicing method (TOML spelling).
    pub slicing: &'static str,
    /// seqpipe's data-parallel replicas of the pipeline (threads); the micro-batches are split
    /// between them, so the global batch stays the same.
    pub replicas: u32,
}

/// The cases run on a machine with `cores` cores: one stage (PyTorch with `cores` intra-op
/// threads against seqpipe with one thread, then with `cores` data-parallel replicas as threads:
/// each side's way of using the machine in one process), two stages with 1F1B on both sides, two
/// stages with seqpipe's sliced schedule against PyTorch's 1F1B, and four stages where the
/// machine has four cores.
pub fn cases(cores: usize) -> Vec<Case> {
    let mut cases = vec![
        case(1, "1f1b", 1),
        Case {
            replicas: cores as u32,
            ..case(1, "1f1b", 1)
        },
        case(2, "1f1b", 1),
        Case {
            chunks: 2,
            ..case(2, "slimpipe", 4)
        },
    ];
    if cores >= 4 {
        cases.push(case(4, "1f1b", 1));
    }
    cases
}

fn case(stages: u32, schedule: &'static str, slices: u32) -> Case {
    Case {
        stages,
        schedule,
        slices,
        chunks: 1,
        slicing: "uniform",
        replicas: 1,
    }
}

/// Timed optimizer steps per run (one more runs first, untimed).
pub const STEPS: u32 = 6;

/// The shared shape (issue 21): layers, hidden, heads, FFN, vocabulary, tokens, micro-batches.
const MODEL: (u32, u32, u32, u32, u32) = (4, 256, 4, 688, 256);
const SEQ_LEN: u32 = 1024;
const MICROBATCHES: u32 = 4;

impl Case {
    /// A short label: `PP=2 slimpipe n=4 v=2`, `PP=1 1f1b ×2 replicas`.
    pub fn label(&self) -> String {
        let mut label = format!("PP={} {}", self.stages, self.schedule);
        if self.slices > 1 {
            label += &format!(" n={}", self.slices);
        }
        if self.chunks > 1 {
            label += &format!(" v={}", self.chunks);
        }
        if self.replicas > 1 {
            label += &format!(" ×{} replicas", self.replicas);
        }
        label
    }

    /// seqpipe's configuration of this case, as TOML.
    pub fn seqpipe_toml(&self) -> String {
        let (layers, hidden, heads, ffn, vocab) = MODEL;
        format!(
            "steps = {steps}\n\n[data]\nbatch = 1\nseq_len = {SEQ_LEN}\n\n[model]\nlayers = {layers}\n\
             hidden = {hidden}\nheads = {heads}\nkv_heads = {heads}\nffn_hidden = {ffn}\n\
             vocab = {vocab}\n\n[parallel]\nstages = {}\nschedule = \"{}\"\nchunks = {}\n\
             slices = {}\nslicing = \"{}\"\nreplicas = {}\nmicrobatches = {}\n",
            self.stages,
            self.schedule,
            self.chunks,
            self.slices,
            self.slicing,
            self.replicas,
            MICROBATCHES / self.replicas,
            steps = STEPS + 1,
        )
    }

    /// The peer script's arguments for this case on `cores` cores.
    pub fn torch_args(&self, cores: usize) -> Vec<String> {
        let (layers, hidden, heads, ffn, vocab) = MODEL;
        let threads = (cores / self.stages as usize).max(1);
        [
            ("--stages", self.stages),
            ("--layers", layers),
            ("--hidden", hidden),
            ("--heads", heads),
            ("--kv-heads", heads),
            ("--ffn", ffn),
            ("--vocab", vocab),
            ("--seq-len", SEQ_LEN),
            ("--microbatches", MICROBATCHES),
            ("--steps", STEPS),
            ("--warmup", 1),
            ("--threads", threads as u32),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }
}

/// Median of a non-empty list.
pub fn median(xs: &[f64]) -> Result<f64> {
    ensure!(!xs.is_empty(), "median of no measurements");
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Ok(match v.len() % 2 {
        1 => v[mid],
        _ => (v[mid - 1] + v[mid]) / 2.0,
    })
}

/// Median tokens/s of the steps after the first, from seqpipe's `--metrics` JSON lines.
pub fn seqpipe_tokens_per_sec(jsonl: &str) -> Result<f64> {
    let mut rates = Vec::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("metrics line {line:?}"))?;
        let (Some(step), Some(rate)) = (v["step"].as_u64(), v["tokens_per_sec"].as_f64()) else {
            bail!("metrics line without step and tokens_per_sec: {line}");
        };
        if step > 0 {
            rates.push(rate);
        }
    }
    ensure!(
        !rates.is_empty(),
        "seqpipe wrote no timed step to its metrics"
    );
    median(&rates)
}

/// tokens/s from the peer script's last line (a JSON object).
pub fn torch_tokens_per_sec(stdout: &str) -> Result<f64> {
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let last = last.context("the PyTorch peer printed nothing")?;
    let v: serde_json::Value = serde_json::from_str(last)
        .with_context(|| format!("the PyTorch peer's last line is not JSON: {last}"))?;
    v["tokens_per_sec"]
        .as_f64()
        .with_context(|| format!("no tokens_per_sec in {last}"))
}

/// The venv's python, after making the venv where it is missing and installing the pins.
pub fn peer_python(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".venv-peer");
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("peer: creating {}", venv.display());
        run_ok(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let requirements = root.join("xtask/peer/requirements.txt");
    eprintln!("peer: installing {}", requirements.display());
    run_ok(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q", "-r"])
            .arg(requirements),
    )?;
    Ok(python)
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the two programs are and where runs write their files.
pub struct Runner {
    /// The release `seqpipe` binary.
    pub seqpipe: PathBuf,
    /// The venv's python.
    pub python: PathBuf,
    /// The peer script.
    pub script: PathBuf,
    /// Scratch directory for configurations and metrics.
    pub scratch: PathBuf,
    /// Cores of this machine.
    pub cores: usize,
}

impl Runner {
    /// One seqpipe run of `case`: its median tokens/s.
    pub fn seqpipe(&self, case: &Case, rep: usize) -> Result<f64> {
        let tag = format!(
            "pp{}_{}_n{}_v{}_r{}_{rep}",
            case.stages, case.schedule, case.slices, case.chunks, case.replicas
        );
        let config = self.scratch.join(format!("{tag}.toml"));
        let metrics = self.scratch.join(format!("{tag}.jsonl"));
        fs::write(&config, case.seqpipe_toml())?;
        run_ok(
            Command::new(&self.seqpipe)
                .args(["train", "--config"])
                .arg(&config)
                .arg("--metrics")
                .arg(&metrics),
        )?;
        seqpipe_tokens_per_sec(&fs::read_to_string(&metrics)?)
    }

    /// One PyTorch run of `case`: its median tokens/s.
    pub fn torch(&self, case: &Case) -> Result<f64> {
        let stdout = run_ok(
            Command::new(&self.python)
                .arg(&self.script)
                .args(case.torch_args(self.cores)),
        )?;
        torch_tokens_per_sec(&stdout)
    }
}

/// Medians of one case over the repetitions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerRow {
    /// The case's label.
    pub case: String,
    /// seqpipe's tokens/s, one per repetition.
    pub seqpipe: Vec<f64>,
    /// PyTorch's tokens/s, one per repetition.
    pub torch: Vec<f64>,
}

/// Runs every case `reps` times, interleaved.
pub fn run_all(runner: &Runner, cases: &[Case], reps: usize) -> Result<Vec<PeerRow>> {
    let mut rows: Vec<PeerRow> = cases
        .iter()
        .map(|c| PeerRow {
            case: c.label(),
            seqpipe: Vec::new(),
            torch: Vec::new(),
        })
        .collect();
    for rep in 0..reps {
        for (case, row) in cases.iter().zip(&mut rows) {
            eprintln!("peer: rep {}/{reps} {}", rep + 1, row.case);
            // Alternate which side runs first, so neither always meets a warmer machine.
            if rep % 2 == 0 {
                row.seqpipe.push(runner.seqpipe(case, rep)?);
                row.torch.push(runner.torch(case)?);
            } else {
                row.torch.push(runner.torch(case)?);
                row.seqpipe.push(runner.seqpipe(case, rep)?);
            }
        }
    }
    Ok(rows)
}

/// The rows as a table of medians and ratios.
pub fn table(rows: &[PeerRow]) -> Result<Table> {
    let mut t = Table::new(&[
        "case",
        "seqpipe tokens/s (median)",
        "PyTorch tokens/s (median)",
        "seqpipe ÷ PyTorch",
        "runs",
    ]);
    for r in rows {
        let (ours, theirs) = (median(&r.seqpipe)?, median(&r.torch)?);
        t.push(vec![
            r.case.clone(),
            format!("{ours:.0}"),
            format!("{theirs:.0}"),
            format!("{:.2}×", ours / theirs),
            r.seqpipe.len().to_string(),
        ])?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]).unwrap(), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]).unwrap(), 2.5);
        assert!(median(&[]).is_err());
    }

    #[test]
    fn seqpipe_metrics_skip_the_first_step() {
        let jsonl = "{\"step\":0,\"tokens_per_sec\":1.0}\n{\"step\":1,\"tokens_per_sec\":10.0}\n\
                     {\"step\":2,\"tokens_per_sec\":30.0}\n{\"step\":3,\"tokens_per_sec\":20.0}\n";
        assert_eq!(seqpipe_tokens_per_sec(jsonl).unwrap(), 20.0);
        let only_warmup = "{\"step\":0,\"tokens_per_sec\":1.0}\n";
        assert!(seqpipe_tokens_per_sec(only_warmup).is_err());
        assert!(seqpipe_tokens_per_sec("{\"step\":1}\n").is_err());
    }

    #[test]
    fn torch_output_is_read_from_its_last_line() {
        let out = "a warning\n{\"tokens_per_sec\": 5724.5, \"stages\": 2}\n\n";
        assert_eq!(torch_tokens_per_sec(out).unwrap(), 5724.5);
        assert!(torch_tokens_per_sec("Traceback ...\n").is_err());
        assert!(torch_tokens_per_sec("").is_err());
    }

    #[test]
    fn cases_parse_and_pass_the_trainers_checks() {
        for c in cases(4) {
            let cfg: seqpipe_trainer::config::TrainConfig =
                toml::from_str(&c.seqpipe_toml()).unwrap();
            seqpipe_trainer::train::check(&cfg).unwrap();
            assert_eq!(
                (cfg.parallel.stages, cfg.parallel.chunks),
                (c.stages, c.chunks)
            );
            assert_eq!(cfg.steps, u64::from(STEPS) + 1);
            // The same global batch whatever the replicas.
            let replicas = cfg.parallel.replicas.unwrap_or(1);
            assert_eq!(cfg.parallel.microbatches * replicas, MICROBATCHES);
        }
        assert_eq!(cases(2).len(), 4, "no PP=4 case on 2 cores");
        assert_eq!(cases(2)[1].label(), "PP=1 1f1b ×2 replicas");
    }

    #[test]
    fn torch_gets_every_core() {
        let args = case(2, "1f1b", 1).torch_args(2);
        let threads = args.iter().position(|a| a == "--threads").unwrap();
        assert_eq!(args[threads + 1], "1");
        let args = case(1, "1f1b", 1).torch_args(2);
        assert_eq!(args[threads + 1], "2");
    }

    #[test]
    fn table_gives_medians_and_the_ratio() {
        let row = PeerRow {
            case: "PP=2 1f1b".into(),
            seqpipe: vec![300.0, 100.0, 200.0],
            torch: vec![100.0, 100.0, 400.0],
        };
        let t = table(&[row]).unwrap();
        assert_eq!(t.rows[0][1..4], ["200", "100", "2.00×"]);
    }
}
