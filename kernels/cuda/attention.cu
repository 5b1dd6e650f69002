// Flash attention (FlashAttention-2 order) of a query slice against a KV prefix, forward and
// backward. Mirrors kernels/src/attention.rs and attention_backward.rs.
//
// Layout (row-major, contiguous): q, out, d_out [b, h, sq, d]; k, v [b, hkv, sk, d];
// lse, delta [b, h, sq] f32. GQA: query head hq reads kv head hq / (h / hkv) (h % hkv == 0).
// Causal mask aligned bottom-right: query i sees keys j <= sk - sq + i (the caller guarantees
// sk >= sq when causal != 0); causal == 0: every query sees every key. Scores s = scale * q.k.
//
//   attn_fwd : out = softmax(s) v, lse = log(sum_j exp(s_ij)) (natural log), online softmax over
//              key tiles, tiles wholly above the diagonal skipped.
//   attn_bwd_delta : delta[r] = sum_d out[r][d] * d_out[r][d]       (rows = b * h * sq)
//   attn_bwd : P = exp(s - lse) with the GIVEN lse, dV += P^T dO, dP = dO V^T,
//              dS = P (dP - delta), dQ += scale dS K, dK += scale dS^T Q.
//              One block per (key tile, b * hkv): it walks every query head of its GQA group and
//              every query tile that sees its keys, keeps dK/dV for its key tile private (written
//              once at the end, no atomics) and atomically adds its dQ share into dq, which the
//              CALLER MUST ZERO before the launch. dq, dk, dv are f32.
//
// Head dims 64 and 128 only, one kernel per head dim (name carries it). The bf16 kernels run
// both matmuls of each step on tensor cores (nvcuda::wmma, bf16 16x16x16, f32 accumulate): the
// probabilities P and dS are rounded to bf16 before their matmuls, as in FlashAttention. The f32
// kernels use plain FMA throughout and mirror the reference's arithmetic (q pre-scaled by scale,
// expf in natural units).
//
// REQUIRED launch configuration (block size is checked; a wrong one traps). No dynamic shared
// memory anywhere; all shared memory is static and <= 48 KiB.
//   attn_fwd_d{64,128}_{f32,bf16}: grid = (ceil(sq / 64), b * h, 1),    block = (128, 1, 1)
//   attn_bwd_d{64,128}_{f32,bf16}: grid = (ceil(sk / 32), b * hkv, 1),  block = (128, 1, 1)
//   attn_bwd_delta_{f32,bf16}:     grid = (ceil(rows / 8), 1, 1),       block = (256, 1, 1)
// grid.y must be <= 65535 (so b * h <= 65535). Pointers need only element alignment; 16-byte
// aligned q/k/v/d_out take a vectorised load path.

#include "common.cuh"
#include <mma.h>

namespace {

using bf16 = __nv_bfloat16;
namespace wmma = nvcuda::wmma;

constexpr float NEG_INF = -__builtin_huge_valf();
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

constexpr int ATT_THREADS = 128;  // 4 warps, every attention kernel
constexpr int ATT_WARPS = ATT_THREADS / 32;
// Asking ptxas for 2 resident blocks caps registers at 255 and is what avoids spills: left to its
// heuristics it capped the d64 bf16 backward at 128 registers and spilled; 3 or more spill too.
constexpr int ATT_MIN_BLOCKS = 2;
constexpr int FWD_BM = 64;        // query rows per forward block
constexpr int BWD_BN = 32;        // keys per backward block
constexpr int DELTA_THREADS = 256;
constexpr int DELTA_ROWS = DELTA_THREADS / 32;  // one warp per row

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

__device__ __forceinline__ bool aligned16(const void* p) {
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}

// Block-cooperative copy of rows [row0, row0 + NROWS) of a row-major [total, D] bf16 matrix into
// dst[NROWS][LD]; rows past `total` become zeros. The zeros matter: a V row read past the end
// could hold NaN, and 0 * NaN would poison the output even though its probability is 0.
template <int D, int LD, int NROWS>
__device__ __forceinline__ void stage_rows(bf16* __restrict__ dst, const bf16* __restrict__ src,
                                           int row0, int total, bool vec) {
    static_assert(D % 8 == 0 && LD % 8 == 0, "16-byte chunks");
    constexpr int CH = D / 8;
    for (int c = threadIdx.x; c < NROWS * CH; c += ATT_THREADS) {
        const int r = c / CH;
        const int col = (c - r * CH) * 8;
        const int gr = row0 + r;
        bf16* d = dst + r * LD + col;
        if (gr < total) {
            const bf16* s = src + (long long)gr * D + col;
            if (vec) {
                *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(s);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) d[e] = s[e];
            }
        } else {
            *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
        }
    }
}

