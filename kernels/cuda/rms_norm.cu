// RMSNorm over the last dim of a row-major [rows, h] tensor, forward and backward.
// Mirrors kernels/src/rms_norm.rs; every reduction and product is done in f32.
//
//   forward : inv = 1/sqrt(mean(x^2) + eps),  y = (x * inv) * w,  inv_rms[r] = inv
//   backward: xhat = x * inv, g = dy * w,
//             dx = (g - xhat * mean(g * xhat)) * inv,
//             dw_partial[i][c] = sum over the rows r handled by block i of dy[r][c] * xhat[r][c]
//
// dw is reduced in two stages so that the result is deterministic (no atomics): block i owns
// row i of dw_partial [gridDim.x, h] and the caller sums dw_partial over dim 0.
//
// REQUIRED launch configuration (blockDim is checked; a wrong one traps):
//   rms_norm_fwd_{f32,bf16}: grid = (rows, 1, 1),             block = (256, 1, 1), dynamic smem = 0
//   rms_norm_bwd_{f32,bf16}: grid = (min(rows, 256), 1, 1),   block = (256, 1, 1), dynamic smem = 0
//     (any grid.x >= 1 is correct for the backward; dw_partial must then have grid.x rows)
// Any h >= 1; y/dx must not alias x, w or dy.

#include "common.cuh"

namespace {

constexpr int RMS_THREADS = 256;
constexpr int RMS_WARPS = RMS_THREADS / 32;

template <typename T>
__device__ __forceinline__ void rms_norm_fwd_impl(const T* __restrict__ x, const T* __restrict__ w,
                                                  T* __restrict__ y, float* __restrict__ inv_rms,
                                                  int rows, int h, float eps) {
    __shared__ float scratch[RMS_WARPS];
    if (blockDim.x != RMS_THREADS) __trap();  // block_sum assumes exactly RMS_WARPS warps
    const int r = blockIdx.x;
    if (r >= rows) return;  // uniform over the block, so no barrier is skipped by a subset
    const long long base = (long long)r * h;

    float ss = 0.f;
    for (int i = threadIdx.x; i < h; i += RMS_THREADS) {
        const float v = to_f32(x[base + i]);
        ss += v * v;
    }
    ss = block_sum<RMS_WARPS>(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)h + eps);

    // Second read of x instead of caching it: h is unbounded, and the row is hot in L1/L2.
    for (int i = threadIdx.x; i < h; i += RMS_THREADS)
        y[base + i] = from_f32<T>(to_f32(x[base + i]) * inv * to_f32(w[i]));
    if (threadIdx.x == 0) inv_rms[r] = inv;
}

template <typename T>
__device__ __forceinline__ void rms_norm_bwd_impl(const T* __restrict__ x, const T* __restrict__ w,
                                                  const float* __restrict__ inv_rms,
                                                  const T* __restrict__ dy, T* __restrict__ dx,
                                                  float* __restrict__ dw_partial, int rows, int h) {
    __shared__ float scratch[RMS_WARPS];
    if (blockDim.x != RMS_THREADS) __trap();
    // Each thread only ever touches the dw columns i == tid (mod RMS_THREADS), so its
    // accumulation into this block's dw row needs no synchronisation.
    float* __restrict__ dwp = dw_partial + (long long)blockIdx.x * h;
    for (int i = threadIdx.x; i < h; i += RMS_THREADS) dwp[i] = 0.f;

    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long base = (long long)r * h;
        const float inv = inv_rms[r];
        float dot = 0.f;
        for (int i = threadIdx.x; i < h; i += RMS_THREADS) {
            const float xh = to_f32(x[base + i]) * inv;
            const float g = to_f32(dy[base + i]) * to_f32(w[i]);
            dot += g * xh;
        }
        dot = block_sum<RMS_WARPS>(dot, scratch);
        const float mean_gx = dot / (float)h;
        for (int i = threadIdx.x; i < h; i += RMS_THREADS) {
            const float xh = to_f32(x[base + i]) * inv;
            const float d = to_f32(dy[base + i]);
            const float g = d * to_f32(w[i]);
            dx[base + i] = from_f32<T>((g - xh * mean_gx) * inv);
            dwp[i] += d * xh;
        }
    }
}

}  // namespace

#define RMS_NORM_KERNELS(SUFFIX, T)                                                               \
    extern "C" __global__ void __launch_bounds__(RMS_THREADS)                                     \
        rms_norm_fwd_##SUFFIX(const T* x, const T* w, T* y, float* inv_rms, int rows, int h,      \
                              float eps) {                                                        \
        rms_norm_fwd_impl<T>(x, w, y, inv_rms, rows, h, eps);                                     \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(RMS_THREADS)                                     \
        rms_norm_bwd_##SUFFIX(const T* x, const T* w, const float* inv_rms, const T* dy, T* dx,   \
                              float* dw_partial, int rows, int h) {                               \
        rms_norm_bwd_impl<T>(x, w, inv_rms, dy, dx, dw_partial, rows, h);                         \
    }

RMS_NORM_KERNELS(f32, float)
RMS_NORM_KERNELS(bf16, __nv_bfloat16)
