//! Vocabulary parallelism at run time: with the embedding and LM head sharded over the stages
//! (`EMBED`, `HEAD`, `EMBED_B` actions), one iteration's loss and every gradient equal
//! single-device training (f64 to 1e-10, f32 to 1e-5), for SlimPipe (p ∈ {2, 4}, n ∈ {4, 8},
//! v ∈ {1, 2}), Seq1F1B, ZB-H1's split backward, one stage, tied embeddings and masked targets;
//! the stages' parameter bytes even out; and training steps stay equal.

mod common;

use candle_core::{DType, Tensor};
use common::{
    assert_matches_reference, data, pipeline_of, slice_ranges, tiny_model, worst_rel_err, Slicing,
};
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::runtime::{IterationInput, Pipeline};

const SEQ: usize = 16;
const BATCH: usize = 2;
const SEED: u64 = 11;

fn pipeline(model: &ModelConfig, cfg: ScheduleConfig, dtype: DType, vocab: bool) -> Pipeline {
    let mut pl = pipeline_of(model, cfg, dtype, SEED);
    if vocab {
        pl.set_vocab_parallel().unwrap();
    }
    pl
}

fn input(model: &ModelConfig, m: usize, slicing: Slicing, n: usize) -> IterationInput {
    IterationInput {
        ragged: None,
        documents: None,
        tokens: data(model, m, BATCH, SEQ, SEED),
        masks: None,
        slices: slice_ranges(model, slicing, SEQ, n),
        normaliser: (m * BATCH * SEQ) as f64,
    }
}

/// The configurations of the matrix that the schedules allow.
fn cases() -> Vec<(ScheduleConfig, Slicing)> {
    use ScheduleKind::*;
    let mut out = Vec::new();
    for p in [2u32, 4] {
        for n in [4u32, 8] {
            for v in [1u32, 2] {
                let c = ScheduleConfig::new(SlimPipe, p, 4)
                    .with_slices(n)
                    .with_chunks(v);
                out.push((c, Slicing::Uniform));
            }
        }
        let seq = ScheduleConfig::new(Seq1F1B, p, 4).with_slices(4);
        out.push((seq, Slicing::Balanced));
        out.push((ScheduleConfig::new(ZbH1, p, 4), Slicing::None));
    }
    out.push((ScheduleConfig::new(OneFOneB, 1, 2), Slicing::None));
    // One stage holding two chunks: the ends' buffers pass between chunks in memory.
    let one_stage = ScheduleConfig::new(SlimPipe, 1, 2)
        .with_slices(2)
        .with_chunks(2);
    out.push((one_stage, Slicing::Uniform));
    out
}

#[test]
fn sharded_ends_match_single_device_f64() {
    let model = tiny_model();
    for (cfg, slicing) in cases() {
        let what = format!(
            "{:?} p={} n={} v={}",
            cfg.kind, cfg.stages, cfg.slices, cfg.chunks
        );
        let mut pl = pipeline(&model, cfg, DType::F64, true);
        let vocab_ops = pl.schedule.iter().filter(|a| a.op.is_vocab()).count();
        // Three per unit on every stage.
        assert_eq!(
            vocab_ops as u32,
            3 * cfg.stages * cfg.microbatches * cfg.slices,
            "{what}"
        );
        let inp = input(
            &model,
            4.min(cfg.microbatches as usize),
            slicing,
            cfg.slices as usize,
        );
        assert_matches_reference(&mut pl, &model, SEED, &inp, 1e-10, &what);
    }
}

#[test]
fn sharded_ends_match_single_device_f32_and_with_tied_embeddings() {
    let mut tied = tiny_model();
    tied.tie_embeddings = true;
    let slim = ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 2)
        .with_slices(4)
        .with_chunks(2);
    for (model, dtype, tol) in [
        (tiny_model(), DType::F32, 1e-5),
        (tied.clone(), DType::F64, 1e-10),
        (tied, DType::F32, 1e-5),
    ] {
        let mut pl = pipeline(&model, slim, dtype, true);
        let inp = input(&model, 2, Slicing::Uniform, 4);
        let what = format!("tied {} {dtype:?}", model.tie_embeddings);
        assert_matches_reference(&mut pl, &model, SEED, &inp, tol, &what);
    }
}

#[test]
fn masked_targets_give_the_same_loss_answers_and_steps_as_whole_tables() {
    let model = tiny_model();
    let cfg = ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 2).with_slices(2);
    let mut inp = input(&model, 2, Slicing::Uniform, 2);
    // Score every third target, half-weight every fifth.
    let weights: Vec<f64> = (0..BATCH * SEQ)
        .map(|i| match (i % 3, i % 5) {
            (0, 0) => 0.5,
            (0, _) => 1.0,
            _ => 0.0,
        })
        .collect();
    let mask = Tensor::from_vec(weights.clone(), (BATCH, SEQ), &candle_core::Device::Cpu).unwrap();
    inp.masks = Some(vec![mask.clone(), mask]);
    inp.normaliser = 2.0 * weights.iter().sum::<f64>();
    let mut whole = pipeline(&model, cfg, DType::F64, false);
    let mut sharded = pipeline(&model, cfg, DType::F64, true);
    for step in 0..3 {
        let a = whole.step(&inp, 1e-2).unwrap();
        let b = sharded.step(&inp, 1e-2).unwrap();
        assert!(
            (a.loss - b.loss).abs() <= 1e-10 * a.loss.abs(),
            "step {step}: {} vs {}",
            a.loss,
            b.loss
        );
        assert!(a.answers.scored > 0);
        assert_eq!(a.answers, b.answers, "step {step}");
        assert!((a.grad_norm - b.grad_norm).abs() <= 1e-10 * a.grad_norm);
    }
    let (err, name) = worst_rel_err(&sharded.parameters().unwrap(), &whole.parameters().unwrap());
    assert!(err <= 1e-10, "after 3 steps {name} differs by {err:e}");
}

