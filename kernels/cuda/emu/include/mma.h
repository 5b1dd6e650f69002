// Stand-in for CUDA's <mma.h> (nvcuda::wmma) in the host emulator (see ../emu.h): bf16 16x16x16
// fragments with f32 accumulators, the only shape attention.cu uses.
//
// The element -> (row, col) mapping of a fragment is unspecified by CUDA, and this mock uses a
// mapping unlike the hardware's on purpose: element i of lane l is flat index i * 32 + l of the
// 16x16 tile (row (i * 32 + l) / 16, column l % 16). Code that only goes through
// load/store/mma_sync (and, like attention.cu's accumulator_rows, discovers the mapping at run
// time) works unchanged; code that assumes the hardware layout computes garbage here. The
// alignment rules of the real API (32-byte pointers, ldm a multiple of 16 bytes) are checked.
// Every call is warp-collective: it starts with a warp barrier, like the real *_sync functions.
#pragma once
#include <cuda_bf16.h>

#include <type_traits>

#include "../emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "only 16x16x16 is emulated");
    enum { num_elements = 8 };
    T x[num_elements];
};

// (row, col) of this lane's element i.
inline void emu_element(int i, int& row, int& col) {
    const int flat = i * 32 + static_cast<int>(threadIdx.x & 31);
    row = flat / 16;
    col = flat % 16;
}

inline void emu_check(const void* p, unsigned ldm, unsigned elem_bytes) {
    if (reinterpret_cast<unsigned long long>(p) % 32 != 0)
        emu_fail("wmma pointer not 32-byte aligned");
    if (ldm * elem_bytes % 16 != 0) emu_fail("wmma ldm not a multiple of 16 bytes");
}

template <typename Use, typename T, typename L>
void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, float v) {
    static_assert(std::is_same_v<T, float>, "only f32 fragments are filled");
    for (float& e : f.x) e = v;
}

// matrix_a / matrix_b, bf16: element (r, c) at p[r * ldm + c] (row_major) or p[c * ldm + r].
template <typename Use, typename L>
void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, L>& f, const __nv_bfloat16* p,
                      unsigned ldm) {
    emu_check(p, ldm, 2);
    emu_warp().bar->arrive_and_wait();
    for (int i = 0; i < 8; ++i) {
        int r, c;
        emu_element(i, r, c);
        f.x[i] = std::is_same_v<L, row_major> ? p[r * ldm + c] : p[c * ldm + r];
    }
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
    emu_check(p, ldm, 4);
    emu_warp().bar->arrive_and_wait();
    for (int i = 0; i < 8; ++i) {
        int r, c;
        emu_element(i, r, c);
        f.x[i] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
    }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
    emu_check(p, ldm, 4);
    emu_warp().bar->arrive_and_wait();
    for (int i = 0; i < 8; ++i) {
        int r, c;
        emu_element(i, r, c);
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[i];
    }
}

// d = a * b + c: the warp assembles the three tiles in its exchange buffers, then each lane
// computes its own elements of d (f32 products and sums, as the tensor cores do for bf16
// inputs). The entry barrier keeps lanes from overwriting the buffers while slower lanes still
// read them for the previous mma_sync; d may be c, which is fully read before d is written.
template <typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
              const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
    EmuWarp& w = emu_warp();
    w.bar->arrive_and_wait();
    for (int i = 0; i < 8; ++i) {
        int r, col;
        emu_element(i, r, col);
        w.a[r * 16 + col] = __bfloat162float(a.x[i]);
        w.b[r * 16 + col] = __bfloat162float(b.x[i]);
        w.c[r * 16 + col] = c.x[i];
    }
    w.bar->arrive_and_wait();
    for (int i = 0; i < 8; ++i) {
        int r, col;
        emu_element(i, r, col);
        float s = w.c[r * 16 + col];
        for (int k = 0; k < 16; ++k) s += w.a[r * 16 + k] * w.b[k * 16 + col];
        d.x[i] = s;
    }
}

}  // namespace wmma
}  // namespace nvcuda
