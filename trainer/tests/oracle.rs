//! The runtime's correctness oracle: for every schedule kind × slicing × stage count × micro-batch
//! count, one pipelined iteration's loss and every parameter gradient equal single-device,
//! unsliced training (candle autograd over composite ops) on the same weights and data; and
//! several optimizer steps give the same parameters.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use candle_core::{DType, Device};
use common::{data, full_params, reference, slice_ranges, tiny_model, worst_rel_err, Slicing};
use seqpipe_schedule::{ScheduleConfig, ScheduleKind};
use seqpipe_trainer::data::RetrievalSource;
use seqpipe_trainer::optim::{clip_scale, sum_of_squares, AdamW, OptimConfig};
use seqpipe_trainer::runtime::{IterationInput, Pipeline, Weights};

const SEQ: usize = 16;
const BATCH: usize = 2;
const SEED: u64 = 11;

fn config(kind: ScheduleKind, p: u32, m: u32, n: u32) -> ScheduleConfig {
    let interleaved = matches!(
        kind,
        ScheduleKind::Interleaved
            | ScheduleKind::Seq1F1BInterleaved
            | ScheduleKind::SlimPipe
            | ScheduleKind::Gis
    );
    let mut c = ScheduleConfig::new(kind, p, m)
        .with_slices(n)
        .with_chunks(if interleaved { 2 } else { 1 });
    if kind == ScheduleKind::Gis {
        c = c.with_group(2);
    }
    c
}

fn input(
    model: &seqpipe_trainer::model::ModelConfig,
    m: usize,
    slicing: Slicing,
    n: usize,
    dtype: DType,
) -> IterationInput {
    let tokens = data(model, m, BATCH, SEQ, SEED);
    let _ = dtype;
    IterationInput {
        ragged: None,
        documents: None,
        tokens,
        masks: None,
        slices: slice_ranges(model, slicing, SEQ, n),
        normaliser: (m * BATCH * SEQ) as f64,
    }
}

/// Why SPEC §3 rules a configuration out (`None`: the SPEC allows it, so it must run). With
/// `v = 2` for the interleaved kinds, as [`config`] sets.
fn spec_refuses(kind: ScheduleKind, p: u32, m: u32, n: u32) -> Option<&'static str> {
    use ScheduleKind::*;
    match kind {
        OneFOneB | Interleaved | ZbH1 | Gis if n > 1 => {
            Some("1F1B, interleaved 1F1B, ZB-H1 and GIS schedule whole sequences (n = 1)")
        }
        Seq1F1BInterleaved if p % n != 0 => Some(
            "Seq1F1B-I groups p slices per chunk, and its warm-up holds a micro-batch's n·v \
             forwards only for n ≤ p: n must divide p",
        ),
        Seq1F1BInterleaved if (m * n) % p != 0 => Some("Seq1F1B-I needs full groups: p | m·n"),
        SlimPipe if n < p && p > 1 => Some("interleaved SlimPipe needs n ≥ p"),
        _ => None,
    }
}