/// Parameter bytes each stage holds (measured from its tensors).
fn stage_bytes(pl: &Pipeline) -> Vec<usize> {
    pl.ranks
        .iter()
        .map(|r| {
            r.worker
                .params
                .values()
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                .sum()
        })
        .collect()
}

#[test]
fn sharding_evens_out_the_stages_parameter_bytes() {
    // The README's default model: 4 stages × 2 chunks of its 8 layers.
    let model = ModelConfig::default();
    let cfg = ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 4)
        .with_slices(4)
        .with_chunks(2);
    let whole = stage_bytes(&pipeline(&model, cfg, DType::F32, false));
    let sharded = stage_bytes(&pipeline(&model, cfg, DType::F32, true));
    let spread = |b: &[usize]| {
        let (lo, hi) = (b.iter().min().unwrap(), b.iter().max().unwrap());
        *hi as f64 / *lo as f64
    };
    println!("parameter bytes per stage: whole tables {whole:?}, sharded {sharded:?}");
    assert!(spread(&sharded) <= 1.10, "sharded: {sharded:?}");
    assert!(
        spread(&whole) > 1.10,
        "whole tables were already even: {whole:?}"
    );
    assert_eq!(whole.iter().sum::<usize>(), sharded.iter().sum::<usize>());
}

fn small_run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args(common::SMALL_RUN)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// A sharded run's checkpoint holds whole tables (any run reads it), and a crash-and-resume of
/// a sharded run gives the uninterrupted run's losses bit for bit.
#[test]
fn a_sharded_run_checkpoints_whole_tables_and_resumes_to_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let vp = "--vocab-parallel";
    let whole = small_run(&[vp, "--steps", "5", "--metrics", &p("whole.jsonl")]);
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let ck = ["--checkpoint-dir", &p("ckpt"), "--checkpoint-every", "2"];
    let cut = small_run(
        &[
            &[
                vp,
                "--steps",
                "5",
                "--metrics",
                &p("cut.jsonl"),
                "--abort-after-step",
                "2",
            ][..],
            &ck,
        ]
        .concat(),
    );
    assert!(!cut.status.success(), "the run must have been cut short");
    let loaded =
        seqpipe_trainer::checkpoint::resume::load(std::path::Path::new(&p("ckpt")), DType::F32)
            .unwrap();
    let embed = &loaded.params[seqpipe_trainer::model::names::EMBED];
    assert_eq!(
        embed.dims()[0],
        ModelConfig::default().vocab,
        "whole embedding rows"
    );
    let resumed = small_run(
        &[
            &[
                vp,
                "--steps",
                "5",
                "--metrics",
                &p("cut.jsonl"),
                "--resume",
                &p("ckpt"),
            ][..],
            &ck,
        ]
        .concat(),
    );
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let (whole, cut) = (
        common::step_losses(std::path::Path::new(&p("whole.jsonl"))),
        common::step_losses(std::path::Path::new(&p("cut.jsonl"))),
    );
    let next = loaded.state.next_step as usize;
    assert_eq!(
        cut[cut.len() - (5 - next)..].to_vec(),
        whole[next..].to_vec()
    );
}

/// Bad settings are named before anything runs: a vocabulary smaller than the stage count, a
/// memory budget (whose search does not price the sharded head yet), and a schedule file with
/// vocabulary actions in a run that holds whole tables.
#[test]
fn impossible_vocabulary_parallel_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let tiny_vocab = dir.path().join("vocab.toml");
    std::fs::write(&tiny_vocab, "[model]\nvocab = 1\n").unwrap();
    let out = small_run(&["--vocab-parallel", "--config", tiny_vocab.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("model.vocab = 1 over 2 stages"),
        "{err}"
    );
    let out = small_run(&["--vocab-parallel", "--memory-budget", "1GiB"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("parallel.memory_budget"),
        "{err}"
    );
    let file = dir.path().join("vp.json");
    let sched = std::process::Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args([
            "schedule",
            "--kind",
            "seq1f1b",
            "--stages",
            "2",
            "--microbatches",
            "2",
        ])
        .args(["--slices", "2", "--vocab-parallel", "--format", "json"])
        .output()
        .unwrap();
    std::fs::write(&file, &sched.stdout).unwrap();
    let out = small_run(&[
        "--microbatches",
        "2",
        "--slices",
        "2",
        "--schedule-file",
        file.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("set parallel.vocab_parallel = true"),
        "{err}"
    );
    let out = small_run(&[
        "--microbatches",
        "2",
        "--slices",
        "2",
        "--schedule-file",
        file.to_str().unwrap(),
        "--vocab-parallel",
        "--steps",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
