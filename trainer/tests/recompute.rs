//! Recomputation at run time: for every schedule kind × {selective, full, partial full,
//! per-stage full, the adaptive plan}, one iteration's loss and every gradient equal the same pipeline's without
//! recomputation (f64, 1e-10 relative; the same kernels on the same inputs, so in practice bit
//! for bit) and the single-device reference's loss, and three AdamW steps end on the same
//! parameters. Bad settings are refused before any work, naming the value and what is valid.

mod common;
mod memory_cases;

use std::time::Duration;

use candle_core::DType;
use common::{adaptive_midway, full_params, reference, tiny_model, worst_rel_err};
use memory_cases::{input, two_stage_config, BATCH};
use seqpipe_schedule::{Op, ScheduleConfig, ScheduleKind};
use seqpipe_trainer::config::TrainConfig;
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::runtime::offload::Offload;
use seqpipe_trainer::runtime::recompute::Recompute;
use seqpipe_trainer::runtime::{IterationInput, Pipeline};
use seqpipe_trainer::train::check;

const SEED: u64 = 3;

fn pipeline(cfg: ScheduleConfig, recompute: &str) -> Pipeline {
    let mut pl = plain_pipeline(cfg);
    pl.set_recompute(recompute.parse().unwrap()).unwrap();
    pl
}

/// The pipeline with `recompute = auto` planned midway (`common::adaptive_midway`).
fn adaptive_pipeline(cfg: ScheduleConfig, inp: &IterationInput) -> (Pipeline, Recompute) {
    let mut pl = plain_pipeline(cfg);
    let (auto, _) = adaptive_midway(&pl, &inp.slices, BATCH);
    pl.set_recompute(auto.clone()).unwrap();
    (pl, auto)
}

fn plain_pipeline(cfg: ScheduleConfig) -> Pipeline {
    Pipeline::new(
        &tiny_model(),
        cfg,
        None,
        &OptimConfig::default(),
        SEED,
        DType::F64,
        Duration::from_secs(30),
    )
    .unwrap()
}

fn recomputes(pl: &Pipeline) -> usize {
    pl.schedule
        .actions
        .iter()
        .flatten()
        .filter(|a| a.op == Op::Recompute)
        .count()
}

#[test]
fn recomputation_leaves_loss_gradients_and_trained_parameters_unchanged() {
    let model = tiny_model();
    let params = full_params(&model, SEED, DType::F64);
    for kind in ScheduleKind::ALL {
        let (cfg, slicing) = two_stage_config(kind);
        let inp = input(&cfg, slicing, SEED);
        let (ref_loss, _) = reference::loss_and_grads(&model, &params, &inp.tokens);
        let mut plain = pipeline(cfg, "none");
        let base = plain.compute_gradients(&inp).unwrap();
        let base_grads = plain.gradients().unwrap();
        let settings = ["selective", "full", "full:1", "full:2,0", "auto"];
        for setting in settings {
            let case = format!("{kind:?} recompute {setting}");
            let mut pl = match setting {
                "auto" => {
                    let (pl, auto) = adaptive_pipeline(cfg, &inp);
                    println!("{case}: {}", auto.describe());
                    pl
                }
                _ => pipeline(cfg, setting),
            };
            assert!(recomputes(&pl) > 0, "{case}: no RECOMPUTE in the schedule");
            let report = pl.compute_gradients(&inp).unwrap();
            assert!(
                (report.loss - base.loss).abs() <= 1e-10 * base.loss.abs(),
                "{case}: loss {} vs {} without recomputation",
                report.loss,
                base.loss
            );
            let off = (report.loss - ref_loss).abs();
            assert!(
                off <= 1e-10 * ref_loss.abs(),
                "{case}: {} vs reference {ref_loss}",
                report.loss
            );
            let (err, name) = worst_rel_err(&pl.gradients().unwrap(), &base_grads);
            assert!(
                err <= 1e-10,
                "{case}: gradient of {name} differs by {err:e}"
            );
        }
    }
}

#[test]
fn three_optimizer_steps_with_recomputation_end_on_the_same_parameters() {
    let kinds = [ScheduleKind::Seq1F1B, ScheduleKind::ZbH1, ScheduleKind::Gis];
    for (kind, adaptive) in kinds.into_iter().flat_map(|k| [(k, false), (k, true)]) {
        let (cfg, slicing) = two_stage_config(kind);
        let inp = input(&cfg, slicing, SEED);
        let mut plain = pipeline(cfg, "none");
        let mut pl = match adaptive {
            true => adaptive_pipeline(cfg, &inp).0,
            false => pipeline(cfg, "full:1"),
        };
        for step in 0..3 {
            let a = plain.step(&inp, 1e-2).unwrap();
            let b = pl.step(&inp, 1e-2).unwrap();
            assert_eq!(
                a.loss.to_bits(),
                b.loss.to_bits(),
                "{kind:?} step {step} loss"
            );
        }
        let (err, name) = worst_rel_err(&pl.parameters().unwrap(), &plain.parameters().unwrap());
        assert!(
            err <= 1e-10,
            "{kind:?}: parameter {name} differs by {err:e}"
        );
    }
}

/// A run of the default configuration with `recompute`.
fn train_config(recompute: &str) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.parallel.recompute = recompute.parse().unwrap();
    cfg
}