#[test]
fn every_schedule_and_slicing_matches_single_device_f64() {
    let model = tiny_model();
    let params = full_params(&model, SEED, DType::F64);
    let mut references = BTreeMap::new();
    let mut ran: BTreeMap<&str, usize> = BTreeMap::new();
    let mut skipped = Vec::new();
    for kind in ScheduleKind::ALL {
        for p in [1u32, 2, 4] {
            for m in [4u32, 8] {
                for (slicing, n) in [
                    (Slicing::None, 1u32),
                    (Slicing::Uniform, 4),
                    (Slicing::Balanced, 4),
                    (Slicing::Uniform, 2),
                ] {
                    let cfg = config(kind, p, m, n);
                    let pipeline = Pipeline::new(
                        &model,
                        cfg,
                        None,
                        &OptimConfig::default(),
                        SEED,
                        DType::F64,
                        Duration::from_secs(30),
                    );
                    let what = format!("{kind:?} p={p} m={m} n={n}");
                    let mut pipeline = match (pipeline, spec_refuses(kind, p, m, n)) {
                        (Ok(pl), None) => pl,
                        (Err(e), Some(rule)) => {
                            skipped.push(format!("{what}: {e:#} [SPEC: {rule}]"));
                            continue;
                        }
                        (Err(e), None) => {
                            panic!("{what} is allowed by the SPEC but was refused: {e:#}")
                        }
                        (Ok(_), Some(rule)) => {
                            panic!("{what} ran, but the SPEC rules it out: {rule}")
                        }
                    };
                    let inp = input(&model, m as usize, slicing, n as usize, DType::F64);
                    let (reports, _) = pipeline.run_iteration(&inp).unwrap_or_else(|e| {
                        panic!("{kind:?} p={p} m={m} {slicing:?} n={n}: {e:#}")
                    });
                    let loss: f64 = reports.iter().map(|r| r.loss).sum();
                    let (ref_loss, ref_grads) = references
                        .entry(m)
                        .or_insert_with(|| reference::loss_and_grads(&model, &params, &inp.tokens))
                        .clone();
                    let what = format!("{kind:?} p={p} m={m} {slicing:?} n={n}");
                    assert!(
                        (loss - ref_loss).abs() <= 1e-10 * ref_loss.abs(),
                        "{what}: loss {loss} vs reference {ref_loss}"
                    );
                    let (err, name) = worst_rel_err(&pipeline.gradients().unwrap(), &ref_grads);
                    assert!(
                        err <= 1e-10,
                        "{what}: gradient of {name} differs by {err:e} (relative)"
                    );
                    *ran.entry(kind.name()).or_default() += 1;
                }
            }
        }
    }
    eprintln!(
        "configurations run per kind: {ran:?}\nskipped ({}):\n{}",
        skipped.len(),
        skipped.join("\n")
    );
    // Every kind must have run on several pipeline depths, sliced where it slices.
    for kind in ScheduleKind::ALL {
        let count = ran.get(kind.name()).copied().unwrap_or(0);
        assert!(
            count >= 3,
            "{} ran only {count} configurations; skipped:\n{}",
            kind.name(),
            skipped.join("\n")
        );
    }
    for kind in [
        ScheduleKind::Seq1F1B,
        ScheduleKind::SlimPipe,
        ScheduleKind::Seq1F1BInterleaved,
    ] {
        assert!(
            ran[kind.name()] >= 6,
            "{} must run sliced configurations; skipped:\n{}",
            kind.name(),
            skipped.join("\n")
        );
    }
}

#[test]
fn f32_pipelines_match_single_device_f32() {
    let model = tiny_model();
    let params = full_params(&model, SEED, DType::F32);
    let inp = input(&model, 4, Slicing::Balanced, 4, DType::F32);
    let (ref_loss, ref_grads) = reference::loss_and_grads(&model, &params, &inp.tokens);
    for kind in [
        ScheduleKind::Seq1F1B,
        ScheduleKind::SlimPipe,
        ScheduleKind::ZbH1,
    ] {
        let n = if kind == ScheduleKind::ZbH1 { 1 } else { 4 };
        let inp = input(
            &model,
            4,
            if n == 1 {
                Slicing::None
            } else {
                Slicing::Balanced
            },
            n,
            DType::F32,
        );
        let mut pl = Pipeline::new(
            &model,
            config(kind, 2, 4, n as u32),
            None,
            &OptimConfig::default(),
            SEED,
            DType::F32,
            Duration::from_secs(30),
        )
        .unwrap();
        let (reports, _) = pl.run_iteration(&inp).unwrap();
        let loss: f64 = reports.iter().map(|r| r.loss).sum();
        assert!(
            (loss - ref_loss).abs() <= 1e-5 * ref_loss,
            "{kind:?}: {loss} vs {ref_loss}"
        );
        let (err, name) = worst_rel_err(&pl.gradients().unwrap(), &ref_grads);
        assert!(err <= 1e-5, "{kind:?}: {name} differs by {err:e}");
    }
}

#[test]
fn biased_models_match_single_device_f64() {
    // Biases on all seven projections, set away from their zero start so the forward uses them;
    // ZB-H1 defers their gradients to the weight half, SlimPipe slices and interleaves.
    let model = seqpipe_trainer::model::ModelConfig {
        attention_bias: true,
        mlp_bias: true,
        ..tiny_model()
    };
    let mut params = full_params(&model, SEED, DType::F64);
    for (name, t) in params.iter_mut().filter(|(n, _)| n.ends_with(".bias")) {
        *t = t.rand_like(-0.2, 0.2).unwrap();
        assert!(name.contains("_proj"));
    }
    let tokens = data(&model, 4, BATCH, SEQ, SEED);
    let (ref_loss, ref_grads) = reference::loss_and_grads(&model, &params, &tokens);
    for (kind, slicing, n) in [
        (ScheduleKind::ZbH1, Slicing::None, 1),
        (ScheduleKind::SlimPipe, Slicing::Uniform, 4),
    ] {
        let inp = input(&model, 4, slicing, n, DType::F64);
        let mut pl = Pipeline::with_weights(
            &model,
            config(kind, 2, 4, n as u32),
            None,
            &OptimConfig::default(),
            Weights::Loaded(&params),
            DType::F64,
            Duration::from_secs(30),
        )
        .unwrap();
        let (reports, _) = pl.run_iteration(&inp).unwrap();
        let loss: f64 = reports.iter().map(|r| r.loss).sum();
        assert!(
            (loss - ref_loss).abs() <= 1e-10 * ref_loss,
            "{kind:?}: {loss} vs {ref_loss}"
        );
        let grads = pl.gradients().unwrap();
        assert_eq!(
            grads.keys().filter(|n| n.ends_with(".bias")).count(),
            7 * model.layers
        );
        let (err, name) = worst_rel_err(&grads, &ref_grads);
        assert!(err <= 1e-10, "{kind:?}: {name} differs by {err:e}");
    }
}

