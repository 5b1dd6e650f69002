//! Measured activation bytes per stage equal the prediction exactly, after every action and so
//! at the peaks: the saved bytes (forward records, KV caches, dK/dV accumulators) and saved plus
//! transient bytes (activations and gradients between a compute and its send or after a
//! receive, the inputs a split backward keeps for its weight half). The matrix runs every executed schedule family ×
//! {f32, bf16} × a few (stages, micro-batches, slices, chunks); the prediction is the `memory`
//! crate's ledger plus the runtime's named terms (see `seqpipe_trainer::predict`).

mod common;

use std::time::Duration;

use candle_core::DType;
use common::{adaptive_midway, data, slice_ranges, tiny_model, Slicing};
use seqpipe_schedule::{Action, Lowered, Op, Schedule, ScheduleConfig, ScheduleKind};
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::predict::{predict, PredictInput, StagePrediction};
use seqpipe_trainer::runtime::recompute::Recompute;
use seqpipe_trainer::runtime::{IterationInput, Pipeline, StageReport};

const SEQ: usize = 32;
const BATCH: usize = 2;

/// The stages' reports of one iteration and the prediction for it.
fn measure_and_predict(
    cfg: ScheduleConfig,
    slicing: Slicing,
    dtype: DType,
) -> (Vec<StageReport>, Vec<StagePrediction>) {
    measure_and_predict_edited(cfg, slicing, dtype, Schedule::clone, Recompute::None)
}

/// As [`measure_and_predict`], running the generated lowered schedule after `edit`, with
/// `recompute`.
fn measure_and_predict_edited(
    cfg: ScheduleConfig,
    slicing: Slicing,
    dtype: DType,
    edit: impl Fn(&Schedule) -> Schedule,
    recompute: Recompute,
) -> (Vec<StageReport>, Vec<StagePrediction>) {
    measure_and_predict_with(cfg, slicing, dtype, |pl| {
        let edited = Lowered::check(edit(pl.schedule.schedule())).unwrap();
        pl.set_schedule(edited).unwrap();
        pl.set_recompute(recompute).unwrap();
    })
}

/// As [`measure_and_predict`], after `prepare` has set the pipeline up.
fn measure_and_predict_with(
    cfg: ScheduleConfig,
    slicing: Slicing,
    dtype: DType,
    prepare: impl FnOnce(&mut Pipeline),
) -> (Vec<StageReport>, Vec<StagePrediction>) {
    let model = tiny_model();
    let mut pl = Pipeline::new(
        &model,
        cfg,
        None,
        &OptimConfig::default(),
        5,
        dtype,
        Duration::from_secs(30),
    )
    .unwrap();
    prepare(&mut pl);
    let slices = slice_ranges(&model, slicing, SEQ, cfg.slices as usize);
    let m = cfg.microbatches as usize;
    let input = IterationInput {
        ragged: None,
        documents: None,
        tokens: data(&model, m, BATCH, SEQ, 5),
        masks: None,
        slices: slices.clone(),
        normaliser: (m * BATCH * SEQ) as f64,
    };
    let (reports, _) = pl.run_iteration(&input).unwrap();
    let predicted = predict(&PredictInput {
        ragged: None,
        model: &model,
        dtype,
        batch: BATCH,
        slices: &slices,
        schedule: &pl.schedule,
        partition: &pl.partition,
        recompute: pl.recompute(),
    })
    .unwrap()
    .expect("an even partition in f32 or bf16 has a prediction");
    (reports, predicted)
}

/// Every schedule family the runtime executes, at two sizes each.
fn configurations() -> Vec<(ScheduleConfig, Slicing)> {
    use ScheduleKind::*;
    let c = ScheduleConfig::new;
    vec![
        (c(OneFOneB, 2, 4), Slicing::None),
        (c(OneFOneB, 4, 8), Slicing::None),
        (c(Seq1F1B, 2, 4).with_slices(2), Slicing::Uniform),
        (c(Seq1F1B, 4, 4).with_slices(4), Slicing::Balanced),
        (
            c(SlimPipe, 4, 2).with_slices(4).with_chunks(2),
            Slicing::Uniform,
        ),
        (
            c(SlimPipe, 2, 4).with_slices(8).with_chunks(2),
            Slicing::Balanced,
        ),
        (c(ZbH1, 2, 4), Slicing::None),
        (c(ZbH1, 4, 8), Slicing::None),
        (c(Gis, 2, 4).with_chunks(2).with_group(2), Slicing::None),
        (c(Gis, 4, 8).with_chunks(2).with_group(4), Slicing::None),
        (c(GPipe, 4, 4), Slicing::None),
        (c(Interleaved, 2, 4).with_chunks(2), Slicing::None),
    ]
}

