// Stand-in for CUDA's <cuda_bf16.h> in the host emulator (see ../emu.h): just the bf16 storage
// type and the two conversions kernels/cuda/*.cu use.
//
// Why not the real header: CI has no CUDA toolkit. Why it is enough: the kernels keep bf16 only
// as storage and do all arithmetic in f32, so a bf16 is its bit pattern plus CUDA's conversion
// rules: float -> bf16 rounds to nearest, ties to even (what __float2bfloat16 does, and what the
// tolerances in test.cpp assume), NaN becomes the canonical 0x7fff; bf16 -> float is exact.
// Deliberately no implicit conversions or operators: a kernel that starts using more of the
// real API fails to compile here, and this file should grow by exactly what it needs.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    std::uint16_t raw;  // trivial type, so `__shared__` (= static) arrays of it need no constructor
};
static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "layout of CUDA's bf16");

inline __nv_bfloat16 __float2bfloat16(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fff};
    // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even; a carry into the
    // exponent is the correct round-up (to the next binade, or to inf past the largest bf16).
    return {static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 b) {
    const std::uint32_t u = static_cast<std::uint32_t>(b.raw) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