// f32 twin of stage_rows; every value is multiplied by `mul` (the f32 kernels pre-scale q, as
// the reference does).
template <int D, int LD, int NROWS>
__device__ __forceinline__ void stage_rows(float* __restrict__ dst, const float* __restrict__ src,
                                           int row0, int total, bool vec, float mul) {
    static_assert(D % 4 == 0 && LD % 4 == 0, "16-byte chunks");
    constexpr int CH = D / 4;
    for (int c = threadIdx.x; c < NROWS * CH; c += ATT_THREADS) {
        const int r = c / CH;
        const int col = (c - r * CH) * 4;
        const int gr = row0 + r;
        float4 val = make_float4(0.f, 0.f, 0.f, 0.f);
        if (gr < total) {
            const float* s = src + (long long)gr * D + col;
            if (vec) {
                val = *reinterpret_cast<const float4*>(s);
            } else {
                val = make_float4(s[0], s[1], s[2], s[3]);
            }
            val.x *= mul;
            val.y *= mul;
            val.z *= mul;
            val.w *= mul;
        }
        *reinterpret_cast<float4*>(dst + r * LD + col) = val;
    }
}

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// wmma leaves the element -> (row, col) mapping of an accumulator unspecified, but it is fixed for
// the fragment type and shared by load_matrix_sync, mma_sync and store_matrix_sync. Loading a
// tile whose entries are their own row numbers therefore tells each lane which row each of its
// elements belongs to, which is what per-row softmax rescaling of an accumulator needs. Rows are
// < 16, so 4 bits per element; `scratch` is a 16x16 f32 tile (ld `ld`) owned by the warp.
__device__ __forceinline__ unsigned accumulator_rows(float* scratch, int ld) {
    static_assert(FragC::num_elements <= 8, "row indices are packed 4 bits per element");
    const int lane = threadIdx.x & 31;
    for (int e = lane; e < 256; e += 32) scratch[(e >> 4) * ld + (e & 15)] = (float)(e >> 4);
    __syncwarp();
    FragC t;
    wmma::load_matrix_sync(t, scratch, ld, wmma::mem_row_major);
    unsigned pack = 0;
#pragma unroll
    for (int i = 0; i < FragC::num_elements; ++i) pack |= ((unsigned)t.x[i] & 15u) << (4 * i);
    __syncwarp();  // the caller may overwrite scratch next
    return pack;
}

// Writes a 16x16 f32 accumulator (already scaled as wanted) to rows [row0, row0 + 16) and columns
// [col0, col0 + 16) of a row-major [*, D] matrix, rows >= nrows skipped, through the warp's
// 16x16 staging tile. Plain stores: the caller owns those elements exclusively.
template <int D, typename T>
__device__ __forceinline__ void store_frag_rows(const FragC& f, float* stage, T* dst, int row0,
                                                int nrows, int col0) {
    const int lane = threadIdx.x & 31;
    wmma::store_matrix_sync(stage, f, 16, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
        const int r = row0 + (e >> 4);
        if (r < nrows) dst[(long long)r * D + col0 + (e & 15)] = from_f32<T>(stage[e]);
    }
    __syncwarp();  // the staging tile is reused right after
}

template <typename T, int D> struct Attn;

