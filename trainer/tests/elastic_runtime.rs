//! Elastic pipelines at run time (InfiniPipe): documents chunked by the chunker (split, hybrid and
//! batched chunks), run longest first as micro-batches of their own shapes, in one or several
//! pipelines per iteration, give the loss and every gradient of single-device training where each
//! document is its own causal sequence (f64, 1e-10), for p ∈ {1, 2, 4}, with and without
//! recomputation; every document token is computed exactly once and no padding token is.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{full_params, pipeline_of, reference, tiny_model, worst_rel_err};
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_slicing::{chunk, ChunkKind, Chunking, CostModel};
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::runtime::elastic::{elastic_runs, ElasticRun};
use seqpipe_trainer::runtime::recompute::Recompute;

const SEED: u64 = 9;

/// SplitMix64: the test's own lengths and tokens.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

fn documents(model: &ModelConfig, lengths: &[usize], rng: &mut Rng) -> Vec<Vec<u32>> {
    let vocab = model.vocab as u64;
    lengths
        .iter()
        .map(|&n| (0..n).map(|_| rng.below(vocab) as u32).collect())
        .collect()
}

/// Mixes: one document longer than all the others together beside many tiny ones (one of a
/// single token: no target), and a long-tailed spread.
fn mixes(rng: &mut Rng) -> Vec<(&'static str, Vec<usize>)> {
    let mut crumbs = vec![60, 1];
    crumbs.extend((0..12).map(|_| 2 + rng.below(3) as usize));
    let mut tailed = vec![];
    while tailed.len() < 14 {
        let scale = [4, 10, 30, 60][rng.below(4) as usize];
        tailed.push(2 + rng.below(scale - 1) as usize);
    }
    vec![("one giant and crumbs", crumbs), ("long-tailed", tailed)]
}

fn chunking(model: &ModelConfig, lengths: &[usize], slices: usize, budget: u64) -> Chunking {
    let cost = CostModel::flops(&model.shape()).unwrap();
    let lengths: Vec<u64> = lengths.iter().map(|&l| l as u64).collect();
    chunk(&lengths, &cost, slices, budget).unwrap()
}

/// The groups split into `pipelines` pipelines of consecutive longest-first groups.
fn split(c: &Chunking, pipelines: usize) -> Vec<Vec<usize>> {
    let groups = c.groups();
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(groups[g].len()));
    let per = order.len().div_ceil(pipelines);
    order.chunks(per).map(<[usize]>::to_vec).collect()
}

/// Tokens the runs compute (every micro-batch row's inputs).
fn computed_tokens(runs: &[ElasticRun]) -> usize {
    runs.iter()
        .flat_map(|r| &r.input.tokens)
        .map(|t| t.dim(1).unwrap() - 1)
        .sum()
}

#[test]
fn elastic_pipelines_equal_each_document_alone_f64() {
    let model = tiny_model();
    let params = full_params(&model, SEED, DType::F64);
    let mut rng = Rng(SEED);
    let mut kinds_seen = [false; 3];
    let mut runs_checked = 0;
    for (mix, lengths) in mixes(&mut rng) {
        let docs = documents(&model, &lengths, &mut rng);
        let alone: Vec<Tensor> = docs
            .iter()
            .filter(|d| d.len() > 1)
            .map(|d| Tensor::from_vec(d.clone(), (1, d.len()), &Device::Cpu).unwrap())
            .collect();
        let (ref_loss, ref_grads) = reference::loss_and_grads(&model, &params, &alone);
        let c = chunking(&model, &lengths, 3, 30);
        for ch in &c.chunks {
            let at = [ChunkKind::Batched, ChunkKind::Split, ChunkKind::Hybrid];
            kinds_seen[at.iter().position(|&k| k == ch.kind).unwrap()] = true;
        }
        for p in [1u32, 2, 4] {
            for pipelines in [1, 2] {
                for recompute in ["none", "full", "selective"] {
                    let what =
                        format!("{mix}: p={p}, {pipelines} pipeline(s), recompute {recompute}");
                    let groups = split(&c, pipelines);
                    let settings = vec![recompute.parse::<Recompute>().unwrap(); groups.len()];
                    let runs = elastic_runs(&docs, &c, &groups, &settings, p).unwrap();
                    let total: usize = lengths.iter().sum();
                    assert_eq!(
                        computed_tokens(&runs),
                        total,
                        "{what}: no padding, no token twice"
                    );
                    let mut pl = pipeline_of(
                        &model,
                        ScheduleConfig::new(ScheduleKind::OneFOneB, p, 1),
                        DType::F64,
                        SEED,
                    );
                    let report = pl
                        .compute_gradients_elastic(&runs)
                        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
                    assert!(
                        (report.loss - ref_loss).abs() <= 1e-10 * ref_loss.abs(),
                        "{what}: loss {} vs each document alone {ref_loss}",
                        report.loss
                    );
                    let (err, name) = worst_rel_err(&pl.gradients().unwrap(), &ref_grads);
                    assert!(err <= 1e-10, "{what}: gradient of {name} off by {err:e}");
                    runs_checked += 1;
                }
            }
        }
    }
    assert_eq!(runs_checked, 2 * 3 * 2 * 3);
    let [batched, split_, hybrid] = kinds_seen;
    assert!(
        batched && split_ && hybrid,
        "every chunk kind ran: {kinds_seen:?}"
    );
}

