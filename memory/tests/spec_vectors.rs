//! SPEC §5 reproduced: per-token bytes, the 24.60 GiB and 40.00 GiB vectors, the in-flight counts
//! and peak formulas in micro-batch units, bubble ratios, per-stage model states and the `k` criterion.

use seqpipe_memory::*;
use seqpipe_slicing::{preset, ModelShape};

fn llama70b() -> ModelShape {
    preset("llama-70b").unwrap()
}

fn config(
    kind: PipelineKind,
    p: u64,
    m: u64,
    s: u64,
    tc: u64,
    policy: RecomputePolicy,
) -> StaticConfig {
    let parallel = Parallelism::new(tc, 1, 1).unwrap();
    StaticConfig {
        activation: ActivationModel::new(llama70b(), parallel)
            .unwrap()
            .with_recompute(policy),
        states: StateOptions::default(),
        kind,
        stages: p,
        microbatches: m,
        seq_len: s,
        offload_fraction: 0.0,
    }
}

#[test]
fn per_token_bytes_follow_the_slimpipe_estimator() {
    let shape = llama70b();
    for (t, c) in [(1, 1), (8, 1), (4, 2), (2, 4)] {
        let act = ActivationModel::new(shape, Parallelism::new(t, c, 1).unwrap()).unwrap();
        let (h, hkv, d, f) = (8192.0, 8.0, 128.0, 28672.0);
        let expected = 2.0 * (6.0 * h + 2.0 * hkv * d + 3.0 * f) / (t * c) as f64;
        assert_eq!(act.bytes_per_token_layer(), expected);
        let full = act.with_recompute(RecomputePolicy::Full);
        assert_eq!(full.bytes_per_token_layer(), 2.0 * h / (t * c) as f64);
        let sel = act.with_recompute(RecomputePolicy::Selective);
        assert!(sel.bytes_per_token_layer() < act.bytes_per_token_layer());
        assert!(sel.bytes_per_token_layer() > full.bytes_per_token_layer());
    }
    let act = ActivationModel::new(shape, Parallelism::new(1, 1, 1).unwrap()).unwrap();
    let names: Vec<_> = act.tensors().iter().map(|t| t.name).collect();
    assert_eq!(names.len(), 11, "{names:?}");
}

/// What a split backward keeps from `I` to `W`: each matrix's input and output gradient, shared
/// inputs once: `4H + 2·q + 2·kv + 3F` elements (bf16: 2 bytes), divided by `t·c` like the rest.
#[test]
fn weight_gradient_inputs_are_each_matrix_input_and_output_gradient() {
    let (h, q, kv, f) = (8192.0, 8192.0, 8.0 * 128.0, 28672.0);
    for (t, c) in [(1, 1), (8, 1), (2, 4)] {
        let act = ActivationModel::new(llama70b(), Parallelism::new(t, c, 1).unwrap()).unwrap();
        let expected = 2.0 * (4.0 * h + 2.0 * q + 2.0 * kv + 3.0 * f) / (t * c) as f64;
        assert_eq!(act.weight_grad_input_bytes_per_token_layer(), expected);
        assert_eq!(act.weight_grad_inputs().len(), 11);
    }
}

#[test]
fn slimpipe_llama70b_64k_is_24_60_gib() {
    let kind = PipelineKind::SlimPipe {
        slices: 8,
        chunks: 10,
    };
    let cfg = config(kind, 8, 16, 64 * 1024, 8, RecomputePolicy::None);
    let peaks = cfg.peaks().unwrap();
    assert_eq!(peaks[0].in_flight_units, 94);
    assert_eq!(cfg.slice_tokens(), 8192);
    let gib = peaks[0].activations / GIB;
    assert_eq!(format!("{gib:.2}"), "24.60");
    assert_eq!(peaks[0].activations, 94.0 * 8192.0 * 34304.0);
    // Later stages hold fewer units: 2 fewer per stage.
    for (r, peak) in peaks.iter().enumerate() {
        assert_eq!(peak.in_flight_units, 94 - 2 * r as u64);
    }
}

#[test]
fn one_f1b_full_recompute_256k_is_40_gib_for_any_p() {
    for p in [1, 2, 4, 5, 8, 10, 16, 20, 40, 80] {
        let cfg = config(
            PipelineKind::OneF1B,
            p,
            2 * p,
            256 * 1024,
            8,
            RecomputePolicy::Full,
        );
        let peaks = cfg.peaks().unwrap();
        assert_eq!(peaks[0].activations, 40.0 * GIB, "p = {p}");
        assert_eq!(peaks[0].kv_prefix, 0.0);
    }
}

