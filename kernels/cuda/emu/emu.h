// Host-CPU emulation of the CUDA features kernels/cuda/*.cu use, so that CI (no GPU, no CUDA
// toolkit) can still run the real kernel sources: each .cu file is compiled as C++ with this
// header force-included (`-include emu.h`, include/ on the include path for the mock
// <cuda_bf16.h> and <mma.h>); kernels/tests/cuda_emulated.rs does that and runs test.cpp.
//
// emu_launch runs every CUDA thread of a block as its own std::thread, so __syncthreads,
// __syncwarp, warp shuffles and atomics have real cross-thread semantics: a missing barrier, a
// wrong shuffle partner or a race on a tile can change the result, which a sequential loop over
// threads would hide. Lanes are independent threads (like Volta+ independent scheduling), so code
// that silently relies on warp lockstep is not protected either. Blocks run one after another,
// which is why `__shared__` can simply be `static`: one copy, reused by each block in turn and,
// as on hardware, not cleared in between.
//
// Not modelled: the hardware wmma fragment layout (include/mma.h uses a different one on
// purpose), timing and occupancy, register and shared-memory limits, and the GPU's weak memory
// model (the host's is stronger, so some missing fences go unnoticed).
#pragma once

#include <math.h>  // the kernels call expf, exp2f, fmaf, ... unqualified, as CUDA allows

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

// CUDA keywords. Device code is ordinary host code here; shared memory is static (see above).
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

// Built-in vector types, with CUDA's 16-byte alignment (the kernels' vectorised copies rely on it).
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim, gridDim;  // written before a launch's threads start, read-only while they run

// Per-warp state: a 32-way barrier and exchange buffers for shuffles and the mock wmma.
struct EmuWarp {
    std::unique_ptr<std::barrier<>> bar;
    float lanes[32];
    float a[256], b[256], c[256];
};
struct EmuBlock {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<EmuWarp> warps;
};
inline EmuBlock* emu_block;  // the one block running now
inline EmuWarp& emu_warp() { return emu_block->warps[threadIdx.x / 32]; }

[[noreturn]] inline void emu_fail(const char* what) {
    std::fprintf(stderr, "emulator: %s (block %u,%u thread %u)\n", what, blockIdx.x, blockIdx.y,
                 threadIdx.x);
    std::abort();
}

inline void __syncthreads() { emu_block->bar->arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) emu_fail("__syncwarp with a partial mask is not emulated");
    emu_warp().bar->arrive_and_wait();
}

// Every lane publishes its value, then reads its partner's; the second barrier keeps a fast lane
// from overwriting its slot (in the next shuffle) before a slow partner has read it.
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int width = 32) {
    if (mask != 0xffffffffu || width != 32) emu_fail("partial shuffles are not emulated");
    EmuWarp& w = emu_warp();
    const unsigned lane = threadIdx.x & 31;
    w.lanes[lane] = v;
    w.bar->arrive_and_wait();
    const float r = w.lanes[lane ^ static_cast<unsigned>(lane_mask & 31)];
    w.bar->arrive_and_wait();
    return r;
}

inline std::mutex emu_atomic_mutex;
inline float atomicAdd(float* p, float v) {
    std::lock_guard<std::mutex> lock(emu_atomic_mutex);
    const float old = *p;
    *p = old + v;
    return old;
}

// On a GPU __trap() aborts the launch; here it aborts the test process, with a message.
[[noreturn]] inline void __trap() { emu_fail("__trap() (wrong launch configuration?)"); }

// kernel<<<grid, block>>>(args...): block.x threads (1-D blocks only, all the kernels use), which
// run the blocks one after another. The threads are created once per launch, not per block
// (thread creation dominated the run time); between blocks they meet at `next`, whose completion
// step gives the next block fresh barriers. Arguments are converted to the parameter types first.
template <typename... P, typename... A>
void emu_launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
    static_assert(sizeof...(P) == sizeof...(A), "argument count");
    if (block.y != 1 || block.z != 1 || block.x == 0) emu_fail("only 1-D blocks are emulated");
    gridDim = grid;
    blockDim = block;
    const unsigned nt = block.x, blocks = grid.x * grid.y * grid.z;
    EmuBlock b;
    b.warps.resize((nt + 31) / 32);
    auto fresh_barriers = [&] {
        b.bar = std::make_unique<std::barrier<>>(nt);
        for (unsigned w = 0; w < b.warps.size(); ++w)
            b.warps[w].bar = std::make_unique<std::barrier<>>(std::min(32u, nt - 32 * w));
    };
    fresh_barriers();
    emu_block = &b;
    unsigned index = 0;  // linear block index, x fastest; changed only in next's completion step
    auto advance = [&]() noexcept {
        ++index;
        fresh_barriers();
    };
    std::barrier<decltype(advance)> next(nt, advance);
    std::vector<std::thread> threads;
    threads.reserve(nt);
    for (unsigned t = 0; t < nt; ++t)
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned i = index; i < blocks; i = index) {
                blockIdx = {i % grid.x, i / grid.x % grid.y, i / (grid.x * grid.y)};
                kernel(static_cast<P>(args)...);
                // An exited thread no longer counts at barriers, as on the GPU.
                emu_warp().bar->arrive_and_drop();
                emu_block->bar->arrive_and_drop();
                next.arrive_and_wait();
            }
        });
    for (auto& t : threads) t.join();
}
