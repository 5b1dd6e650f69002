//! Bad shapes, dtypes and parameters come back as errors that name the shapes, never panics.

use candle_core::{DType, Device, Tensor};
use seqpipe_kernels::*;

fn t(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::ones(shape, dtype, &Device::Cpu).unwrap()
}

fn f32t(shape: &[usize]) -> Tensor {
    t(shape, DType::F32)
}

/// The error's message contains every one of `parts`.
#[track_caller]
fn says<T: std::fmt::Debug>(r: Result<T>, parts: &[&str]) -> KernelError {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not mention {p:?}");
    }
    e
}

#[test]
fn attention_rejects_mismatched_heads() {
    let opts = AttentionOptions::causal(8);
    let e = says(
        attention_forward(
            &f32t(&[1, 3, 4, 8]),
            &f32t(&[1, 2, 4, 8]),
            &f32t(&[1, 2, 4, 8]),
            &opts,
        ),
        &["[1, 3, 4, 8]", "[1, 2, 4, 8]", "multiple"],
    );
    assert!(matches!(
        e,
        KernelError::Heads {
            q_heads: 3,
            kv_heads: 2,
            ..
        }
    ));
}

#[test]
fn attention_rejects_a_prefix_shorter_than_the_slice() {
    let (q, kv) = (f32t(&[1, 2, 5, 4]), f32t(&[1, 2, 3, 4]));
    let e = says(
        attention_forward(&q, &kv, &kv, &AttentionOptions::causal(4)),
        &["[1, 2, 5, 4]", "[1, 2, 3, 4]", "5 tokens", "3"],
    );
    assert!(matches!(
        e,
        KernelError::PrefixShorterThanSlice {
            q_len: 5,
            kv_len: 3,
            ..
        }
    ));
    // Without a mask any number of keys is fine (SlimPipe's exchanged prefix).
    assert!(attention_forward(&q, &kv, &kv, &AttentionOptions::full(4)).is_ok());
}

#[test]
fn attention_rejects_wrong_dtypes_ranks_and_options() {
    let opts = AttentionOptions::causal(4);
    let q = f32t(&[1, 2, 3, 4]);
    says(
        attention_forward(&q, &t(&[1, 2, 3, 4], DType::F64), &q, &opts),
        &["`k`", "F64", "F32"],
    );
    let u = t(&[1, 2, 3, 4], DType::U32);
    says(
        attention_forward(&u, &u, &u, &opts),
        &["`q`", "U32", "f32, bf16 or f64"],
    );
    says(
        attention_forward(&f32t(&[2, 3, 4]), &q, &q, &opts),
        &["rank 4", "[2, 3, 4]"],
    );
    says(
        attention_forward(&q, &f32t(&[1, 2, 3, 5]), &f32t(&[1, 2, 3, 5]), &opts),
        &["[1, 2, 3, 4]", "[1, 2, 3, 5]", "head dim"],
    );
    says(
        attention_forward(&q, &q, &f32t(&[1, 2, 2, 4]), &opts),
        &["`v` [1, 2, 2, 4]"],
    );
    says(
        attention_forward(
            &q,
            &q,
            &q,
            &AttentionOptions {
                block_size: 0,
                ..opts
            },
        ),
        &["block_size", "at least 1"],
    );
    says(
        attention_forward(
            &q,
            &q,
            &q,
            &AttentionOptions {
                scale: f64::NAN,
                ..opts
            },
        ),
        &["scale"],
    );
}

#[test]
fn attention_backward_checks_the_saved_tensors() {
    let opts = AttentionOptions::causal(4);
    let q = f32t(&[1, 2, 3, 4]);
    let (out, lse) = attention_forward(&q, &q, &q, &opts).unwrap();
    says(
        attention_backward(&q, &q, &q, &out, &f32t(&[1, 2, 4]), &out, &opts),
        &["`lse` [1, 2, 4]", "[1, 2, 3]"],
    );
    says(
        attention_backward(&q, &q, &q, &out, &lse, &f32t(&[1, 2, 3, 3]), &opts),
        &["`d_out` [1, 2, 3, 3]"],
    );
}

#[test]
fn merge_rejects_mismatched_parts() {
    says(
        merge_attention(
            &f32t(&[1, 2, 3, 4]),
            &f32t(&[1, 2, 3]),
            &f32t(&[1, 2, 3, 4]),
            &f32t(&[1, 2, 4]),
        ),
        &["[1, 2, 4]"],
    );
}

#[test]
fn rope_rejects_bad_tables_and_positions() {
    let dev = Device::Cpu;
    says(
        Rope::new(7, 8, 1e4, DType::F32, &dev),
        &["head_dim", "even"],
    );
    says(Rope::new(8, 8, 1e4, DType::U8, &dev), &["U8"]);
    let rope = Rope::new(4, 8, 1e4, DType::F32, &dev).unwrap();
    let e = says(
        rope.forward(&f32t(&[1, 1, 3, 4]), 6),
        &["6..9", "8 positions"],
    );
    assert!(matches!(
        e,
        KernelError::Positions {
            offset: 6,
            end: 9,
            max_positions: 8
        }
    ));
    says(
        rope.forward(&f32t(&[1, 1, 3, 6]), 0),
        &["[1, 1, 3, 6]", "head dim 4"],
    );
    says(
        rope.backward(&t(&[1, 1, 3, 4], DType::F64), 0),
        &["F64", "F32"],
    );
}

