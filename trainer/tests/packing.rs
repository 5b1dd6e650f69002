//! Masked packing's oracle: rows that pack several documents (each masked from the others, its
//! RoPE positions from 0, the target after each EOS unscored) give the loss and every gradient
//! of single-device training where each document piece is its own causal sequence (f64, 1e-10),
//! for 1F1B, Seq1F1B and SlimPipe on p ∈ {1, 2, 4}, with and without recomputation, on document
//! mixes with one document longer than all the others together, many tiny ones and empty ones.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::{
    full_params, pipeline_of, reference, slice_ranges, tiny_model, worst_rel_err, Slicing,
};
use seqpipe_schedule::{ExchangePolicy, Op, ScheduleConfig, ScheduleKind};
use seqpipe_trainer::config::{SlicingMethod, TrainConfig};
use seqpipe_trainer::data::packing::pack_masked;
use seqpipe_trainer::model::ModelConfig;
use seqpipe_trainer::runtime::offload::Offload;
use seqpipe_trainer::runtime::rank_loop::plan;
use seqpipe_trainer::runtime::{IterationInput, Pipeline};

const SEQ: usize = 24;
const BATCH: usize = 2;
const MICROBATCHES: usize = 4;
const SEED: u64 = 5;

/// SplitMix64: the test's own document lengths and tokens.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The end-of-document token: the vocabulary's last id.
fn eos(model: &ModelConfig) -> u32 {
    model.vocab as u32 - 1
}

/// Documents of the given lengths (EOS included: length 1 is an empty document), back to back.
fn corpus(model: &ModelConfig, lengths: &[usize], rng: &mut Rng) -> Vec<u32> {
    let mut out = Vec::new();
    for &len in lengths {
        out.extend((1..len).map(|_| rng.below(eos(model) as u64) as u32));
        out.push(eos(model));
    }
    out
}

/// Lengths for `total` tokens: one document longer than the rest together, then tiny and empty
/// ones.
fn one_giant_and_crumbs(total: usize, rng: &mut Rng) -> Vec<usize> {
    let mut lengths = vec![total * 3 / 5];
    while lengths.iter().sum::<usize>() < total {
        lengths.push(1 + rng.below(4) as usize);
    }
    lengths
}

/// Lengths for `total` tokens from a long-tailed mix (1 to 60 tokens, short ones most often).
fn long_tailed(total: usize, rng: &mut Rng) -> Vec<usize> {
    let mut lengths = Vec::new();
    while lengths.iter().sum::<usize>() < total {
        let scale = [3, 8, 20, 60][rng.below(4) as usize];
        lengths.push(1 + rng.below(scale) as usize);
    }
    lengths
}