#[test]
fn peak_in_microbatch_units_matches_spec_formulas() {
    for p in [1u64, 2, 4, 8] {
        for v in [1u64, 2, 5] {
            for n in [p.max(1), 2 * p, 8] {
                let m = 64;
                let pf = p as f64;
                let (vf, nf) = (v as f64, n as f64);
                let check = |kind: PipelineKind, expected: f64| {
                    let got = kind.peak_microbatches(p, 0, m).unwrap();
                    assert!(
                        (got - expected).abs() < 1e-12,
                        "{kind} p={p}: {got} vs {expected}"
                    );
                };
                check(PipelineKind::OneF1B, pf);
                check(
                    PipelineKind::Interleaved { chunks: v },
                    pf + (pf - 1.0) / vf,
                );
                check(PipelineKind::Seq1F1B { slices: n }, (pf + nf - 1.0) / nf);
                check(
                    PipelineKind::SlimPipe {
                        slices: n,
                        chunks: v,
                    },
                    1.0 + 2.0 * (pf - 1.0) / (nf * vf),
                );
            }
        }
    }
}

#[test]
fn seq1f1b_first_stage_in_flight_and_bubbles() {
    // SPEC §3: p = 4, m = 8, n = 1/2/4/8 → 27.27 / 15.79 / 8.57 / 4.48 %, in flight 4/5/7/11.
    let expected = [(1, 27.27, 4), (2, 15.79, 5), (4, 8.57, 7), (8, 4.48, 11)];
    for (n, bubble, in_flight) in expected {
        let kind = PipelineKind::Seq1F1B { slices: n };
        let b = kind.bubble_ratio(4, 8).unwrap() * 100.0;
        assert_eq!(format!("{b:.2}"), format!("{bubble:.2}"));
        assert_eq!(kind.in_flight_units(4, 0, 8).unwrap(), in_flight);
    }
    let slim = PipelineKind::SlimPipe {
        slices: 8,
        chunks: 10,
    };
    assert_eq!(
        format!("{:.2}", 100.0 * slim.bubble_ratio(8, 16).unwrap()),
        "0.54"
    );
    let inter = PipelineKind::Interleaved { chunks: 5 };
    assert_eq!(
        format!("{:.2}", 100.0 * inter.bubble_ratio(16, 16).unwrap()),
        "15.79"
    );
    // ZB-H1's bubble *time* is a third of 1F1B's (SPEC: "B/3"); as a ratio of the step it is
    // (p−1)/(3m+p−1), which the simulation of the generated schedule confirms (one_truth.rs).
    let zb = PipelineKind::ZbH1.bubble_ratio(4, 8).unwrap();
    assert_eq!(zb, 3.0 / 27.0);
    let one_f_one_b_idle_time = 3.0 * (4.0 - 1.0);
    assert!((zb / (1.0 - zb) * 24.0 - one_f_one_b_idle_time / 3.0).abs() < 1e-12);
}

#[test]
fn gis_device0_peak_is_d_plus_v_minus_1_g() {
    for d in [4u64, 8, 16] {
        let kind = PipelineKind::Gis {
            chunks: 2,
            group: 4,
        };
        assert_eq!(kind.in_flight_units(d, 0, 64).unwrap(), d + 4);
        let inter = PipelineKind::Interleaved { chunks: 2 };
        assert_eq!(inter.in_flight_units(d, 0, 64).unwrap(), d * 2 + d - 1);
    }
}

#[test]
fn model_states_are_per_stage_and_sum_to_the_model() {
    let shape = llama70b();
    let layout = StageLayout::new(8, 1).unwrap();
    let parallel = Parallelism::new(8, 1, 4).unwrap();
    let options = StateOptions::default();
    let states = model_states(&shape, &layout, &parallel, &options).unwrap();
    let total: f64 = states.iter().map(|s| s.parameters).sum();
    assert_eq!(total * 8.0, shape.parameters() as f64);
    let table = (shape.vocab * shape.hidden) as f64 / 8.0;
    assert_eq!(states[0].parameters - states[1].parameters, table);
    assert_eq!(
        states[7].parameters - states[1].parameters,
        table + 8192.0 / 8.0
    );
    // SPEC §5: params+grads = P/(t·p)·6 B, optimizer = P/(t·p)·12 B/(d·c), per stage.
    let mid = &states[3];
    let per_gpu = 10.0 * shape.layer_parameters() as f64 / 8.0;
    assert_eq!(mid.weights + mid.grads, per_gpu * 6.0);
    assert_eq!(mid.optimizer, per_gpu * 12.0 / 4.0);
    // Vocab sharding spreads embedding and head evenly.
    let sharded = StateOptions {
        vocab: LogitsPlacement::VocabSharded,
        ..options
    };
    let s = model_states(&shape, &layout, &parallel, &sharded).unwrap();
    assert_eq!(s[0].parameters, s[3].parameters);
    let without = StateOptions {
        distributed_optimizer: false,
        ..options
    };
    let w = model_states(&shape, &layout, &parallel, &without).unwrap();
    assert_eq!(w[3].optimizer, per_gpu * 12.0);
}