#[test]
fn bad_recompute_settings_are_refused_before_any_work() {
    for bad in ["half", "full:", "full:x", "auto:1", "adaptive"] {
        let e = bad.parse::<Recompute>().unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains("selective"), "{bad}: {e}");
    }
    // The default: 8 layers on 4 stages × 2 chunks, one layer per chunk.
    let e = check(&train_config("full:2")).unwrap_err().to_string();
    assert!(e.contains("full:2") && e.contains("at most 1"), "{e}");
    // A count for a stage that does not exist.
    let e = check(&train_config("full:1,1,1,1,1"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 per-stage counts for 4 stages"), "{e}");
    let e = TrainConfig::from_toml("[parallel]\nrecompute = \"sometimes\"\n").unwrap_err();
    assert!(e.to_string().contains("sometimes"), "{e}");
    check(&train_config("full:1,0,1,0")).unwrap();
    // The adaptive plan needs a budget to plan under, and plans recomputation alone.
    let e = check(&train_config("auto")).unwrap_err().to_string();
    assert!(e.contains("auto") && e.contains("memory_budget"), "{e}");
    let mut offloaded = train_config("auto");
    offloaded.parallel.memory_budget = Some(1 << 30);
    offloaded.parallel.offload = Offload::Auto;
    let e = check(&offloaded).unwrap_err().to_string();
    assert!(e.contains("offload = auto") && e.contains("none"), "{e}");
    // A budget below what even recomputing every layer reaches names the shortfall.
    let mut tight = train_config("auto");
    tight.parallel.memory_budget = Some(4_000_000);
    let e = check(&tight).unwrap_err().to_string();
    assert!(
        e.contains("4000000") && e.contains("recompute = auto") && e.contains("over"),
        "{e}"
    );
}

#[test]
fn a_schedule_file_and_the_setting_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.json");
    let cfg = TrainConfig::default();
    let (schedule, _) = seqpipe_trainer::runtime::rank_loop::plan(&cfg).unwrap();
    std::fs::write(&path, schedule.schedule().to_json()).unwrap();
    let mut with_file = train_config("full");
    with_file.parallel.schedule_file = Some(path.clone());
    let e = check(&with_file).unwrap_err().to_string();
    assert!(e.contains("holds no RECOMPUTE"), "{e}");
    let recomputing = seqpipe_trainer::runtime::rank_loop::plan(&train_config("full"))
        .unwrap()
        .0;
    std::fs::write(&path, recomputing.schedule().to_json()).unwrap();
    let e = check(&with_file_none(&path)).unwrap_err().to_string();
    assert!(
        e.contains("RECOMPUTE") && e.contains("selective or full"),
        "{e}"
    );
    check(&with_file).unwrap();
    let mut adaptive = with_file;
    adaptive.parallel.recompute = "auto".parse().unwrap();
    adaptive.parallel.memory_budget = Some(1 << 30);
    let e = check(&adaptive).unwrap_err().to_string();
    assert!(e.contains("auto") && e.contains("schedule_file"), "{e}");
}

fn with_file_none(path: &std::path::Path) -> TrainConfig {
    let mut cfg = TrainConfig::default();
    cfg.parallel.schedule_file = Some(path.to_path_buf());
    cfg
}

/// The worst stage's predicted peak (model states + activations) of `cfg` as it would run.
fn worst_peak(cfg: &TrainConfig) -> f64 {
    use seqpipe_trainer::runtime::budget::predicted_stage_peaks;
    let (schedule, partition) = seqpipe_trainer::runtime::rank_loop::plan(cfg).unwrap();
    let slices = seqpipe_trainer::train::slice_ranges(cfg).unwrap();
    let peaks = predicted_stage_peaks(cfg, &schedule, &partition, &slices).unwrap();
    peaks.into_iter().fold(0.0, f64::max)
}

fn losses(cfg: &TrainConfig) -> (Vec<f64>, seqpipe_trainer::train::TrainSummary) {
    let mut losses = Vec::new();
    let summary = seqpipe_trainer::train::train(cfg, |e| {
        losses.push(e.loss);
        Ok(())
    })
    .unwrap();
    (losses, summary)
}

#[test]
fn a_budget_no_offload_fits_picks_recomputation_and_the_run_keeps_its_losses() {
    let mut base = train_config("none");
    base.steps = 2;
    let with = |offload: Offload, recompute: &str| {
        let mut cfg = base.clone();
        cfg.parallel.offload = offload;
        cfg.parallel.recompute = recompute.parse().unwrap();
        worst_peak(&cfg)
    };
    let (offloaded, selective, full) = (
        with(Offload::Auto, "none"),
        with(Offload::None, "selective"),
        with(Offload::None, "full"),
    );
    assert!(
        full < offloaded.min(selective),
        "{full} vs {offloaded}, {selective}"
    );
    let mut cfg = base.clone();
    cfg.parallel.memory_budget = Some(full.ceil() as u64);
    let (fitted, summary) = losses(&cfg);
    // The adaptive plan comes before uniform full recomputation on the ladder, and fits where
    // full does, recomputing at most as many units.
    assert_eq!(
        summary.recompute.to_string(),
        "auto",
        "{:?}",
        summary.budget
    );
    assert_eq!(summary.offload, Offload::None);
    let mut full_cfg = base.clone();
    full_cfg.parallel.recompute = "full".parse().unwrap();
    let (_, full_run) = losses(&full_cfg);
    let count = |s: &seqpipe_trainer::train::TrainSummary| s.recomputed_units.iter().sum::<usize>();
    assert!(count(&summary) > 0 && count(&summary) <= count(&full_run));
    let (_, peaks) = summary.budget.clone().unwrap();
    assert!(peaks.iter().all(|&p| p <= full.ceil()), "{peaks:?}");
    let (plain, _) = losses(&base);
    assert_eq!(fitted, plain, "losses with the budget's recomputation");
    println!(
        "budget {full:.0}: recompute = {} ({} units; full recomputes {}); worst predicted peaks: \
         offload auto {offloaded:.0}, selective {selective:.0}, full {full:.0}",
        summary.recompute.describe(),
        count(&summary),
        count(&full_run)
    );
}