// ------------------------------------------------------------------------------------------
// bf16: tensor cores.
// ------------------------------------------------------------------------------------------
template <int D> struct Attn<bf16, D> {
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    static constexpr int NF = D / 16;  // 16-wide column blocks of the head dim

    // Forward tiles: 64 queries (16 per warp) x BN keys. BN = 32 for d = 128 keeps the static
    // shared memory under 48 KiB.
    static constexpr int BM = FWD_BM;
    static constexpr int BN = D == 64 ? 64 : 32;
    static constexpr int LDK = D + 8;   // bf16 row pitch of Q/K/V tiles (+16 B against conflicts)
    static constexpr int LDS = BN + 4;  // f32 row pitch of the score tile
    static constexpr int LDP = BN + 8;  // bf16 row pitch of the probability tile
    static_assert(BM == 16 * ATT_WARPS, "one 16-row strip per warp");
    static_assert(2 * BN >= BM, "the Q staging tile reuses the K/V buffers");
    // wmma pointers must be 32-byte aligned: every fragment origin is a multiple of 16 rows and
    // 16 columns from a 128-byte aligned base, so the row pitches only need these:
    static_assert((16 * LDK * 2) % 32 == 0 && (BN * LDK * 2) % 32 == 0, "alignment");
    static_assert((16 * LDS * 4) % 32 == 0 && (16 * LDP * 2) % 32 == 0, "alignment");
    static_assert(LDS >= 16, "the score strip doubles as a 16x16 staging tile");

    static __device__ __forceinline__ void fwd(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                               const bf16* __restrict__ v, bf16* __restrict__ out,
                                               float* __restrict__ lse, int b, int h, int hkv,
                                               int sq, int sk, float scale, int causal) {
        __shared__ __align__(128) bf16 kv_s[2 * BN * LDK];
        __shared__ __align__(128) float s_s[BM * LDS];
        __shared__ __align__(128) bf16 p_s[BM * LDP];
        __shared__ float alpha_s[BM];
        if (blockDim.x != ATT_THREADS) __trap();

        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        // Reversed so that the longest causal tiles (last queries) start first.
        const int q0 = (gridDim.x - 1 - blockIdx.x) * BM;
        const int bh = blockIdx.y;
        if (q0 >= sq || bh >= b * h) return;  // uniform over the block
        const int bi = bh / h, hi = bh - bi * h;
        const int kvh = hi / (h / hkv);
        const bf16* q_bh = q + (long long)bh * sq * D;
        const bf16* k_bh = k + ((long long)bi * hkv + kvh) * sk * D;
        const bf16* v_bh = v + ((long long)bi * hkv + kvh) * sk * D;
        const bool vec = aligned16(q) && aligned16(k) && aligned16(v);

        bf16* k_s = kv_s;
        bf16* v_s = kv_s + BN * LDK;
        float* s_w = s_s + warp * 16 * LDS;  // this warp's 16 score rows
        bf16* p_w = p_s + warp * 16 * LDP;
        float* alpha_w = alpha_s + warp * 16;

        // Q is read once: stage it in the (still unused) K/V buffers, keep it in registers.
        stage_rows<D, LDK, BM>(kv_s, q_bh, q0, sq, vec);
        __syncthreads();
        FragA qf[NF];
#pragma unroll
        for (int kk = 0; kk < NF; ++kk)
            wmma::load_matrix_sync(qf[kk], kv_s + warp * 16 * LDK + kk * 16, LDK);
        const unsigned rows = accumulator_rows(s_w, LDS);

        FragC o[NF];
#pragma unroll
        for (int n = 0; n < NF; ++n) wmma::fill_fragment(o[n], 0.f);

        // Softmax bookkeeping: lanes 2r and 2r+1 share row r of the strip (half the columns
        // each) and both hold its running max (log2 units) and sum.
        const int r = lane >> 1;
        const int qi = q0 + warp * 16 + r;
        const int diag = sk - sq;
        const int last_key = causal ? imin(sk - 1, diag + qi) : sk - 1;  // for this row
        const int last_q = imin(q0 + BM, sq) - 1;
        const int kv_end = causal ? imin(sk, diag + last_q + 1) : sk;  // keys any row sees
        const float sl2 = scale * LOG2E;
        float m_r = NEG_INF, l_r = 0.f;

        for (int kv0 = 0; kv0 < kv_end; kv0 += BN) {
            __syncthreads();  // every warp is done with the previous tile (and the Q staging)
            stage_rows<D, LDK, BN>(k_s, k_bh, kv0, sk, vec);
            stage_rows<D, LDK, BN>(v_s, v_bh, kv0, sk, vec);
            __syncthreads();

            // S = Q K^T for the warp's strip. K is [key][dim] row-major, i.e. K^T col-major.
#pragma unroll
            for (int n = 0; n < BN / 16; ++n) {
                FragC acc;
                wmma::fill_fragment(acc, 0.f);
#pragma unroll
                for (int kk = 0; kk < NF; ++kk) {
                    FragBT kf;
                    wmma::load_matrix_sync(kf, k_s + n * 16 * LDK + kk * 16, LDK);
                    wmma::mma_sync(acc, qf[kk], kf, acc);
                }
                wmma::store_matrix_sync(s_w + n * 16, acc, LDS, wmma::mem_row_major);
            }
            __syncwarp();

            // Online softmax of row r over this tile; columns (lane & 1) + 2c.
            const int lim = last_key - kv0;  // last visible column of this row in the tile
            float sv[BN / 2];
            float mx = NEG_INF;
#pragma unroll
            for (int c = 0; c < BN / 2; ++c) {
                const int col = (lane & 1) + 2 * c;
                const float x = col <= lim ? s_w[r * LDS + col] * sl2 : NEG_INF;
                sv[c] = x;
                mx = fmaxf(mx, x);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float m_new = fmaxf(m_r, mx);
            // Shift by 0 while the row has seen nothing: exp2(-inf - 0) = 0, never -inf - -inf.
            const float m_use = m_new == NEG_INF ? 0.f : m_new;
            const float alpha = exp2f(m_r - m_use);
            float rs = 0.f;
#pragma unroll
            for (int c = 0; c < BN / 2; ++c) {
                const float p = exp2f(sv[c] - m_use);
                rs += p;
                p_w[r * LDP + (lane & 1) + 2 * c] = __float2bfloat16(p);
            }
            rs += __shfl_xor_sync(0xffffffffu, rs, 1);
            l_r = l_r * alpha + rs;
            m_r = m_new;
            if ((lane & 1) == 0) alpha_w[r] = alpha;
            __syncwarp();

#pragma unroll
            for (int n = 0; n < NF; ++n) {
#pragma unroll
                for (int i = 0; i < FragC::num_elements; ++i)
                    o[n].x[i] *= alpha_w[(rows >> (4 * i)) & 15u];
            }
            // O += P V; V is [key][dim] row-major.
#pragma unroll
            for (int kk = 0; kk < BN / 16; ++kk) {
                FragA pf;
                wmma::load_matrix_sync(pf, p_w + kk * 16, LDP);
#pragma unroll
                for (int n = 0; n < NF; ++n) {
                    FragB vf;
                    wmma::load_matrix_sync(vf, v_s + kk * 16 * LDK + n * 16, LDK);
                    wmma::mma_sync(o[n], pf, vf, o[n]);
                }
            }
        }

        // Finalise: out = O / l, lse = ln(sum) = m * ln2 + ln(l). The warp's strip is private from
        // here on, so only warp-level ordering is needed; this barrier keeps the 1/l written
        // below from racing with lanes still reading the last tile's alpha (independent thread
        // scheduling gives no lockstep guarantee).
        __syncwarp();
        if ((lane & 1) == 0) {
            alpha_w[r] = l_r > 0.f ? 1.0f / l_r : 0.f;
            if (qi < sq) lse[(long long)bh * sq + qi] = l_r > 0.f ? m_r * LN2 + logf(l_r) : NEG_INF;
        }
        __syncwarp();
#pragma unroll
        for (int n = 0; n < NF; ++n) {
#pragma unroll
            for (int i = 0; i < FragC::num_elements; ++i)
                o[n].x[i] *= alpha_w[(rows >> (4 * i)) & 15u];
            store_frag_rows<D, bf16>(o[n], s_w, out + (long long)bh * sq * D, q0 + warp * 16, sq,
                                     n * 16);
        }
    }

    // Backward tiles: BN = 32 keys per block, query tiles of BM = 32. Shared memory for d = 128
    // is 48384 bytes, just under the 48 KiB static limit (hence no padding on the bf16 P/dS).
    static constexpr int BBM = 32;
    static constexpr int BBN = BWD_BN;
    static constexpr int BLDS = BBN + 4;  // f32 pitch of S and dP
    static constexpr int BLDP = BBN;      // bf16 pitch of P and dS
    static constexpr int HALF = NF / 2;   // each warp owns half of the head-dim column blocks
    static_assert(BBM == 32 && BBN == 32, "warp roles below assume 2x2 16x16 blocks");
    static_assert((16 * BLDS * 4) % 32 == 0 && (16 * BLDP * 2) % 32 == 0, "alignment");
    static_assert(2 * BBM * BLDS >= ATT_WARPS * 256, "per-warp staging fits in S|dP");

    static __device__ __forceinline__ void bwd(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                               const bf16* __restrict__ v,
                                               const float* __restrict__ lse,
                                               const float* __restrict__ delta,
                                               const bf16* __restrict__ d_out, float* __restrict__ dq,
                                               float* __restrict__ dk, float* __restrict__ dv, int b,
                                               int h, int hkv, int sq, int sk, float scale,
                                               int causal) {
        __shared__ __align__(128) bf16 k_s[BBN * LDK];
        __shared__ __align__(128) bf16 v_s[BBN * LDK];
        __shared__ __align__(128) bf16 q_s[BBM * LDK];
        __shared__ __align__(128) bf16 do_s[BBM * LDK];
        __shared__ __align__(128) float f_s[2 * BBM * BLDS];  // S | dP; later per-warp staging
        __shared__ __align__(128) bf16 p_b[BBM * BLDP];
        __shared__ __align__(128) bf16 ds_b[BBM * BLDP];
        __shared__ float lse_s[BBM];  // lse * log2(e)
        __shared__ float dl_s[BBM];
        if (blockDim.x != ATT_THREADS) __trap();

        const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
        const int k0 = blockIdx.x * BBN;
        const int bkv = blockIdx.y;
        if (k0 >= sk || bkv >= b * hkv) return;  // uniform over the block
        const int bi = bkv / hkv, kvh = bkv - bi * hkv;
        const int group = h / hkv;
        const bool vec = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(d_out);
        float* s_f = f_s;
        float* dp_f = f_s + BBM * BLDS;
        float* stage = f_s + warp * 256;

        stage_rows<D, LDK, BBN>(k_s, k + (long long)bkv * sk * D, k0, sk, vec);
        stage_rows<D, LDK, BBN>(v_s, v + (long long)bkv * sk * D, k0, sk, vec);
        // (made visible by the first barrier of the query loop)

        // Warp roles. S/dP: the 16x16 block (query block mi, key block ni). dK/dV: key block kr,
        // head-dim column blocks ch*HALF .. ch*HALF+HALF-1. dQ: query block kr, same columns.
        const int mi = warp >> 1, ni = warp & 1;
        const int kr = warp & 1, ch = warp >> 1;
        FragC dk_f[HALF], dv_f[HALF];
#pragma unroll
        for (int t = 0; t < HALF; ++t) {
            wmma::fill_fragment(dk_f[t], 0.f);
            wmma::fill_fragment(dv_f[t], 0.f);
        }

        const int diag = sk - sq;
        // First query that sees key k0 (and hence some key of the tile): k0 <= diag + i.
        const int q_first = causal ? imax(0, k0 - diag) : 0;
        const float sl2 = scale * LOG2E;

        for (int gi = 0; gi < group; ++gi) {
            const long long bhq = (long long)bi * h + (long long)kvh * group + gi;
            const bf16* q_h = q + bhq * sq * D;
            const bf16* do_h = d_out + bhq * sq * D;
            const float* lse_h = lse + bhq * sq;
            const float* dl_h = delta + bhq * sq;
            float* dq_h = dq + bhq * sq * D;

            for (int q0 = (q_first / BBM) * BBM; q0 < sq; q0 += BBM) {
                __syncthreads();  // previous step's readers of q_s, do_s, P/dS, staging are done
                stage_rows<D, LDK, BBM>(q_s, q_h, q0, sq, vec);
                stage_rows<D, LDK, BBM>(do_s, do_h, q0, sq, vec);
                if (tid < BBM) {
                    const int qi = q0 + tid;
                    lse_s[tid] = qi < sq ? lse_h[qi] * LOG2E : 0.f;
                    dl_s[tid] = qi < sq ? dl_h[qi] : 0.f;
                }
                __syncthreads();

                // S = Q K^T and dP = dO V^T, one 16x16 block of each per warp.
                {
                    FragC acc_s, acc_dp;
                    wmma::fill_fragment(acc_s, 0.f);
                    wmma::fill_fragment(acc_dp, 0.f);
#pragma unroll
                    for (int kk = 0; kk < NF; ++kk) {
                        FragA a;
                        FragBT bt;
                        wmma::load_matrix_sync(a, q_s + mi * 16 * LDK + kk * 16, LDK);
                        wmma::load_matrix_sync(bt, k_s + ni * 16 * LDK + kk * 16, LDK);
                        wmma::mma_sync(acc_s, a, bt, acc_s);
                        wmma::load_matrix_sync(a, do_s + mi * 16 * LDK + kk * 16, LDK);
                        wmma::load_matrix_sync(bt, v_s + ni * 16 * LDK + kk * 16, LDK);
                        wmma::mma_sync(acc_dp, a, bt, acc_dp);
                    }
                    wmma::store_matrix_sync(s_f + mi * 16 * BLDS + ni * 16, acc_s, BLDS,
                                            wmma::mem_row_major);
                    wmma::store_matrix_sync(dp_f + mi * 16 * BLDS + ni * 16, acc_dp, BLDS,
                                            wmma::mem_row_major);
                }
                __syncthreads();

                // P and dS, elementwise; masked, out-of-range queries and keys get exactly 0.
                for (int e = tid; e < BBM * BBN; e += ATT_THREADS) {
                    const int i = e / BBN, j = e - i * BBN;
                    const int qi = q0 + i, kj = k0 + j;
                    const bool ok = qi < sq && kj < sk && (!causal || kj <= diag + qi);
                    const float p = ok ? exp2f(s_f[i * BLDS + j] * sl2 - lse_s[i]) : 0.f;
                    const float ds = p * (dp_f[i * BLDS + j] - dl_s[i]);
                    p_b[i * BLDP + j] = __float2bfloat16(p);
                    ds_b[i * BLDP + j] = __float2bfloat16(ds);
                }
                __syncthreads();

                // dV += P^T dO and dK += dS^T Q (scale applied at the end). P is [query][key]
                // row-major, i.e. P^T col-major.
#pragma unroll
                for (int mb = 0; mb < BBM / 16; ++mb) {
                    FragAT pt, dst;
                    wmma::load_matrix_sync(pt, p_b + mb * 16 * BLDP + kr * 16, BLDP);
                    wmma::load_matrix_sync(dst, ds_b + mb * 16 * BLDP + kr * 16, BLDP);
#pragma unroll
                    for (int t = 0; t < HALF; ++t) {
                        const int n = ch * HALF + t;
                        FragB bf;
                        wmma::load_matrix_sync(bf, do_s + mb * 16 * LDK + n * 16, LDK);
                        wmma::mma_sync(dv_f[t], pt, bf, dv_f[t]);
                        wmma::load_matrix_sync(bf, q_s + mb * 16 * LDK + n * 16, LDK);
                        wmma::mma_sync(dk_f[t], dst, bf, dk_f[t]);
                    }
                }

                // dQ share = scale * dS K, added atomically (other key tiles add to the same rows).
                const int qb = kr;
#pragma unroll
                for (int t = 0; t < HALF; ++t) {
                    const int n = ch * HALF + t;
                    FragC acc;
                    wmma::fill_fragment(acc, 0.f);
#pragma unroll
                    for (int kb = 0; kb < BBN / 16; ++kb) {
                        FragA a;
                        FragB bf;
                        wmma::load_matrix_sync(a, ds_b + qb * 16 * BLDP + kb * 16, BLDP);
                        wmma::load_matrix_sync(bf, k_s + kb * 16 * LDK + n * 16, LDK);
                        wmma::mma_sync(acc, a, bf, acc);
                    }
#pragma unroll
                    for (int i = 0; i < FragC::num_elements; ++i) acc.x[i] *= scale;
                    wmma::store_matrix_sync(stage, acc, 16, wmma::mem_row_major);
                    __syncwarp();
                    for (int e = lane; e < 256; e += 32) {
                        const int qi = q0 + qb * 16 + (e >> 4);
                        if (qi < sq) atomicAdd(dq_h + (long long)qi * D + n * 16 + (e & 15), stage[e]);
                    }
                    __syncwarp();
                }
            }
        }

        // This block is the only writer of its dK/dV rows.
        float* dk_b = dk + (long long)bkv * sk * D;
        float* dv_b = dv + (long long)bkv * sk * D;
#pragma unroll
        for (int t = 0; t < HALF; ++t) {
            const int n = ch * HALF + t;
#pragma unroll
            for (int i = 0; i < FragC::num_elements; ++i) dk_f[t].x[i] *= scale;
            store_frag_rows<D, float>(dk_f[t], stage, dk_b, k0 + kr * 16, sk, n * 16);
            store_frag_rows<D, float>(dv_f[t], stage, dv_b, k0 + kr * 16, sk, n * 16);
        }
    }
};

// ------------------------------------------------------------------------------------------
// f32: plain FMA, lane = key. Mirrors the reference: q pre-scaled, exp in natural units.
// ------------------------------------------------------------------------------------------
template <int D> struct Attn<float, D> {
    static_assert(D == 64 || D == 128, "head dim 64 or 128");
    static constexpr int DC = D / 32;  // head-dim columns per lane (lane + 32c)
    static constexpr int LDK = D + 4;  // odd multiple of 4 words: float4 reads of K[lane][*]
                                       // hit 8 distinct bank quads per quarter-warp

    // Forward: the block's 64 queries are done as 4 sub-tiles of 16 (4 rows per warp), each a
    // full pass over its visible keys, in tiles of 32 keys (one per lane).
    static constexpr int BN = 32;
    static constexpr int RPW = 4;
    static constexpr int SUB = RPW * ATT_WARPS;
    static_assert(FWD_BM % SUB == 0, "sub-tiles");

    static __device__ __forceinline__ void fwd(const float* __restrict__ q,
                                               const float* __restrict__ k,
                                               const float* __restrict__ v,
                                               float* __restrict__ out, float* __restrict__ lse,
                                               int b, int h, int hkv, int sq, int sk, float scale,
                                               int causal) {
        __shared__ __align__(16) float k_s[BN * LDK];
        __shared__ __align__(16) float v_s[BN * D];
        __shared__ __align__(16) float q_s[SUB * D];
        __shared__ float p_s[SUB * BN];
        if (blockDim.x != ATT_THREADS) __trap();

        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        const int q0 = (gridDim.x - 1 - blockIdx.x) * FWD_BM;
        const int bh = blockIdx.y;
        if (q0 >= sq || bh >= b * h) return;
        const int bi = bh / h, hi = bh - bi * h;
        const int kvh = hi / (h / hkv);
        const float* q_bh = q + (long long)bh * sq * D;
        const float* k_bh = k + ((long long)bi * hkv + kvh) * sk * D;
        const float* v_bh = v + ((long long)bi * hkv + kvh) * sk * D;
        const bool vec = aligned16(q) && aligned16(k) && aligned16(v);
        const int diag = sk - sq;
        const float* q_w = q_s + warp * RPW * D;
        float* p_w = p_s + warp * RPW * BN;

        for (int qs0 = q0; qs0 < imin(q0 + FWD_BM, sq); qs0 += SUB) {
            __syncthreads();  // the previous sub-tile's readers of q_s are done
            stage_rows<D, D, SUB>(q_s, q_bh, qs0, sq, vec, scale);
            const int kv_end = causal ? imin(sk, diag + imin(qs0 + SUB, sq)) : sk;

            float m[RPW], l[RPW], o[RPW][DC];
            int last_key[RPW];
#pragma unroll
            for (int r = 0; r < RPW; ++r) {
                m[r] = NEG_INF;
                l[r] = 0.f;
#pragma unroll
                for (int c = 0; c < DC; ++c) o[r][c] = 0.f;
                const int qi = qs0 + warp * RPW + r;
                last_key[r] = causal ? imin(sk - 1, diag + qi) : sk - 1;
            }

            for (int kv0 = 0; kv0 < kv_end; kv0 += BN) {
                __syncthreads();  // previous tile's readers of k_s/v_s are done
                stage_rows<D, LDK, BN>(k_s, k_bh, kv0, sk, vec, 1.f);
                stage_rows<D, D, BN>(v_s, v_bh, kv0, sk, vec, 1.f);
                __syncthreads();  // also publishes q_s on the first tile

                float s[RPW];
#pragma unroll
                for (int r = 0; r < RPW; ++r) s[r] = 0.f;
                const float* krow = k_s + lane * LDK;
#pragma unroll 8
                for (int dd = 0; dd < D; dd += 4) {
                    const float4 kk = *reinterpret_cast<const float4*>(krow + dd);
#pragma unroll
                    for (int r = 0; r < RPW; ++r) {
                        const float4 qq = *reinterpret_cast<const float4*>(q_w + r * D + dd);
                        s[r] = fmaf(qq.x, kk.x, s[r]);
                        s[r] = fmaf(qq.y, kk.y, s[r]);
                        s[r] = fmaf(qq.z, kk.z, s[r]);
                        s[r] = fmaf(qq.w, kk.w, s[r]);
                    }
                }

                const int j = kv0 + lane;
#pragma unroll
                for (int r = 0; r < RPW; ++r) {
                    const float x = j <= last_key[r] ? s[r] : NEG_INF;
                    const float m_new = fmaxf(m[r], warp_max(x));
                    const float m_use = m_new == NEG_INF ? 0.f : m_new;  // no -inf - -inf
                    const float alpha = expf(m[r] - m_use);
                    const float p = expf(x - m_use);
                    l[r] = l[r] * alpha + warp_sum(p);
                    m[r] = m_new;
                    p_w[r * BN + lane] = p;
#pragma unroll
                    for (int c = 0; c < DC; ++c) o[r][c] *= alpha;
                }
                __syncwarp();

#pragma unroll 4
                for (int jj = 0; jj < BN; ++jj) {
                    float vv[DC];
#pragma unroll
                    for (int c = 0; c < DC; ++c) vv[c] = v_s[jj * D + lane + 32 * c];
#pragma unroll
                    for (int r = 0; r < RPW; ++r) {
                        const float pj = p_w[r * BN + jj];
#pragma unroll
                        for (int c = 0; c < DC; ++c) o[r][c] = fmaf(pj, vv[c], o[r][c]);
                    }
                }
                // p_w is rewritten only after the next tile's first barrier.
            }

#pragma unroll
            for (int r = 0; r < RPW; ++r) {
                const int qi = qs0 + warp * RPW + r;
                if (qi < sq) {
                    float* orow = out + ((long long)bh * sq + qi) * D;
#pragma unroll
                    for (int c = 0; c < DC; ++c)
                        orow[lane + 32 * c] = l[r] > 0.f ? o[r][c] / l[r] : 0.f;
                    if (lane == 0)
                        lse[(long long)bh * sq + qi] = l[r] > 0.f ? m[r] + logf(l[r]) : NEG_INF;
                }
            }
        }
    }

    // Backward: 32 keys per block (lane = key in the score phase), query tiles of 8 (2 rows per
    // warp). dK/dV: thread t owns key t/4 and head-dim columns (t%4) + 4c, so the reads of
    // do_s/q_s rows in the accumulation are 4 consecutive words per warp (no conflicts).
    static constexpr int BBN = BWD_BN;
    static constexpr int BBM = 8;
    static constexpr int BRPW = BBM / ATT_WARPS;
    static constexpr int LDP = BBN + 1;
    static constexpr int CPT = D / 4;
    static_assert(BBN == 32 && ATT_THREADS == 4 * BBN, "ownership map");

    static __device__ __forceinline__ void bwd(const float* __restrict__ q,
                                               const float* __restrict__ k,
                                               const float* __restrict__ v,
                                               const float* __restrict__ lse,
                                               const float* __restrict__ delta,
                                               const float* __restrict__ d_out,
                                               float* __restrict__ dq, float* __restrict__ dk,
                                               float* __restrict__ dv, int b, int h, int hkv,
                                               int sq, int sk, float scale, int causal) {
        __shared__ __align__(16) float k_s[BBN * LDK];
        __shared__ __align__(16) float v_s[BBN * LDK];
        __shared__ __align__(16) float q_s[BBM * D];   // q * scale
        __shared__ __align__(16) float do_s[BBM * D];
        __shared__ float p_s[BBM * LDP];
        __shared__ float ds_s[BBM * LDP];
        __shared__ float lse_s[BBM];
        __shared__ float dl_s[BBM];
        if (blockDim.x != ATT_THREADS) __trap();

        const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
        const int k0 = blockIdx.x * BBN;
        const int bkv = blockIdx.y;
        if (k0 >= sk || bkv >= b * hkv) return;
        const int bi = bkv / hkv, kvh = bkv - bi * hkv;
        const int group = h / hkv;
        const bool vec = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(d_out);

        stage_rows<D, LDK, BBN>(k_s, k + (long long)bkv * sk * D, k0, sk, vec, 1.f);
        stage_rows<D, LDK, BBN>(v_s, v + (long long)bkv * sk * D, k0, sk, vec, 1.f);

        const int jj = tid >> 2, cq = tid & 3;
        float dk_acc[CPT], dv_acc[CPT];
#pragma unroll
        for (int t = 0; t < CPT; ++t) {
            dk_acc[t] = 0.f;
            dv_acc[t] = 0.f;
        }

        const int diag = sk - sq;
        const int q_first = causal ? imax(0, k0 - diag) : 0;
        const int j = k0 + lane;  // this lane's key in the score phase
        const float* krow = k_s + lane * LDK;
        const float* vrow = v_s + lane * LDK;

        for (int gi = 0; gi < group; ++gi) {
            const long long bhq = (long long)bi * h + (long long)kvh * group + gi;
            const float* q_h = q + bhq * sq * D;
            const float* do_h = d_out + bhq * sq * D;
            const float* lse_h = lse + bhq * sq;
            const float* dl_h = delta + bhq * sq;
            float* dq_h = dq + bhq * sq * D;

            for (int q0 = (q_first / BBM) * BBM; q0 < sq; q0 += BBM) {
                __syncthreads();  // previous step's readers of q_s, do_s, p_s, ds_s are done
                stage_rows<D, D, BBM>(q_s, q_h, q0, sq, vec, scale);
                stage_rows<D, D, BBM>(do_s, do_h, q0, sq, vec, 1.f);
                if (tid < BBM) {
                    const int qi = q0 + tid;
                    lse_s[tid] = qi < sq ? lse_h[qi] : 0.f;
                    dl_s[tid] = qi < sq ? dl_h[qi] : 0.f;
                }
                __syncthreads();

                float s[BRPW], dp[BRPW];
#pragma unroll
                for (int r = 0; r < BRPW; ++r) {
                    s[r] = 0.f;
                    dp[r] = 0.f;
                }
#pragma unroll 8
                for (int dd = 0; dd < D; dd += 4) {
                    const float4 kk = *reinterpret_cast<const float4*>(krow + dd);
                    const float4 vv = *reinterpret_cast<const float4*>(vrow + dd);
#pragma unroll
                    for (int r = 0; r < BRPW; ++r) {
                        const int i = warp * BRPW + r;
                        const float4 qq = *reinterpret_cast<const float4*>(q_s + i * D + dd);
                        const float4 oo = *reinterpret_cast<const float4*>(do_s + i * D + dd);
                        s[r] = fmaf(qq.x, kk.x, s[r]);
                        s[r] = fmaf(qq.y, kk.y, s[r]);
                        s[r] = fmaf(qq.z, kk.z, s[r]);
                        s[r] = fmaf(qq.w, kk.w, s[r]);
                        dp[r] = fmaf(oo.x, vv.x, dp[r]);
                        dp[r] = fmaf(oo.y, vv.y, dp[r]);
                        dp[r] = fmaf(oo.z, vv.z, dp[r]);
                        dp[r] = fmaf(oo.w, vv.w, dp[r]);
                    }
                }
#pragma unroll
                for (int r = 0; r < BRPW; ++r) {
                    const int i = warp * BRPW + r;
                    const int qi = q0 + i;
                    const bool ok = qi < sq && j < sk && (!causal || j <= diag + qi);
                    const float p = ok ? expf(s[r] - lse_s[i]) : 0.f;
                    p_s[i * LDP + lane] = p;
                    ds_s[i * LDP + lane] = p * (dp[r] - dl_s[i]);
                }
                __syncwarp();

                // dQ share of the warp's rows: lane owns head-dim columns lane + 32c.
#pragma unroll
                for (int r = 0; r < BRPW; ++r) {
                    const int i = warp * BRPW + r;
                    const int qi = q0 + i;
                    if (qi < sq) {
                        float acc[DC];
#pragma unroll
                        for (int c = 0; c < DC; ++c) acc[c] = 0.f;
#pragma unroll 8
                        for (int jk = 0; jk < BBN; ++jk) {
                            const float dsv = ds_s[i * LDP + jk];
#pragma unroll
                            for (int c = 0; c < DC; ++c)
                                acc[c] = fmaf(dsv, k_s[jk * LDK + lane + 32 * c], acc[c]);
                        }
#pragma unroll
                        for (int c = 0; c < DC; ++c)
                            atomicAdd(dq_h + (long long)qi * D + lane + 32 * c, acc[c] * scale);
                    }
                }
                __syncthreads();  // every warp's P/dS rows are in place

#pragma unroll 2
                for (int i = 0; i < BBM; ++i) {
                    const float pv = p_s[i * LDP + jj];
                    const float dsv = ds_s[i * LDP + jj];
#pragma unroll
                    for (int t = 0; t < CPT; ++t) {
                        const int c = cq + 4 * t;
                        dv_acc[t] = fmaf(pv, do_s[i * D + c], dv_acc[t]);
                        dk_acc[t] = fmaf(dsv, q_s[i * D + c], dk_acc[t]);
                    }
                }
            }
        }

        if (k0 + jj < sk) {
            float* dk_row = dk + ((long long)bkv * sk + k0 + jj) * D;
            float* dv_row = dv + ((long long)bkv * sk + k0 + jj) * D;
#pragma unroll
            for (int t = 0; t < CPT; ++t) {
                dk_row[cq + 4 * t] = dk_acc[t];
                dv_row[cq + 4 * t] = dv_acc[t];
            }
        }
    }
};

template <typename T>
__device__ __forceinline__ void attn_bwd_delta_impl(const T* __restrict__ out,
                                                    const T* __restrict__ d_out,
                                                    float* __restrict__ delta, int rows, int d) {
    if (blockDim.x != DELTA_THREADS) __trap();
    const int row = blockIdx.x * DELTA_ROWS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // uniform over the warp, and no block barrier follows
    const long long base = (long long)row * d;
    float s = 0.f;
    for (int c = lane; c < d; c += 32) s += to_f32(d_out[base + c]) * to_f32(out[base + c]);
    s = warp_sum(s);
    if (lane == 0) delta[row] = s;
}

}  // namespace

