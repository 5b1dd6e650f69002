// Elementwise parts of the blockwise cross-entropy fused with the LM head (the matmuls stay in
// cuBLAS on the Rust side). Mirrors kernels/src/cross_entropy.rs; f32 only.
//
// One vocabulary block of logits arrives as f32 [n, vb] row-major.
//
//   ce_lse_update  : online log-sum-exp across vocabulary blocks, per row r:
//                      m' = max(run_max[r], max_j z[r][j])
//                      run_sum[r] = run_sum[r] * exp(run_max[r] - m') + sum_j exp(z[r][j] - m')
//                      run_max[r] = m'
//                    The caller initialises run_max = -inf, run_sum = 0 and finishes with
//                    lse = run_max + log(run_sum).
//   ce_softmax_grad: g[r][j] = exp(z[r][j] - lse[r]) * row_scale[r]
//                    (the caller subtracts the target term separately). g may equal logits
//                    (in place): every element is read by the thread that writes it.
//
// REQUIRED launch configuration (one block per row; blockDim is checked, a wrong one traps):
//   ce_lse_update  : grid = (n, 1, 1), block = (256, 1, 1), dynamic smem = 0
//   ce_softmax_grad: grid = (n, 1, 1), block = (256, 1, 1), dynamic smem = 0
// Any vb >= 1.

#include "common.cuh"

namespace {

constexpr int CE_THREADS = 256;
constexpr int CE_WARPS = CE_THREADS / 32;
constexpr float CE_NEG_INF = -__builtin_huge_valf();

}  // namespace

extern "C" __global__ void __launch_bounds__(CE_THREADS)
    ce_lse_update(const float* __restrict__ logits, float* __restrict__ run_max,
                  float* __restrict__ run_sum, int n, int vb) {
    __shared__ float scratch[CE_WARPS];
    if (blockDim.x != CE_THREADS) __trap();
    const int r = blockIdx.x;
    if (r >= n) return;  // uniform over the block
    const float* __restrict__ z = logits + (long long)r * vb;

    // Two passes (max, then sum) rather than a per-thread online merge: it is the reference's
    // exact arithmetic, and the second pass over the row hits L2.
    float m = CE_NEG_INF;
    for (int j = threadIdx.x; j < vb; j += CE_THREADS) m = fmaxf(m, z[j]);
    m = block_max<CE_WARPS>(m, scratch);
    const float m_old = run_max[r];
    const float m_new = fmaxf(m_old, m);
    // An all -inf row so far would give exp(-inf - -inf) = NaN; shifting by 0 instead keeps every
    // term exp(-inf) = 0 and leaves the state at (-inf, 0).
    const float m_use = m_new == CE_NEG_INF ? 0.f : m_new;

    float s = 0.f;
    for (int j = threadIdx.x; j < vb; j += CE_THREADS) s += expf(z[j] - m_use);
    s = block_sum<CE_WARPS>(s, scratch);
    if (threadIdx.x == 0) {
        run_sum[r] = run_sum[r] * expf(m_old - m_use) + s;
        run_max[r] = m_new;
    }
}

// No __restrict__ on logits/g: the in-place call (g == logits) is allowed.
extern "C" __global__ void __launch_bounds__(CE_THREADS)
    ce_softmax_grad(const float* logits, const float* lse, const float* row_scale, float* g, int n,
                    int vb) {
    if (blockDim.x != CE_THREADS) __trap();
    const int r = blockIdx.x;
    if (r >= n) return;
    const long long base = (long long)r * vb;
    const float l = lse[r];
    const float sc = row_scale[r];
    for (int j = threadIdx.x; j < vb; j += CE_THREADS) g[base + j] = expf(logits[base + j] - l) * sc;
}
