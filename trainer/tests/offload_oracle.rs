//! The memory features' correctness oracle: for every schedule kind × offload {none, half, all
//! (fraction 1, and `auto`)}
//! × recompute {none, selective, full, partial full, the adaptive plan}, the planner's OFFLOAD/RELOAD actions
//! through the host link (unlimited, and a slow emulated link) and the RECOMPUTE actions leave
//! one iteration's loss and every gradient equal to the same pipeline without them (f64, 1e-10
//! relative; moves copy bytes and recomputation reruns the same kernels, so in practice bit for
//! bit), and three AdamW steps end on the same parameters.

mod common;
mod memory_cases;

use std::time::Duration;

use candle_core::DType;
use common::{adaptive_midway, tiny_model, worst_rel_err};
use memory_cases::{input, two_stage_config, BATCH, SEQ};
use seqpipe_schedule::{Op, ScheduleConfig, ScheduleKind};
use seqpipe_trainer::config::{Precision, TrainConfig};
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::runtime::offload::Offload;
use seqpipe_trainer::runtime::rank_loop::plan;
use seqpipe_trainer::runtime::{IterationInput, Pipeline};

const SEED: u64 = 5;

/// The training configuration whose planned schedule is `sc`'s with `offload`.
fn train_config(sc: &ScheduleConfig, offload: Offload) -> TrainConfig {
    let mut cfg = TrainConfig {
        model: tiny_model(),
        precision: Precision::F32,
        ..TrainConfig::default()
    };
    cfg.data.seq_len = SEQ;
    let p = &mut cfg.parallel;
    (p.stages, p.microbatches, p.slices, p.chunks) =
        (sc.stages, sc.microbatches, sc.slices, sc.chunks);
    p.schedule = sc.kind.name().into();
    p.group = sc.group;
    p.slicing = seqpipe_trainer::config::SlicingMethod::Uniform;
    p.offload = offload;
    cfg
}

/// The pipeline of `sc` with `offload`'s planned moves and `recompute`; `auto` is the adaptive
/// plan of the schedule without offload (`common::adaptive_midway`) for `inp`'s slices.
fn pipeline(
    sc: ScheduleConfig,
    offload: Offload,
    recompute: &str,
    bandwidth: Option<f64>,
    inp: &IterationInput,
) -> Pipeline {
    let mut pl = Pipeline::new(
        &tiny_model(),
        sc,
        None,
        &OptimConfig::default(),
        SEED,
        DType::F64,
        Duration::from_secs(30),
    )
    .unwrap();
    let recompute = match recompute {
        "auto" => adaptive_midway(&pl, &inp.slices, BATCH).0,
        setting => setting.parse().unwrap(),
    };
    if offload != Offload::None {
        let (schedule, _) = plan(&train_config(&sc, offload)).unwrap();
        pl.set_schedule(schedule).unwrap();
    }
    pl.set_recompute(recompute).unwrap();
    pl.set_host_bandwidth(bandwidth);
    pl
}

fn offloads(pl: &Pipeline) -> usize {
    let all = pl.schedule.actions.iter().flatten();
    all.filter(|a| a.op == Op::Offload).count()
}

#[test]
fn offload_and_recompute_leave_loss_and_every_gradient_unchanged_for_every_kind() {
    let mut ran = 0;
    for kind in ScheduleKind::ALL {
        let (sc, slicing) = two_stage_config(kind);
        let inp = input(&sc, slicing, SEED);
        let mut plain = pipeline(sc, Offload::None, "none", None, &inp);
        let base = plain.compute_gradients(&inp).unwrap();
        let base_grads = plain.gradients().unwrap();
        // 20 MB/s: a unit of the tiny model takes tens of microseconds to move.
        let links = [
            (Offload::Fraction(0.5), None),
            (Offload::Fraction(1.0), None),
            (Offload::Auto, None),
            (Offload::Auto, Some(2e7)),
        ];
        let offloads_planned = links.iter().chain(&[(Offload::None, None)]);
        for &(offload, bandwidth) in offloads_planned {
            for recompute in ["none", "selective", "full", "full:1", "auto"] {
                if (offload, recompute) == (Offload::None, "none") {
                    continue;
                }
                let case = format!(
                    "{kind:?} offload {offload} bandwidth {bandwidth:?} recompute {recompute}"
                );
                let mut pl = pipeline(sc, offload, recompute, bandwidth, &inp);
                if offload != Offload::None {
                    assert!(offloads(&pl) > 0, "{case}: nothing offloaded");
                }
                let report = pl.compute_gradients(&inp).unwrap();
                let off = (report.loss - base.loss).abs();
                assert!(
                    off <= 1e-10 * base.loss.abs(),
                    "{case}: loss {} vs {}",
                    report.loss,
                    base.loss
                );
                let (err, name) = worst_rel_err(&pl.gradients().unwrap(), &base_grads);
                assert!(
                    err <= 1e-10,
                    "{case}: gradient of {name} differs by {err:e}"
                );
                ran += 1;
            }
        }
    }
    eprintln!("{ran} configurations equal their plain pipeline");
}

#[test]
fn three_optimizer_steps_with_offload_and_recompute_end_on_the_same_parameters() {
    for kind in [
        ScheduleKind::OneFOneB,
        ScheduleKind::Gis,
        ScheduleKind::SlimPipe,
    ] {
        let (sc, slicing) = two_stage_config(kind);
        let inp = input(&sc, slicing, SEED);
        let mut plain = pipeline(sc, Offload::None, "none", None, &inp);
        let mut pl = pipeline(sc, Offload::Auto, "full:1", None, &inp);
        let mut adaptive = pipeline(sc, Offload::Auto, "auto", None, &inp);
        for step in 0..3 {
            let a = plain.step(&inp, 1e-2).unwrap();
            let b = pl.step(&inp, 1e-2).unwrap();
            let c = adaptive.step(&inp, 1e-2).unwrap();
            assert_eq!(
                (a.loss.to_bits(), a.loss.to_bits()),
                (b.loss.to_bits(), c.loss.to_bits()),
                "{kind:?} step {step} loss"
            );
        }
        for (setting, pl) in [("full:1", &pl), ("auto", &adaptive)] {
            let (err, name) =
                worst_rel_err(&pl.parameters().unwrap(), &plain.parameters().unwrap());
            assert!(
                err <= 1e-10,
                "{kind:?} offload auto recompute {setting}: parameter {name} differs by {err:e}"
            );
        }
    }
}
