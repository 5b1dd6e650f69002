//! SlimPipe's attention context exchange at run time: with the ranks of each steady step paired
//! by cache length and the heavy one's oldest K/V attended by the light one, one iteration's
//! loss and every gradient equal single-device training (f64 to 1e-10, f32 to 1e-5), for SlimPipe
//! (p ∈ {2, 4}, n ∈ {4, 8}, v ∈ {1, 2}) and Seq1F1B, with and without the vocabulary-parallel
//! head, and with recomputation.

mod common;

use std::time::Duration;

use candle_core::{DType, Device};
use common::{assert_matches_reference, pipeline_of, tiny_model, uniform_input};
use seqpipe_schedule::ExchangePolicy::Level;
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::runtime::recompute::Recompute;
use seqpipe_trainer::runtime::record::step_attention_ratios;
use seqpipe_trainer::runtime::{IterationInput, Pipeline};

const SEQ: usize = 16;
/// The pipeline of the command-line tests: 2 stages, 4 micro-batches of 4 slices.
const SHAPE: [&str; 8] = [
    "--stages",
    "2",
    "--microbatches",
    "4",
    "--slices",
    "4",
    "--chunks",
    "1",
];
const BATCH: usize = 2;
const SEED: u64 = 13;

fn pipeline(
    model: &ModelConfig,
    cfg: ScheduleConfig,
    dtype: DType,
    vocab: bool,
    inp: &IterationInput,
) -> Pipeline {
    let mut pl = pipeline_of(model, cfg, dtype, SEED);
    if vocab {
        pl.set_vocab_parallel().unwrap();
    }
    pl.set_exchange(&inp.slices, Level).unwrap();
    pl
}

fn input(model: &ModelConfig, m: usize, n: usize) -> IterationInput {
    uniform_input(model, (m, BATCH, SEQ, n), SEED)
}

fn cases() -> Vec<ScheduleConfig> {
    let mut out = Vec::new();
    for p in [2u32, 4] {
        for n in [4u32, 8] {
            for v in [1u32, 2] {
                out.push(
                    ScheduleConfig::new(ScheduleKind::SlimPipe, p, 4)
                        .with_slices(n)
                        .with_chunks(v),
                );
            }
        }
        out.push(ScheduleConfig::new(ScheduleKind::Seq1F1B, p, 4).with_slices(4));
    }
    out
}

#[test]
fn exchanged_attention_matches_single_device_f64() {
    let model = tiny_model();
    // Pairs form at the steady steps, forwards and backwards both.
    let mut exchanged = [0, 0];
    for cfg in cases() {
        for vocab in [false, true] {
            let what = format!(
                "{:?} p={} n={} v={} vocab {vocab}",
                cfg.kind, cfg.stages, cfg.slices, cfg.chunks
            );
            let inp = input(&model, 4, cfg.slices as usize);
            let mut pl = pipeline(&model, cfg, DType::F64, vocab, &inp);
            // Forwards and backwards both exchange.
            let heavy = |forward: bool| {
                pl.schedule
                    .iter()
                    .filter(|a| a.pair.is_some_and(|p| p.head > 0))
                    .filter(|a| (a.op == seqpipe_schedule::Op::Forward) == forward)
                    .count()
            };
            assert!(heavy(true) + heavy(false) > 0, "{what}: nothing exchanged");
            exchanged[0] += heavy(true);
            exchanged[1] += heavy(false);
            assert_matches_reference(&mut pl, &model, SEED, &inp, 1e-10, &what);
        }
    }
    assert!(
        exchanged[0] > 0 && exchanged[1] > 0,
        "exchanged (forward, backward): {exchanged:?}"
    );
}

#[test]
fn exchanged_attention_matches_in_f32_and_with_recomputation() {
    let model = tiny_model();
    let cfg = ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 4)
        .with_slices(8)
        .with_chunks(2);
    let inp = input(&model, 4, 8);
    let mut pl = pipeline(&model, cfg, DType::F32, true, &inp);
    assert_matches_reference(&mut pl, &model, SEED, &inp, 1e-5, "f32");
    let mut pl = pipeline(&model, cfg, DType::F64, false, &inp);
    pl.set_recompute("full".parse::<Recompute>().unwrap())
        .unwrap();
    assert_matches_reference(&mut pl, &model, SEED, &inp, 1e-10, "full recomputation");
}

#[test]
fn nothing_to_exchange_is_refused_by_name() {
    let model = tiny_model();
    let cfg = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4);
    let mut pl = pipeline_of(&model, cfg, DType::F64, SEED);
    let e = pl
        .set_exchange(&input(&model, 4, 1).slices, Level)
        .unwrap_err();
    let e = e.to_string();
    assert!(e.contains("no steady step of this schedule pairs"), "{e}");
    let uneven = Pipeline::new(
        &model,
        ScheduleConfig::new(ScheduleKind::Seq1F1B, 2, 4).with_slices(4),
        Some(&[3, 5]),
        &OptimConfig::default(),
        SEED,
        DType::F64,
        Duration::from_secs(30),
    );
    let slices = input(&model, 4, 4).slices;
    let e = uneven
        .unwrap()
        .set_exchange(&slices, Level)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[3, 5]"), "{e}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The executor's own counts: with the exchange, the steady steps' attention is even