#[test]
fn several_optimizer_steps_give_the_same_parameters() {
    let model = tiny_model();
    let optim = OptimConfig {
        lr: 1e-2,
        warmup_steps: 1,
        clip_norm: Some(0.5),
        ..OptimConfig::default()
    };
    let mut reference_params = full_params(&model, SEED, DType::F64);
    let mut reference_opt = AdamW::new(optim.clone(), &reference_params).unwrap();
    let cfg = config(ScheduleKind::SlimPipe, 2, 4, 4);
    let mut pl = Pipeline::new(
        &model,
        cfg,
        None,
        &optim,
        SEED,
        DType::F64,
        Duration::from_secs(30),
    )
    .unwrap();
    for step in 0..3u64 {
        let mut inp = input(&model, 4, Slicing::Uniform, 4, DType::F64);
        inp.tokens = data(&model, 4, BATCH, SEQ, SEED + step);
        let lr = optim.lr_at(step, 3);
        let report = pl.step(&inp, lr).unwrap();
        let (ref_loss, grads) = reference::loss_and_grads(&model, &reference_params, &inp.tokens);
        assert!(
            (report.loss - ref_loss).abs() <= 1e-10 * ref_loss,
            "step {step}"
        );
        let scale = clip_scale(sum_of_squares(&grads).unwrap(), optim.clip_norm);
        reference_opt
            .step(&mut reference_params, &grads, lr, scale)
            .unwrap();
    }
    let (err, name) = worst_rel_err(&pl.parameters().unwrap(), &reference_params);
    assert!(err <= 1e-10, "after 3 steps {name} differs by {err:e}");
}

#[test]
fn masked_losses_match_single_device_f64() {
    // The retrieval task scores only its answers: loss and gradients of the masked mean must
    // match the reference for unsliced, sliced and interleaved schedules alike.
    let model = tiny_model();
    let params = full_params(&model, SEED, DType::F64);
    let (tokens, masks) = RetrievalSource::new(model.vocab, SEED)
        .unwrap()
        .batch(4, BATCH, SEQ, &Device::Cpu)
        .unwrap();
    let scored: f64 = masks
        .iter()
        .map(|m| m.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
        .sum();
    assert!(scored > 0.0 && scored < (4 * BATCH * SEQ) as f64);
    let (ref_loss, ref_grads) =
        reference::loss_and_grads_masked(&model, &params, &tokens, Some(&masks));
    for (kind, slicing, n) in [
        (ScheduleKind::OneFOneB, Slicing::None, 1u32),
        (ScheduleKind::Seq1F1B, Slicing::Balanced, 4),
        (ScheduleKind::SlimPipe, Slicing::Uniform, 4),
        (ScheduleKind::ZbH1, Slicing::None, 1),
    ] {
        let inp = IterationInput {
            ragged: None,
            documents: None,
            tokens: tokens.clone(),
            masks: Some(masks.clone()),
            slices: slice_ranges(&model, slicing, SEQ, n as usize),
            normaliser: scored,
        };
        let mut pl = Pipeline::new(
            &model,
            config(kind, 2, 4, n),
            None,
            &OptimConfig::default(),
            SEED,
            DType::F64,
            Duration::from_secs(30),
        )
        .unwrap();
        let (reports, _) = pl.run_iteration(&inp).unwrap();
        let loss: f64 = reports.iter().map(|r| r.loss).sum();
        assert!(
            (loss - ref_loss).abs() <= 1e-10 * ref_loss,
            "{kind:?}: {loss} vs {ref_loss}"
        );
        let (err, name) = worst_rel_err(&pl.gradients().unwrap(), &ref_grads);
        assert!(err <= 1e-10, "{kind:?}: {name} differs by {err:e}");
        let answered: usize = reports.iter().map(|r| r.answers.scored).sum();
        assert_eq!(
            answered as f64, scored,
            "{kind:?}: every answer is scored once"
        );
    }
}