#[test]
fn logits_sit_on_the_last_stage_unless_vocab_sharded() {
    let kind = PipelineKind::SlimPipe {
        slices: 8,
        chunks: 10,
    };
    let mut cfg = config(kind, 8, 16, 64 * 1024, 8, RecomputePolicy::None);
    let peaks = cfg.peaks().unwrap();
    // All 8 slices of a sequence's last chunk can be alive on the last stage.
    let expected = 8.0 * 8192.0 * 32000.0 * 4.0 / 8.0;
    assert_eq!(peaks[7].logits, expected);
    assert!(peaks[..7].iter().all(|p| p.logits == 0.0));
    cfg.activation.logits = LogitsPlacement::VocabSharded;
    let peaks = cfg.peaks().unwrap();
    assert!(peaks.iter().all(|p| p.logits == expected / 8.0));
    // dK/dV accumulator: one per chunk at the last slice's prefix (7 slices of 8192 tokens).
    let per_layer = 2.0 * 1024.0 * 7.0 * 8192.0 * 2.0 / 8.0;
    assert_eq!(peaks[0].dkv_accumulator, per_layer * 10.0);
}

#[test]
fn sliced_full_recompute_keeps_kv_for_later_slices() {
    let kind = PipelineKind::Seq1F1B { slices: 4 };
    let cfg = config(kind, 4, 8, 16384, 1, RecomputePolicy::Full);
    let peak = cfg.peaks().unwrap()[0];
    let per_unit = 2.0 * 1024.0 * 4096.0 * 2.0 * 20.0;
    assert_eq!(peak.kv_prefix, per_unit * peak.in_flight_units as f64);
    let unsliced = config(PipelineKind::OneF1B, 4, 8, 16384, 1, RecomputePolicy::Full);
    assert_eq!(unsliced.peaks().unwrap()[0].kv_prefix, 0.0);
}

#[test]
fn materialized_attention_adds_a_score_matrix() {
    let shape = llama70b();
    let mut act = ActivationModel::new(shape, Parallelism::new(1, 1, 1).unwrap()).unwrap();
    assert_eq!(act.attention_score_bytes_per_layer(100, 50), 0.0);
    act.attention = AttentionKind::Materialized;
    assert_eq!(
        act.attention_score_bytes_per_layer(100, 50),
        64.0 * 100.0 * 150.0 * 2.0
    );
    let sel = act.with_recompute(RecomputePolicy::Selective);
    assert_eq!(sel.attention_score_bytes_per_layer(100, 50), 0.0);
}

#[test]
fn offload_k_criterion() {
    let h100 = gpu_preset("H100").unwrap();
    let shape = llama70b();
    let k = h100.offload_k(&shape, 512 * 1024).unwrap();
    let expected = 10.0 / (3.0 * (6.0 * 8192.0 + 524288.0)) * 440e12 / 21e9;
    assert_eq!(k, expected);
    assert!(k < 1.0);
    // A small model at a short sequence cannot hide its transfers: 10/(3·13312)·220e12/15e9 ≈ 3.67.
    let small = preset("gpt-1.3b").unwrap();
    let short = gpu_preset("a100").unwrap().offload_k(&small, 1024).unwrap();
    assert!(short > 3.6 && short < 3.7, "{short}");
    let frac = gpu_preset("a100")
        .unwrap()
        .hidden_offload_fraction(&small, 1024)
        .unwrap();
    assert!((frac - 1.0 / short).abs() < 1e-15);
    let mut custom = h100;
    custom.host_link_bytes_per_s = 42e9;
    assert!((custom.offload_k(&shape, 512 * 1024).unwrap() - k / 2.0).abs() < 1e-15);
    assert!(matches!(
        gpu_preset("tpu"),
        Err(MemoryError::UnknownGpu { .. })
    ));
    assert_eq!(gpu_preset("h200").unwrap().memory_bytes, 141e9);
}

#[test]
fn bad_input_is_an_error_naming_the_value() {
    let kind = PipelineKind::SlimPipe {
        slices: 4,
        chunks: 2,
    };
    let err = config(kind, 8, 16, 65536, 8, RecomputePolicy::None)
        .peaks()
        .unwrap_err();
    assert!(err.to_string().contains("n = 4, p = 8"), "{err}");
    let err = config(PipelineKind::OneF1B, 3, 16, 65536, 8, RecomputePolicy::None)
        .peaks()
        .unwrap_err();
    assert!(
        err.to_string().contains("80 is not divisible by 3"),
        "{err}"
    );
    let mut cfg = config(PipelineKind::OneF1B, 4, 16, 65536, 8, RecomputePolicy::None);
    cfg.offload_fraction = 1.5;
    assert!(cfg.peaks().unwrap_err().to_string().contains("1.5"));
    assert!(Parallelism::new(0, 1, 1).is_err());
    assert!(PipelineKind::OneF1B.in_flight_units(4, 4, 8).is_err());
}