/// across the stages, max/min at most 1.1 at the median step where it is at least 1.5 without
/// (figures printed with `--nocapture`), the total unchanged. An answer counts against its light
/// mark, the step the pass levelled, whenever the partner computed it.
#[test]
fn the_exchange_evens_out_the_attention_of_steady_steps() {
    let model = tiny_model();
    let seq = 64;
    let cfg = ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 4).with_slices(16);
    let inp = uniform_input(&model, (4, 1, seq, 16), SEED);
    let mut figures = Vec::new();
    for exchange in [false, true] {
        let mut pl = pipeline_of(&model, cfg, DType::F64, SEED);
        if exchange {
            pl.set_exchange(&inp.slices, Level).unwrap();
        }
        let (reports, _) = pl.run_iteration(&inp).unwrap();
        let total: u64 = reports
            .iter()
            .flat_map(|r| &r.events)
            .map(|e| e.attention)
            .sum();
        let steps = pl.exchange_steps(&inp.slices).unwrap();
        let ratios = step_attention_ratios(&reports, &steps);
        let (med, max) = (
            median(ratios.clone()),
            ratios.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "SlimPipe p=4 m=4 n=16 (4 tokens a slice), exchange {exchange}: {} steady steps (forward and backward), \
             max/min attention per step: median {med:.3}, largest {max:.3}; total {total}",
            ratios.len()
        );
        figures.push((med, max, total));
    }
    let (without, with) = (figures[0], figures[1]);
    // The work is moved, not changed: the total stays the same.
    assert_eq!(without.2, with.2);
    assert!(
        without.0 >= 1.5,
        "without the exchange: median {}",
        without.0
    );
    assert!(
        with.0 <= 1.1 && with.1 < without.1,
        "{with:?} vs {without:?}"
    );
}

/// A schedule file's exchange marks run only in a run that exchanges; otherwise they are named.
#[test]
fn a_schedule_file_with_exchanges_needs_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.json");
    let shape = SHAPE;
    let (ok, json, err) = common::seqpipe(
        &[
            &[
                "schedule",
                "--kind",
                "seq1f1b",
                "--exchange",
                "--seq-len",
                "32",
                "--format",
                "json",
            ][..],
            &shape,
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    std::fs::write(&file, json).unwrap();
    let run = [
        &["train", "--schedule", "seq1f1b", "--steps", "1"][..],
        &shape,
    ]
    .concat();
    let with_file = [&run[..], &["--schedule-file", file.to_str().unwrap()]].concat();
    let (ok, _, err) = common::seqpipe(&[&with_file[..], &["--seq-len", "32"]].concat());
    assert!(
        !ok && err.contains("set parallel.attention_exchange = true"),
        "{err}"
    );
    let exchanging = [&with_file[..], &["--exchange", "--seq-len", "32"]].concat();
    let (ok, _, err) = common::seqpipe(&exchanging);
    assert!(ok, "{err}");
    // Paired for 32 tokens, the file hands more than 8-token sequences have before a slice.
    let short = [&with_file[..], &["--exchange", "--seq-len", "8"]].concat();
    let (ok, _, err) = common::seqpipe(&short);
    assert!(
        !ok && err.contains("tokens of its prefix, but slice"),
        "{err}"
    );
}

/// `exchange_pairs` chooses the exchange's pairs: without the exchange it is named, not
/// ignored; `--exchange-pairs level` runs every pair, and needs `--exchange`.
#[test]
fn the_exchange_pairs_setting_needs_the_exchange() {
    let mut cfg = seqpipe_trainer::config::TrainConfig::default();
    cfg.parallel.exchange_pairs = Some(seqpipe_trainer::config::ExchangePairs::Level);
    let e = seqpipe_trainer::checks::check(&cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("parallel.exchange_pairs = \"level\"")
            && e.contains("attention_exchange = false"),
        "{e}"
    );
    let shape = SHAPE;
    let run = [
        &["train", "--schedule", "slimpipe", "--steps", "1"][..],
        &shape,
    ]
    .concat();
    let (ok, _, err) = common::seqpipe(&[&run[..], &["--exchange-pairs", "level"]].concat());
    assert!(!ok && err.contains("--exchange"), "{err}");
    let level = [&run[..], &["--exchange", "--exchange-pairs", "level"]].concat();
    let (ok, out, err) = common::seqpipe(&level);
    assert!(ok, "{err}");
    assert!(out.contains("attention exchange: pairs kept"), "{out}");
}

/// A stage that fails in the middle of an exchanging iteration (a target outside the vocabulary
/// in the last micro-batch) stops every stage quickly, those waiting on or answering a partner
/// included, and the error names it first.
#[test]
fn a_failing_stage_stops_every_exchanging_stage() {
    let model = tiny_model();
    let cfg = ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 4).with_slices(16);
    let mut inp = uniform_input(&model, (4, 1, 64, 16), SEED);
    let mut pl = pipeline_of(&model, cfg, DType::F64, SEED);
    pl.set_exchange(&inp.slices, Level).unwrap();
    let last = inp.tokens[3]
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let mut bad = last.clone();
    *bad.last_mut().unwrap() = 999; // a target no vocabulary of 32 has
    inp.tokens[3] = candle_core::Tensor::from_vec(bad, (1, last.len()), &Device::Cpu).unwrap();
    let started = std::time::Instant::now();
    let err = pl.run_iteration(&inp).unwrap_err();
    let elapsed = started.elapsed();
    let seqpipe_trainer::error::Error::Ranks { failures } = err.kind() else {
        panic!("every stage fails: {err:?}");
    };
    assert_eq!(failures.len(), 4, "{err:?}");
    let text = err.to_string();
    let first = text.lines().nth(1).unwrap_or("");
    assert!(first.contains("stage 3 step"), "stage 3 first:\n{text}");
    assert!(
        elapsed < Duration::from_secs(10),
        "took {elapsed:?}:\n{text}"
    );
}
