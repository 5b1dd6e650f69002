// SwiGLU gating of a Llama FFN, forward and backward, elementwise over n values.
// Mirrors kernels/src/swiglu.rs; arithmetic in f32.
//
//   sigma(g) = 1 / (1 + exp(-g))   (exp overflows to +inf for very negative g, giving exactly 0;
//                                    underflows to 0 for very positive g, giving 1: never NaN)
//   forward : out = (g * sigma(g)) * up
//   backward: silu = g * sigma, d_up = d * silu,
//             d_gate = (d * up) * (sigma + silu * (1 - sigma))   [= d*up*sigma*(1 + g*(1-sigma))]
//
// REQUIRED launch configuration (grid-stride loops, so any grid.x >= 1 is correct):
//   swiglu_fwd_{f32,bf16}, swiglu_bwd_{f32,bf16}:
//     block = (256, 1, 1), grid = (min(ceil(n / 256), 65535), 1, 1), dynamic smem = 0
// Outputs may alias inputs elementwise (each thread reads its element before writing it).

#include "common.cuh"

namespace {

constexpr int SWIGLU_THREADS = 256;

// Same formula as the CPU reference (not the tanh form), so both saturate identically.
__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__device__ __forceinline__ void swiglu_fwd_impl(const T* gate, const T* up, T* out, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = to_f32(gate[i]);
        out[i] = from_f32<T>((g * sigmoid(g)) * to_f32(up[i]));
    }
}

template <typename T>
__device__ __forceinline__ void swiglu_bwd_impl(const T* gate, const T* up, const T* d_out,
                                                T* d_gate, T* d_up, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float g = to_f32(gate[i]);
        const float u = to_f32(up[i]);
        const float d = to_f32(d_out[i]);
        const float s = sigmoid(g);
        const float silu = g * s;
        const float dsilu = s + silu * (1.0f - s);
        d_up[i] = from_f32<T>(d * silu);
        d_gate[i] = from_f32<T>((d * u) * dsilu);
    }
}

}  // namespace

#define SWIGLU_KERNELS(SUFFIX, T)                                                                 \
    extern "C" __global__ void __launch_bounds__(SWIGLU_THREADS)                                  \
        swiglu_fwd_##SUFFIX(const T* gate, const T* up, T* out, long long n) {                    \
        swiglu_fwd_impl<T>(gate, up, out, n);                                                     \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(SWIGLU_THREADS)                                  \
        swiglu_bwd_##SUFFIX(const T* gate, const T* up, const T* d_out, T* d_gate, T* d_up,       \
                            long long n) {                                                        \
        swiglu_bwd_impl<T>(gate, up, d_out, d_gate, d_up, n);                                     \
    }

SWIGLU_KERNELS(f32, float)
SWIGLU_KERNELS(bf16, __nv_bfloat16)
