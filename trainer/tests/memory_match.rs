//! Measured peak saved-activation bytes per stage equal the `memory` crate's prediction for the
//! same schedule, exactly, once the runtime's extra tensors are added as named terms (see
//! `seqpipe_trainer::predict`).

mod common;

use std::time::Duration;

use candle_core::DType;
use common::{data, slice_ranges, tiny_model, Slicing};
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_trainer::optim::OptimConfig;
use seqpipe_trainer::predict::{predicted_peaks, splits_backward, PredictInput};
use seqpipe_trainer::runtime::{IterationInput, Pipeline};

const SEQ: usize = 32;
const BATCH: usize = 2;

fn measure_and_predict(cfg: ScheduleConfig, slicing: Slicing) -> (Vec<usize>, Vec<f64>) {
    let model = tiny_model();
    let mut pl = Pipeline::new(
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
    let m = cfg.microbatches as usize;
    let input = IterationInput {
        tokens: data(&model, m, BATCH, SEQ, 5),
        masks: None,
        slices: slices.clone(),
        normaliser: (m * BATCH * SEQ) as f64,
    };
    let (reports, _) = pl.run_iteration(&input).unwrap();
    let predict = PredictInput {
        model: &model,
        dtype: DType::F32,
        batch: BATCH,
        slices: &slices,
        schedule: &pl.schedule,
        partition: &pl.partition,
    };
    let predicted = predicted_peaks(&predict)
        .unwrap()
        .expect("an even partition in f32 has a prediction");
    (
        reports.iter().map(|r| r.peak_saved_bytes).collect(),
        predicted,
    )
}

#[test]
fn measured_peaks_equal_the_memory_model() {
    let cases = [
        (
            ScheduleConfig::new(ScheduleKind::GPipe, 4, 4),
            Slicing::None,
        ),
        (
            ScheduleConfig::new(ScheduleKind::OneFOneB, 4, 8),
            Slicing::None,
        ),
        (
            ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4),
            Slicing::None,
        ),
        (
            ScheduleConfig::new(ScheduleKind::Interleaved, 2, 4).with_chunks(2),
            Slicing::None,
        ),
        (
            ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 4).with_slices(4),
            Slicing::Uniform,
        ),
        (
            ScheduleConfig::new(ScheduleKind::Seq1F1B, 4, 4).with_slices(4),
            Slicing::Balanced,
        ),
        (
            ScheduleConfig::new(ScheduleKind::SlimPipe, 4, 2)
                .with_slices(4)
                .with_chunks(2),
            Slicing::Uniform,
        ),
        (
            ScheduleConfig::new(ScheduleKind::SlimPipe, 2, 4)
                .with_slices(8)
                .with_chunks(2),
            Slicing::Balanced,
        ),
        (
            ScheduleConfig::new(ScheduleKind::Gis, 2, 4)
                .with_chunks(2)
                .with_group(2),
            Slicing::None,
        ),
    ];
    for (cfg, slicing) in cases {
        let (measured, predicted) = measure_and_predict(cfg, slicing);
        for (stage, (m, p)) in measured.iter().zip(&predicted).enumerate() {
            assert_eq!(
                *m as f64, *p,
                "{:?} {slicing:?} stage {stage}: measured {measured:?}, predicted {predicted:?}",
                cfg.kind
            );
        }
    }
}

/// Zero-bubble schedules drop a unit's saved record at its input-gradient half and keep only the
/// weight half's inputs (counted as transient) until W; the ledger keeps the unit until W. The
/// measured saved peak can therefore only be lower, never higher.
#[test]
fn split_backward_never_exceeds_the_prediction() {
    let cfg = ScheduleConfig::new(ScheduleKind::ZbH1, 4, 8);
    let (measured, predicted) = measure_and_predict(cfg, Slicing::None);
    let model = tiny_model();
    let pl = Pipeline::new(
        &model,
        cfg,
        None,
        &OptimConfig::default(),
        5,
        DType::F32,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(splits_backward(&pl.schedule));
    for (m, p) in measured.iter().zip(&predicted) {
        assert!(
            *m as f64 <= *p,
            "measured {measured:?} vs predicted {predicted:?}"
        );
    }
}