#[test]
fn row_ops_reject_bad_shapes() {
    says(
        rms_norm_forward(&f32t(&[2, 5]), &f32t(&[4]), 1e-6),
        &["`weight` [4]", "[5]"],
    );
    says(
        rms_norm_forward(&f32t(&[2, 5]), &f32t(&[5]), -1.0),
        &["eps", "> 0"],
    );
    let (x, w) = (f32t(&[2, 5]), f32t(&[5]));
    let (_, inv) = rms_norm_forward(&x, &w, 1e-6).unwrap();
    says(
        rms_norm_backward(&x, &w, &inv, &f32t(&[2, 4])),
        &["`dy` [2, 4]"],
    );
    says(
        rms_norm_backward(&x, &w, &f32t(&[2]), &x),
        &["`inv_rms` [2]", "[2, 1]"],
    );
    says(
        swiglu_forward(&f32t(&[2, 3]), &f32t(&[3, 2])),
        &["[2, 3]", "[3, 2]"],
    );
    says(
        swiglu_backward(&f32t(&[2, 3]), &f32t(&[2, 3]), &t(&[2, 3], DType::BF16)),
        &["d_out", "BF16"],
    );
    says(
        linear_forward(&f32t(&[2, 3, 5]), &f32t(&[4, 6])),
        &["[2, 3, 5]", "[4, 6]"],
    );
    says(
        linear_backward_input(&f32t(&[2, 3]), &f32t(&[4, 6])),
        &["`dy` [2, 3]", "[4, 6]"],
    );
    says(
        linear_backward_weight(&f32t(&[2, 5]), &f32t(&[3, 4])),
        &["[2, 5]", "[3, 4]"],
    );
    says(
        linear_forward_biased(&f32t(&[2, 5]), &f32t(&[4, 5]), &f32t(&[3])),
        &["`b` [3]", "4 outputs"],
    );
    says(
        linear_forward_biased(&f32t(&[2, 5]), &f32t(&[4, 5]), &f32t(&[4, 1])),
        &["b", "[4, 1]"],
    );
}

#[test]
fn cross_entropy_rejects_bad_targets_and_parameters() {
    let (h, w) = (f32t(&[3, 4]), f32t(&[5, 4]));
    let tg = Tensor::new(&[0u32, 7, 1], &Device::Cpu).unwrap();
    let e = says(
        cross_entropy_forward(&h, &w, &tg, None, 3.0, 2),
        &["target 7", "token 1", "0..5"],
    );
    assert!(matches!(
        e,
        KernelError::Target {
            token: 1,
            target: 7,
            vocab: 5
        }
    ));
    let ok = Tensor::new(&[0u32, 4, 1], &Device::Cpu).unwrap();
    says(
        cross_entropy_forward(&h, &w, &ok, None, 0.0, 2),
        &["normaliser", "> 0"],
    );
    says(
        cross_entropy_forward(&h, &w, &ok, None, 1.0, 0),
        &["vocab_block"],
    );
    says(
        cross_entropy_forward(&h, &f32t(&[5, 3]), &ok, None, 1.0, 2),
        &["[3, 4]", "[5, 3]"],
    );
    says(
        cross_entropy_forward(&h, &w, &ok, Some(&f32t(&[2])), 1.0, 2),
        &["`mask` [2]", "[3]"],
    );
    let ids_f32 = f32t(&[3]);
    says(
        cross_entropy_forward(&h, &w, &ids_f32, None, 1.0, 2),
        &["targets", "U32"],
    );
}

#[test]
fn slice_cache_rejects_out_of_order_walks() {
    let opts = AttentionOptions::causal(4);
    let mut cache = SliceKvCache::new();
    let q = f32t(&[1, 2, 3, 4]);
    says(
        cache.backward(&q, &q, &f32t(&[1, 2, 3]), &q, &opts),
        &["no cached slice"],
    );
    let (out, lse) = cache.forward(&q, &q, &q, &opts).unwrap();
    says(
        cache.forward(&q, &f32t(&[1, 1, 3, 4]), &f32t(&[1, 1, 3, 4]), &opts),
        &["[1, 1, 3, 4]", "[1, 2, 3, 4]"],
    );
    let q2 = f32t(&[1, 2, 2, 4]);
    says(
        cache.backward(&q2, &q2, &f32t(&[1, 2, 2]), &q2, &opts),
        &["reverse slice order"],
    );
    // The failed calls left the cache intact: the right backward still works.
    assert_eq!(cache.slices(), 1);
    cache.backward(&q, &out, &lse, &q, &opts).unwrap();
    assert_eq!((cache.slices(), cache.pending_grad_tokens()), (0, 0));
}