#[test]
fn every_document_runs_exactly_once_and_bad_plans_are_refused() {
    let model = tiny_model();
    let mut rng = Rng(SEED + 1);
    let lengths = [60usize, 3, 5, 2, 7, 4];
    let docs = documents(&model, &lengths, &mut rng);
    let c = chunking(&model, &lengths, 3, 30);
    let groups = c.groups().len();
    let none = || vec![Recompute::None];
    let all: Vec<usize> = (0..groups).collect();
    let missing = elastic_runs(&docs, &c, &[all[1..].to_vec()], &none(), 2).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("chunker group 0 is in 0 pipelines"),
        "{missing}"
    );
    let twice = [all.clone(), vec![0]];
    let e = elastic_runs(&docs, &c, &twice, &[Recompute::None, Recompute::None], 2).unwrap_err();
    assert!(e.to_string().contains("is in 2 pipelines"), "{e}");
    let e = elastic_runs(&docs, &c, std::slice::from_ref(&all), &[], 2).unwrap_err();
    assert!(
        e.to_string()
            .contains("0 recomputation settings for 1 pipelines"),
        "{e}"
    );
    let short = &docs[..docs.len() - 1];
    let e = elastic_runs(short, &c, &[all], &none(), 2).unwrap_err();
    assert!(e.to_string().contains("places document 5"), "{e}");
}

/// A token file of documents ending in `eos` (lengths 2 to 90, long-tailed).
fn corpus_file(dir: &std::path::Path, eos: u16) -> std::path::PathBuf {
    let mut rng = Rng(SEED + 2);
    let mut tokens: Vec<u16> = Vec::new();
    while tokens.len() < 6000 {
        let scale = [4, 12, 40, 90][rng.below(4) as usize];
        let len = 1 + rng.below(scale) as usize;
        tokens.extend((0..len).map(|i| ((i * 7 + len) % 200) as u16));
        tokens.push(eos);
    }
    let path = dir.join("docs.bin");
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Each stage's "measured / predicted" peak saved bytes in a summary are equal.
fn assert_predicted_as_measured(stdout: &str) {
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("peak saved activations"))
        .collect();
    assert!(!lines.is_empty(), "{stdout}");
    for line in lines {
        let figures: Vec<&str> = line.split('|').nth(2).unwrap().split_whitespace().collect();
        assert_eq!(figures[0], figures[2], "measured / predicted: {line}");
    }
}