#define ATTN_KERNELS(SUFFIX, T, DIM)                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, ATT_MIN_BLOCKS)                     \
        attn_fwd_d##DIM##_##SUFFIX(const T* q, const T* k, const T* v, T* out, float* lse, int b, \
                                   int h, int hkv, int sq, int sk, float scale, int causal) {     \
        Attn<T, DIM>::fwd(q, k, v, out, lse, b, h, hkv, sq, sk, scale, causal);                   \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS, ATT_MIN_BLOCKS)                     \
        attn_bwd_d##DIM##_##SUFFIX(                                                               \
        const T* q, const T* k, const T* v, const float* lse, const float* delta, const T* d_out, \
        float* dq, float* dk, float* dv, int b, int h, int hkv, int sq, int sk, float scale,      \
        int causal) {                                                                             \
        Attn<T, DIM>::bwd(q, k, v, lse, delta, d_out, dq, dk, dv, b, h, hkv, sq, sk, scale,       \
                          causal);                                                                \
    }

#define ATTN_DELTA_KERNEL(SUFFIX, T)                                                              \
    extern "C" __global__ void __launch_bounds__(DELTA_THREADS)                                   \
        attn_bwd_delta_##SUFFIX(const T* out, const T* d_out, float* delta, int rows, int d) {    \
        attn_bwd_delta_impl<T>(out, d_out, delta, rows, d);                                       \
    }

ATTN_KERNELS(f32, float, 64)
ATTN_KERNELS(f32, float, 128)
ATTN_KERNELS(bf16, __nv_bfloat16, 64)
ATTN_KERNELS(bf16, __nv_bfloat16, 128)
ATTN_DELTA_KERNEL(f32, float)
ATTN_DELTA_KERNEL(bf16, __nv_bfloat16)
