// Rotary position embedding (Llama / HF rotate_half convention), forward and backward in one
// kernel. Mirrors kernels/src/rope.rs; arithmetic in f32.
//
//   x, y: [bh, s, d] row-major (bh = batch * heads), d even, half = d / 2
//   cos, sin: [max_positions, d] f32 tables with the two halves repeated (as Rope::new builds
//             them); row t of x uses table row p = offset + t (caller guarantees
//             offset + s <= max_positions)
//   y[i] = x[i] * cos[p][i] + rot[i] * (sin_sign * sin[p][i]),
//   rot[i] = -x[i + half] for i < half, x[i - half] for i >= half.
// A rotation's inverse is its transpose, so sin_sign = -1 gives the backward (dy -> dx) and
// sin_sign = +1 the forward.
//
// REQUIRED launch configuration:
//   rope_{f32,bf16}: block = (256, 1, 1), grid = (min(ceil(n / 256), 65535), 1, 1) with
//                    n = bh * s * d (grid-stride loop, so any grid.x >= 1 is correct),
//                    dynamic smem = 0
// y must not alias x (each output reads its partner element from the other half).

#include "common.cuh"

namespace {

constexpr int ROPE_THREADS = 256;

template <typename T>
__device__ __forceinline__ void rope_impl(const T* __restrict__ x, T* __restrict__ y,
                                          const float* __restrict__ cos_t,
                                          const float* __restrict__ sin_t, int bh, int s, int d,
                                          int offset, float sin_sign) {
    const long long n = (long long)bh * s * d;
    const int half = d >> 1;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += stride) {
        const long long row = idx / d;  // row of [bh * s, d]
        const int i = (int)(idx - row * d);
        const int t = (int)(row % s);
        const long long tab = (long long)(offset + t) * d + i;
        const float rot = i < half ? -to_f32(x[idx + half]) : to_f32(x[idx - half]);
        y[idx] = from_f32<T>(to_f32(x[idx]) * cos_t[tab] + rot * (sin_sign * sin_t[tab]));
    }
}

}  // namespace

#define ROPE_KERNELS(SUFFIX, T)                                                                   \
    extern "C" __global__ void __launch_bounds__(ROPE_THREADS)                                    \
        rope_##SUFFIX(const T* x, T* y, const float* cos_t, const float* sin_t, int bh, int s,    \
                      int d, int offset, float sin_sign) {                                        \
        rope_impl<T>(x, y, cos_t, sin_t, bh, s, d, offset, sin_sign);                             \
    }

ROPE_KERNELS(f32, float)
ROPE_KERNELS(bf16, __nv_bfloat16)