/// Consecutive windows of `SEQ + 1` tokens of `stream`, as micro-batches of packed rows.
fn packed_input(model: &ModelConfig, stream: &[u32], slices: Slicing, n: usize) -> IterationInput {
    let window = SEQ + 1;
    assert!(stream.len() >= MICROBATCHES * BATCH * window);
    let tokens: Vec<Tensor> = (0..MICROBATCHES)
        .map(|mb| {
            let at = mb * BATCH * window;
            let rows = stream[at..at + BATCH * window].to_vec();
            Tensor::from_vec(rows, (BATCH, window), &Device::Cpu).unwrap()
        })
        .collect();
    let packed: Vec<_> = tokens
        .iter()
        .map(|t| pack_masked(t, eos(model)).unwrap())
        .collect();
    let masks: Vec<Tensor> = packed.iter().map(|p| p.mask.clone()).collect();
    let normaliser = masks
        .iter()
        .map(|m| m.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
        .sum();
    IterationInput {
        tokens,
        slices: slice_ranges(model, slices, SEQ, n),
        ragged: None,
        masks: Some(masks),
        documents: Some(packed.into_iter().map(|p| p.documents).collect()),
        normaliser,
    }
}

/// The oracle's sequences: every row cut after each EOS among its inputs, each piece alone
/// (pieces of one token have no target and are left out).
fn pieces(model: &ModelConfig, rows: &[Tensor]) -> Vec<Tensor> {
    let mut out = Vec::new();
    for t in rows {
        for row in t.to_vec2::<u32>().unwrap() {
            let (last, mut start) = (row.len() - 1, 0);
            for i in 0..=last {
                if i == last || row[i] == eos(model) {
                    if i > start {
                        let piece = row[start..=i].to_vec();
                        out.push(
                            Tensor::from_vec(piece, (1, i + 1 - start), &Device::Cpu).unwrap(),
                        );
                    }
                    start = i + 1;
                }
            }
        }
    }
    out
}

fn configs(p: u32) -> Vec<(ScheduleConfig, Slicing, usize)> {
    let m = MICROBATCHES as u32;
    vec![
        (
            ScheduleConfig::new(ScheduleKind::OneFOneB, p, m),
            Slicing::None,
            1,
        ),
        (
            ScheduleConfig::new(ScheduleKind::Seq1F1B, p, m).with_slices(4),
            Slicing::Balanced,
            4,
        ),
        (
            ScheduleConfig::new(ScheduleKind::SlimPipe, p, m)
                .with_slices(4)
                .with_chunks(2),
            Slicing::Uniform,
            4,
        ),
    ]
}

#[test]
fn masked_packing_equals_each_document_alone_f64() {
    let model = tiny_model();
    let params = full_params(&model, SEED, DType::F64);
    let total = MICROBATCHES * BATCH * (SEQ + 1);
    let mut rng = Rng(SEED);
    let mixes = [
        (
            "one giant and crumbs",
            one_giant_and_crumbs(total, &mut rng),
        ),
        ("long-tailed", long_tailed(total, &mut rng)),
    ];
    let mut runs = 0;
    for (mix, lengths) in &mixes {
        let stream = corpus(&model, lengths, &mut rng);
        for p in [1u32, 2, 4] {
            for (cfg, slicing, n) in configs(p) {
                let inp = packed_input(&model, &stream, slicing, n);
                let docs: usize = inp
                    .documents
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|d| d.count())
                    .sum();
                assert!(
                    docs > MICROBATCHES * BATCH,
                    "{mix}: rows pack several documents"
                );
                let seqs = pieces(&model, &inp.tokens);
                let (ref_loss, ref_grads) = reference::loss_and_grads(&model, &params, &seqs);
                for recompute in ["none", "full", "selective"] {
                    let what = format!("{mix}: {:?} p={p} n={n} recompute {recompute}", cfg.kind);
                    let mut pl = pipeline_of(&model, cfg, DType::F64, SEED);
                    pl.set_recompute(recompute.parse().unwrap()).unwrap();
                    assert_equals(&mut pl, &inp, (ref_loss, &ref_grads), &what);
                    runs += 1;
                }
            }
        }
    }
    assert_eq!(runs, 2 * 3 * 3 * 3);
}

/// One iteration of `pl` on `inp` gives `reference`'s loss and gradients (f64, 1e-10).
fn assert_equals(
    pl: &mut Pipeline,
    inp: &IterationInput,
    (ref_loss, ref_grads): (f64, &BTreeMap<String, Tensor>),
    what: &str,
) {
    let (reports, _) = pl
        .run_iteration(inp)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let loss: f64 = reports.iter().map(|r| r.loss).sum();
    assert!(
        (loss - ref_loss).abs() <= 1e-10 * ref_loss.abs(),
        "{what}: loss {loss} vs each document alone {ref_loss}"
    );
    let (err, name) = worst_rel_err(&pl.gradients().unwrap(), ref_grads);
    assert!(err <= 1e-10, "{what}: gradient of {name} off by {err:e}");
}

/// One iteration of `pl` on `inp` against each document alone (f64, 1e-10).
fn assert_each_document_alone(pl: &mut Pipeline, inp: &IterationInput, what: &str) {
    let model = tiny_model();
    let params = full_params(&model, SEED, DType::F64);
    let (loss, grads) = reference::loss_and_grads(&model, &params, &pieces(&model, &inp.tokens));
    assert_equals(pl, inp, (loss, &grads), what);
}