/// Where a stage's measured bytes after its actions first differ from the prediction.
fn first_difference(r: &StageReport, p: &StagePrediction) -> Option<String> {
    if r.events.len() != p.after_action.len() {
        return Some(format!(
            "{} actions measured, {} predicted",
            r.events.len(),
            p.after_action.len()
        ));
    }
    r.events
        .iter()
        .zip(&p.after_action)
        .find_map(|(e, &(saved, total))| {
            let measured = (
                e.held.saved as f64,
                (e.held.saved + e.held.transient) as f64,
            );
            (measured != (saved, total)).then(|| {
                format!(
                    "after {}: measured saved {} total {}, predicted saved {saved} total {total}",
                    e.text, measured.0, measured.1
                )
            })
        })
}

#[test]
fn measured_saved_and_total_bytes_equal_the_prediction_on_every_stage() {
    let mut mismatches = Vec::new();
    for (cfg, slicing) in configurations() {
        for dtype in [DType::F32, DType::BF16] {
            let (reports, predicted) = measure_and_predict(cfg, slicing, dtype);
            assert_eq!(reports.len(), predicted.len());
            for (stage, (r, p)) in reports.iter().zip(&predicted).enumerate() {
                let (saved, total) = (r.peak_saved_bytes, r.peak_bytes);
                let case = format!(
                    "{:?} p={} m={} n={} v={} {slicing:?} {dtype:?} stage {stage}",
                    cfg.kind, cfg.stages, cfg.microbatches, cfg.slices, cfg.chunks
                );
                // The figures, for the record (`--nocapture`).
                let peaks = p.peaks;
                println!(
                    "{case}: saved {saved} / {}, total {total} / {}",
                    peaks.saved, peaks.total
                );
                if saved as f64 != peaks.saved || total as f64 != peaks.total {
                    mismatches.push(format!(
                        "{case}: measured peaks saved {saved} total {total}, predicted saved {} \
                         total {}",
                        peaks.saved, peaks.total
                    ));
                }
                // Not only the peaks: what the stage holds after every action.
                if let Some(difference) = first_difference(r, p) {
                    mismatches.push(format!("{case}: {difference}"));
                }
                // Every stage of a pipeline holds a buffer after some action (its sends and
                // receives); none would leave the transient terms untested.
                let transient = r.events.iter().map(|e| e.held.transient).max();
                assert!(
                    transient > Some(0),
                    "{case}: no transient bytes were measured"
                );
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// The split backward's weight half keeps its inputs as transient bytes: on a zero-bubble
/// schedule some action leaves more transient bytes than the four activation and gradient
/// buffers a stage can hold at once, and the totals still match the prediction.
#[test]
fn zero_bubble_weight_inputs_are_transient_and_predicted() {
    let cfg = ScheduleConfig::new(ScheduleKind::ZbH1, 2, 4);
    let hidden = tiny_model().hidden;
    for dtype in [DType::F32, DType::BF16] {
        let (reports, predicted) = measure_and_predict(cfg, Slicing::None, dtype);
        let buffer = BATCH * SEQ * hidden * dtype.size_in_bytes();
        for (r, p) in reports.iter().zip(&predicted) {
            let transient = r.events.iter().map(|e| e.held.transient).max().unwrap();
            assert!(
                transient > 4 * buffer,
                "{dtype:?} stage {}: at most {transient} transient bytes, not more than four \
                 {buffer}-byte buffers",
                r.stage
            );
            assert_eq!(
                (r.peak_saved_bytes as f64, r.peak_bytes as f64),
                (p.peaks.saved, p.peaks.total)
            );
            assert_eq!(first_difference(r, p), None);
        }
    }
}

/// `s` with every unit's records offloaded right after its forward and reloaded right before
/// its backward (`B`, or `I` of a split backward), on every stage.
fn offload_everything(s: &Schedule) -> Schedule {
    let mut out = s.clone();
    for program in &mut out.actions {
        let mut edited = Vec::with_capacity(program.len() * 2);
        for a in program.iter() {
            if matches!(a.op, Op::Backward | Op::BackwardInput) {
                edited.push(Action {
                    op: Op::Reload,
                    ..*a
                });
            }
            edited.push(*a);
            if a.op == Op::Forward {
                edited.push(Action {
                    op: Op::Offload,
                    ..*a
                });
            }
        }
        *program = edited;
    }
    out
}

/// With every unit offloaded, the device bytes after each action still equal the prediction,
/// the host bytes equal the ledger's host tier, the device peak drops below the plain run's,
/// and the loss is the plain run's bit for bit.
#[test]
fn offloaded_records_leave_the_device_and_the_prediction_follows_them() {
    use ScheduleKind::*;
    let c = ScheduleConfig::new;
    let cases = [
        (c(OneFOneB, 2, 4), Slicing::None),
        (c(Seq1F1B, 2, 4).with_slices(2), Slicing::Uniform),
        (c(ZbH1, 2, 4), Slicing::None),
        (c(Gis, 2, 4).with_chunks(2).with_group(2), Slicing::None),
    ];
    for (cfg, slicing) in cases {
        for dtype in [DType::F32, DType::BF16] {
            let case = format!("{:?} {dtype:?}", cfg.kind);
            let (plain, _) = measure_and_predict(cfg, slicing, dtype);
            let (reports, predicted) = measure_and_predict_edited(
                cfg,
                slicing,
                dtype,
                offload_everything,
                Recompute::None,
            );
            for ((r, p), q) in reports.iter().zip(&predicted).zip(&plain) {
                let stage = format!("{case} stage {}", r.stage);
                assert_eq!(first_difference(r, p), None, "{stage}");
                let host: Vec<f64> = r.events.iter().map(|e| e.held.host as f64).collect();
                assert_eq!(host, p.host_after_action, "{stage}: host bytes");
                let host_peak = host.iter().copied().fold(0.0, f64::max);
                // A unit reloaded before any compute follows its offload never reaches the host
                // (the copy is joined at the reload): on the last stage of 1F1B every unit's
                // backward follows its forward at once. Stage 0's units live long.
                if r.stage == 0 {
                    assert!(host_peak > 0.0, "{stage}: nothing was offloaded");
                }
                // The figures, for the record (`--nocapture`).
                println!(
                    "{stage}: device saved peak {} (without offload {}), host peak {host_peak}",
                    r.peak_saved_bytes, q.peak_saved_bytes
                );
                // Stage 0 holds several units at once; the last stage of 1F1B runs each
                // backward right after its forward, so its peak (after the forward, before
                // the offload) cannot drop.
                let lower = match r.stage {
                    0 => r.peak_saved_bytes < q.peak_saved_bytes,
                    _ => r.peak_saved_bytes <= q.peak_saved_bytes,
                };
                assert!(
                    lower,
                    "{stage}: device peak {} vs the plain run's {}",
                    r.peak_saved_bytes, q.peak_saved_bytes
                );
                assert_eq!(r.loss.to_bits(), q.loss.to_bits(), "{stage}: loss");
            }
        }
    }
}

/// With recomputation, the device bytes after every action still equal the prediction — a
/// recomputed unit holds its reduced record until its `RECOMPUTE`, its whole record from there
/// to its backward — the peak drops below the plain run's on stage 0, and the loss is the plain
/// run's bit for bit. Every schedule family, selective, full and partial full, each also with
/// every unit offloaded (its reduced record moves).
#[test]
fn recomputed_records_are_predicted_after_every_action() {
    for (cfg, slicing) in configurations() {
        let (plain, _) = measure_and_predict(cfg, slicing, DType::F32);
        let chunk_layers = 8 / (cfg.stages * cfg.chunks) as usize;
        let mut settings = vec!["selective".to_string(), "full".to_string()];
        if chunk_layers > 1 {
            settings.push("full:1".into());
        }
        for (setting, offload) in settings.iter().flat_map(|s| [(s, false), (s, true)]) {
            let recompute: Recompute = setting.parse().unwrap();
            let edit: fn(&Schedule) -> Schedule = match offload {
                true => offload_everything,
                false => Schedule::clone,
            };
            let (reports, predicted) =
                measure_and_predict_edited(cfg, slicing, DType::F32, edit, recompute);
            let setting = match offload {
                true => format!("{setting} with every unit offloaded"),
                false => setting.clone(),
            };
            for ((r, p), q) in reports.iter().zip(&predicted).zip(&plain) {
                let case = format!(
                    "{:?} p={} m={} n={} v={} recompute {setting} stage {}",
                    cfg.kind, cfg.stages, cfg.microbatches, cfg.slices, cfg.chunks, r.stage
                );
                assert_eq!(first_difference(r, p), None, "{case}");
                assert_eq!(r.loss.to_bits(), q.loss.to_bits(), "{case}: loss");
                if r.stage == 0 {
                    assert!(
                        r.peak_saved_bytes < q.peak_saved_bytes,
                        "{case}: peak {} vs the plain run's {}",
                        r.peak_saved_bytes,
                        q.peak_saved_bytes
                    );
                }
                println!(
                    "{case}: saved peak {} (without recomputation {})",
                    r.peak_saved_bytes, q.peak_saved_bytes
                );
            }
        }
    }
}

/// The adaptive plan (`recompute = auto`, a layer count per unit from the recomputation
/// program): under per-stage activation budgets midway between nothing and everything
/// recomputed, each stage's predicted working peak fits its budget, the measured bytes after
/// every action equal the prediction, and the loss is the plain run's bit for bit. With every
/// unit offloaded as well (each moves its reduced record), measured still equals predicted.
#[test]
fn the_adaptive_plan_fits_its_budgets_as_measured_and_predicted() {
    for (cfg, slicing) in configurations() {
        let model = tiny_model();
        let probe = Pipeline::new(
            &model,
            cfg,
            None,
            &OptimConfig::default(),
            5,
            DType::F32,
            Duration::from_secs(30),
        )
        .unwrap();
        let slices = slice_ranges(&model, slicing, SEQ, cfg.slices as usize);
        let (auto, budgets) = adaptive_midway(&probe, &slices, BATCH);
        let (plain, _) = measure_and_predict(cfg, slicing, DType::F32);
        let (reports, predicted) =
            measure_and_predict_edited(cfg, slicing, DType::F32, Schedule::clone, auto.clone());
        for (((r, p), q), budget) in reports.iter().zip(&predicted).zip(&plain).zip(&budgets) {
            let case = format!(
                "{:?} p={} m={} n={} v={} {} stage {}",
                cfg.kind,
                cfg.stages,
                cfg.microbatches,
                cfg.slices,
                cfg.chunks,
                auto.describe(),
                r.stage
            );
            assert_eq!(first_difference(r, p), None, "{case}");
            assert_eq!(r.loss.to_bits(), q.loss.to_bits(), "{case}: loss");
            assert!(
                p.peaks.working <= budget * (1.0 + 1e-12),
                "{case}: working peak {} over the budget {budget}",
                p.peaks.working
            );
        }
        let (reports, predicted) =
            measure_and_predict_edited(cfg, slicing, DType::F32, offload_everything, auto.clone());
        for ((r, p), q) in reports.iter().zip(&predicted).zip(&plain) {
            let case = format!("{:?} {} offloaded stage {}", cfg.kind, auto, r.stage);
            assert_eq!(first_difference(r, p), None, "{case}");
            assert_eq!(r.loss.to_bits(), q.loss.to_bits(), "{case}: loss");
        }
        println!(
            "{:?} p={} m={} n={} v={}: {}",
            cfg.kind,
            cfg.stages,
            cfg.microbatches,
            cfg.slices,
            cfg.chunks,
            auto.describe()
        );
    }
}

/// With the embedding and head sharded over the stages, what each stage holds after every
/// action is still predicted exactly, and the last stage's saved peak drops by the head record
/// the whole-table run keeps per unit in flight (`2H·a + 2·4` bytes per token: the head input
/// and the final norm's output, and two f32 statistics), as predicted.
#[test]
fn vocabulary_parallel_stages_are_predicted_and_the_last_sheds_the_head_record() {
    use ScheduleKind::*;
    let c = ScheduleConfig::new;
    let cases = [
        (
            c(SlimPipe, 4, 2).with_slices(4).with_chunks(2),
            Slicing::Uniform,
        ),
        (c(Seq1F1B, 2, 4).with_slices(2), Slicing::Uniform),
        (c(ZbH1, 2, 4), Slicing::None),
        (
            c(SlimPipe, 1, 2).with_slices(2).with_chunks(2),
            Slicing::Uniform,
        ),
    ];
    let mut mismatches = Vec::new();
    for (cfg, slicing) in cases {
        for dtype in [DType::F32, DType::BF16] {
            let case = format!("{:?} p={} n={} {dtype:?}", cfg.kind, cfg.stages, cfg.slices);
            let (whole, whole_predicted) = measure_and_predict(cfg, slicing, dtype);
            let (sharded, predicted) = measure_and_predict_with(cfg, slicing, dtype, |pl| {
                pl.set_vocab_parallel().unwrap()
            });
            for (stage, (r, p)) in sharded.iter().zip(&predicted).enumerate() {
                if let Some(difference) = first_difference(r, p) {
                    mismatches.push(format!("{case} stage {stage}: {difference}"));
                }
            }
            let last = cfg.stages as usize - 1;
            let shed = whole[last].peak_saved_bytes - sharded[last].peak_saved_bytes;
            let predicted_shed = whole_predicted[last].peaks.saved - predicted[last].peaks.saved;
            println!(
                "{case}: last stage's saved peak {} -> {} bytes (predicted drop {predicted_shed})",
                whole[last].peak_saved_bytes, sharded[last].peak_saved_bytes
            );
            assert!(shed > 0, "{case}: nothing shed");
            assert_eq!(shed as f64, predicted_shed, "{case}");
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
