//! Attention over a sequence cut into slices (SPEC §4): each slice attends to the K/V of the
//! slices before it, and the backward walks the slices in reverse, carrying the prefix's dK/dV.
//! The result equals attention over the whole sequence at once.
//!
//! `cargo run -p seqpipe-kernels --example sliced_attention`

use candle_core::{DType, Device, Tensor};
use seqpipe_kernels::{attention_backward, attention_forward, AttentionOptions, SliceKvCache};

fn max_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (b, heads, kv_heads, s, d) = (1, 4, 2, 24, 8);
    let dev = Device::Cpu;
    let q = Tensor::randn(0.0, 1.0, (b, heads, s, d), &dev)?.to_dtype(DType::F64)?;
    let k = Tensor::randn(0.0, 1.0, (b, kv_heads, s, d), &dev)?.to_dtype(DType::F64)?;
    let v = Tensor::randn(0.0, 1.0, (b, kv_heads, s, d), &dev)?.to_dtype(DType::F64)?;
    let d_out = Tensor::randn(0.0, 1.0, (b, heads, s, d), &dev)?.to_dtype(DType::F64)?;
    let opts = AttentionOptions::causal(d);

    // The whole sequence at once.
    let (out, lse) = attention_forward(&q, &k, &v, &opts)?;
    let (dq, _, _) = attention_backward(&q, &k, &v, &out, &lse, &d_out, &opts)?;

    // The same sequence in three slices of 10, 8 and 6 tokens.
    let slices = [(0, 10), (10, 8), (18, 6)];
    let mut cache = SliceKvCache::new();
    let mut forwards = Vec::new();
    for &(start, len) in &slices {
        let part = |t: &Tensor| t.narrow(2, start, len);
        forwards.push(cache.forward(&part(&q)?, &part(&k)?, &part(&v)?, &opts)?);
    }
    let mut dq_slices = Vec::new();
    for (&(start, len), (out_j, lse_j)) in slices.iter().zip(&forwards).rev() {
        let (q_j, d_j) = (q.narrow(2, start, len)?, d_out.narrow(2, start, len)?);
        dq_slices.insert(0, cache.backward(&q_j, out_j, lse_j, &d_j, &opts)?.0);
    }
    let sliced_out = Tensor::cat(&forwards.iter().map(|f| &f.0).collect::<Vec<_>>(), 2)?;
    let sliced_dq = Tensor::cat(&dq_slices, 2)?;
    let (e_out, e_dq) = (max_diff(&sliced_out, &out)?, max_diff(&sliced_dq, &dq)?);
    println!("sliced vs whole: out differs by {e_out:.1e}, dQ by {e_dq:.1e}");
    assert!(e_out < 1e-12 && e_dq < 1e-12);
    Ok(())
}