#[test]
fn packed_documents_survive_offload_the_vocabulary_parallel_head_and_the_bw_split() {
    let model = tiny_model();
    let mut rng = Rng(SEED + 4);
    let total = MICROBATCHES * BATCH * (SEQ + 1);
    let stream = corpus(&model, &one_giant_and_crumbs(total, &mut rng), &mut rng);
    let m = MICROBATCHES as u32;

    let zb = ScheduleConfig::new(ScheduleKind::ZbH1, 2, m);
    let inp = packed_input(&model, &stream, Slicing::None, 1);
    assert_each_document_alone(
        &mut pipeline_of(&model, zb, DType::F64, SEED),
        &inp,
        "ZB-H1",
    );

    let slim = ScheduleConfig::new(ScheduleKind::SlimPipe, 2, m)
        .with_slices(4)
        .with_chunks(2);
    let inp = packed_input(&model, &stream, Slicing::Uniform, 4);
    let mut pl = pipeline_of(&model, slim, DType::F64, SEED);
    pl.set_vocab_parallel().unwrap();
    assert_each_document_alone(&mut pl, &inp, "SlimPipe, vocabulary-parallel head");

    let seq = ScheduleConfig::new(ScheduleKind::Seq1F1B, 2, m).with_slices(4);
    let mut cfg = TrainConfig {
        model: model.clone(),
        ..TrainConfig::default()
    };
    cfg.data.seq_len = SEQ;
    let par = &mut cfg.parallel;
    (par.stages, par.microbatches, par.slices, par.chunks) = (2, m, 4, 1);
    par.schedule = seq.kind.name().into();
    par.slicing = SlicingMethod::Uniform;
    par.offload = Offload::Fraction(1.0);
    let (schedule, _) = plan(&cfg).unwrap();
    let mut pl = pipeline_of(&model, seq, DType::F64, SEED);
    pl.set_schedule(schedule).unwrap();
    let offloads = pl
        .schedule
        .actions
        .iter()
        .flatten()
        .filter(|a| a.op == Op::Offload)
        .count();
    assert!(offloads > 0, "the plan offloads");
    assert_each_document_alone(&mut pl, &inp, "Seq1F1B, every activation offloaded");
}

#[test]
fn packing_without_masks_is_a_different_model_of_the_same_rows() {
    // The check that the oracle can fail: the same rows trained plainly (attending across
    // documents, positions running on) do not give each document's own loss.
    let model = tiny_model();
    let params = full_params(&model, SEED, DType::F64);
    let mut rng = Rng(SEED + 1);
    let total = MICROBATCHES * BATCH * (SEQ + 1);
    let stream = corpus(&model, &long_tailed(total, &mut rng), &mut rng);
    let mut inp = packed_input(&model, &stream, Slicing::None, 1);
    let seqs = pieces(&model, &inp.tokens);
    let (ref_loss, _) = reference::loss_and_grads(&model, &params, &seqs);
    inp.documents = None;
    let cfg = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, MICROBATCHES as u32);
    let mut pl = pipeline_of(&model, cfg, DType::F64, SEED);
    let (reports, _) = pl.run_iteration(&inp).unwrap();
    let loss: f64 = reports.iter().map(|r| r.loss).sum();
    assert!(
        (loss - ref_loss).abs() > 1e-6 * ref_loss.abs(),
        "cross-document attention changed nothing: {loss} vs {ref_loss}"
    );
}

#[test]
fn the_attention_exchange_over_packed_documents_is_refused_by_name() {
    let model = tiny_model();
    let mut rng = Rng(SEED + 2);
    let total = MICROBATCHES * BATCH * (SEQ + 1);
    let stream = corpus(&model, &long_tailed(total, &mut rng), &mut rng);
    let inp = packed_input(&model, &stream, Slicing::Uniform, 4);
    let cfg = ScheduleConfig::new(ScheduleKind::SlimPipe, 2, MICROBATCHES as u32)
        .with_slices(4)
        .with_chunks(2);
    let mut pl = pipeline_of(&model, cfg, DType::F64, SEED);
    pl.set_exchange(&inp.slices, ExchangePolicy::Level).unwrap();
    let e = pl.run_iteration(&inp).unwrap_err().to_string();
    assert!(e.contains("exchange") && e.contains("masked"), "{e}");
}

#[test]
fn a_layout_that_does_not_fit_the_data_is_refused() {
    let model = tiny_model();
    let mut rng = Rng(SEED + 3);
    let total = MICROBATCHES * BATCH * (SEQ + 1);
    let stream = corpus(&model, &long_tailed(total, &mut rng), &mut rng);
    let mut inp = packed_input(&model, &stream, Slicing::None, 1);
    let one_row = seqpipe_kernels::Documents::whole(1, SEQ).unwrap();
    inp.documents.as_mut().unwrap()[2] = Arc::new(one_row);
    let cfg = ScheduleConfig::new(ScheduleKind::OneFOneB, 2, MICROBATCHES as u32);
    let e = pipeline_of(&model, cfg, DType::F64, SEED)
        .run_iteration(&inp)
        .unwrap_err()
        .to_string();
    assert!(e.contains("micro-batch 2") && e.contains("1 rows"), "{e}");
}