fn seqpipe(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_seqpipe"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

#[test]
fn train_elastic_runs_resumes_and_refuses_what_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus_file(dir.path(), 255);
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let base = [
        "train",
        "--elastic",
        "--stages",
        "2",
        "--slices",
        "3",
        "--seq-len",
        "64",
        "--microbatches",
        "2",
        "--data-kind",
        "tokens",
        "--eos",
        "255",
    ];
    let with = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--data-path", data.to_str().unwrap()]);
        args.extend(extra);
        seqpipe(&args)
    };
    let trace = p("trace.json");
    let whole = with(&[
        "--steps",
        "4",
        "--metrics",
        &p("whole.jsonl"),
        "--trace",
        &trace,
    ]);
    let stdout = String::from_utf8_lossy(&whole.stdout);
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    assert!(stdout.contains("elastic pipelines per step"), "{stdout}");
    assert_predicted_as_measured(&stdout);
    // The trace marks where each pipeline begins, on every stage, and what it holds.
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let marks: Vec<&str> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "i")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        marks.len(),
        2,
        "one pipeline on each of 2 stages: {marks:?}"
    );
    assert!(marks
        .iter()
        .all(|m| m.starts_with("pipeline 0: ") && m.contains("units")));

    // Cut after step 2, resumed: the same documents, in the same chunks, give the same losses.
    let ckpt = p("ckpt");
    let cut = with(&[
        "--steps",
        "4",
        "--metrics",
        &p("cut.jsonl"),
        "--checkpoint-dir",
        &ckpt,
        "--checkpoint-every",
        "2",
        "--abort-after-step",
        "2",
    ]);
    assert!(!cut.status.success(), "the run was cut short");
    let resumed = with(&[
        "--steps",
        "4",
        "--metrics",
        &p("cut.jsonl"),
        "--resume",
        &ckpt,
    ]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let losses = |f: &str| common::step_losses(std::path::Path::new(&p(f)));
    // The cut run logged steps 0..=2, the resumed one 2 and 3: the last loss of each step.
    let by_step: std::collections::BTreeMap<u64, f64> = losses("cut.jsonl").into_iter().collect();
    let whole: std::collections::BTreeMap<u64, f64> = losses("whole.jsonl").into_iter().collect();
    assert_eq!(whole.len(), 4);
    assert_eq!(by_step, whole, "resumed losses differ");

    for (extra, named) in [
        (&["--exchange"][..], "parallel.attention_exchange"),
        (&["--chunks", "2"][..], "parallel.chunks = 1"),
        (
            &["--memory-budget", "1GiB", "--recompute", "full"][..],
            "parallel.recompute = \"auto\"",
        ),
        (
            &["--recompute", "auto"][..],
            "parallel.recompute = \"auto\"",
        ),
        (
            &["--memory-budget", "64MiB", "--precision", "f64"][..],
            "covers f32 and bf16",
        ),
        (&["--vocab-parallel"][..], "parallel.vocab_parallel"),
        (&["--packing", "plain"][..], "data.packing = \"masked\""),
        (
            &["--schedule", "1f1b"][..],
            "parallel.schedule = \"seq1f1b\"",
        ),
    ] {
        let out = with(&[&["--steps", "1"][..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(named),
            "{extra:?}: {stderr}"
        );
    }
    // Under a memory budget the summary gives the predicted peaks, equal to the measured ones.
    let out = with(&["--steps", "2", "--memory-budget", "64MiB"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("recompute = auto; predicted peak per stage"),
        "{stdout}"
    );
    assert_predicted_as_measured(&stdout);
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, [255u8, 0].repeat(400)).unwrap();
    let out = seqpipe(
        &[
            &base[..],
            &["--steps", "1", "--data-path", empty.to_str().unwrap()],
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("score no target"),
        "{stderr}"
    );
    let out = seqpipe(&["train", "--elastic", "--steps", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("needs documents"),
        "{stderr}"
    );
}

#[test]
fn the_memory_model_predicts_elastic_pipelines_byte_for_byte() {
    use seqpipe_trainer::predict::{predict, PredictInput};
    use seqpipe_trainer::runtime::elastic::prepare;
    let model = tiny_model();
    let mut rng = Rng(SEED + 3);
    let (_, lengths) = mixes(&mut rng).remove(0);
    let docs = documents(&model, &lengths, &mut rng);
    let c = chunking(&model, &lengths, 3, 30);
    for p in [2u32, 4] {
        for recompute in ["none", "full", "selective", "full:1"] {
            let what = format!("p={p} recompute {recompute}");
            let groups = split(&c, 2);
            let settings = vec![recompute.parse::<Recompute>().unwrap(); groups.len()];
            let runs = elastic_runs(&docs, &c, &groups, &settings, p).unwrap();
            let config = ScheduleConfig::new(ScheduleKind::OneFOneB, p, 1);
            let mut pl = pipeline_of(&model, config, DType::F32, SEED);
            let prepared = prepare(&runs, &pl.partition, p as usize).unwrap();
            for (run, (schedule, _)) in runs.iter().zip(&prepared) {
                let report = pl
                    .compute_gradients_elastic(std::slice::from_ref(run))
                    .unwrap();
                let predicted = predict(&PredictInput {
                    model: &model,
                    dtype: DType::F32,
                    batch: 1,
                    slices: &[],
                    ragged: run.input.ragged.as_deref(),
                    schedule,
                    partition: &pl.partition,
                    recompute: &run.recompute,
                })
                .unwrap()
                .expect("an even partition in f32 has a prediction");
                for (stage, (r, p)) in report.stages.iter().zip(&predicted).enumerate() {
                    assert_eq!(
                        r.peak_saved_bytes as f64, p.peaks.saved,
                        "{what}, stage {stage}: measured vs predicted peak saved bytes"
                    );
                    let held: Vec<f64> = r.events.iter().map(|e| e.held.saved as f64).collect();
                    let want: Vec<f64> = p.after_action.iter().map(|a| a.0).collect();
                    assert_eq!(
                        held, want,
                        "{what}, stage {stage}: saved bytes after each action"
                    );
                }
            }
        }
    }
}

#[test]
fn a_memory_budget_splits_pipelines_recomputes_and_keeps_the_numbers() {
    use seqpipe_trainer::predict::{predict, PredictInput};
    use seqpipe_trainer::runtime::elastic::{plan_iteration, prepare};
    use seqpipe_trainer::runtime::elastic_budget::{plan_iteration_within, Fit, PlanChoice};
    let model = tiny_model();
    let mut rng = Rng(SEED + 4);
    let (_, lengths) = mixes(&mut rng).remove(1);
    let docs = documents(&model, &lengths, &mut rng);
    let cost = CostModel::flops(&model.shape()).unwrap();
    let p = 2u32;
    let config = ScheduleConfig::new(ScheduleKind::OneFOneB, p, 1);
    let mut f32_pipeline = pipeline_of(&model, config, DType::F32, SEED);
    let partition = f32_pipeline.partition.clone();
    // The unbudgeted plan's working peaks; the budget is 60 % of them.
    let free = plan_iteration(&docs, &cost, p, 3, &Recompute::None).unwrap();
    let (schedule, _) = &prepare(&free.runs, &partition, 2).unwrap()[0];
    let peaks: Vec<f64> = predict(&PredictInput {
        model: &model,
        dtype: DType::F32,
        batch: 1,
        slices: &[],
        ragged: free.runs[0].input.ragged.as_deref(),
        schedule,
        partition: &partition,
        recompute: &Recompute::None,
    })
    .unwrap()
    .unwrap()
    .iter()
    .map(|s| s.peaks.working)
    .collect();
    // The tightest budget, in steps of 5 % of the free peaks, that still plans.
    let mut tightest = None;
    for percent in (30..100).rev().step_by(5) {
        let budgets: Vec<f64> = peaks.iter().map(|w| w * percent as f64 / 100.0).collect();
        let fit = Fit {
            model: &model,
            dtype: DType::F32,
            partition: &partition,
            budgets: &budgets,
        };
        match plan_iteration_within(&docs, &cost, 3, &fit) {
            Ok(planned) => tightest = Some((budgets, planned)),
            Err(e) => {
                assert!(
                    e.to_string().contains("does not fit the memory budget"),
                    "{e}"
                );
                break;
            }
        }
    }
    let (budgets, planned) = tightest.expect("95 % of the free peaks plans");
    let recomputes = planned
        .runs
        .iter()
        .filter(|r| matches!(r.recompute, Recompute::Auto { .. }))
        .count();
    eprintln!(
        "budgets {budgets:.0?} of free peaks {peaks:.0?}: {} pipelines, {recomputes} recompute",
        planned.runs.len()
    );
    assert!(
        planned.runs.len() > 1 || recomputes > 0,
        "the tightest budget splits the iteration or recomputes"
    );
    // What rank 0 sends the others rebuilds the same iteration from the same documents.
    let choice = PlanChoice::of(&planned).unwrap();
    let sent: PlanChoice = serde_json::from_slice(&serde_json::to_vec(&choice).unwrap()).unwrap();
    let rebuilt = sent.rebuild(&docs, &cost, 3, p).unwrap();
    let same = |a: &ElasticRun, b: &ElasticRun| a.groups == b.groups && a.recompute == b.recompute;
    assert!(planned
        .runs
        .iter()
        .zip(&rebuilt.runs)
        .all(|(a, b)| same(a, b)));
    assert_eq!(planned.runs.len(), rebuilt.runs.len());
    // A rank that drew other documents cannot follow the plan, and says so.
    let e = sent
        .rebuild(&docs[1..], &cost, 3, p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the step's documents make 5 groups"), "{e}");
    // f32: every stage stays within its budget, as the memory model promised.
    let report = f32_pipeline
        .compute_gradients_elastic(&planned.runs)
        .unwrap();
    for (stage, r) in report.stages.iter().enumerate() {
        assert!(
            r.peak_bytes as f64 <= budgets[stage],
            "stage {stage}: {} bytes over a budget of {}",
            r.peak_bytes,
            budgets[stage]
        );
    }
    // f64: the same plan gives each document's own loss and gradients.
    let params = full_params(&model, SEED, DType::F64);
    let alone: Vec<Tensor> = docs
        .iter()
        .filter(|d| d.len() > 1)
        .map(|d| Tensor::from_vec(d.clone(), (1, d.len()), &Device::Cpu).unwrap())
        .collect();
    let (ref_loss, ref_grads) = reference::loss_and_grads(&model, &params, &alone);
    let mut pl = pipeline_of(&model, config, DType::F64, SEED);
    let report = pl.compute_gradients_elastic(&planned.runs).unwrap();
    assert!((report.loss - ref_loss).abs() <= 1e-10 * ref_loss.abs());
    let (err, name) = worst_rel_err(&pl.gradients().unwrap(), &ref_grads);
    assert!(err <= 1e-10, "gradient of {name} off by {err:e}");
}
