// Test driver for the CUDA kernels under the host emulator (emu.h): launches every kernel of
// kernels/cuda/*.cu with its documented launch configuration (LAUNCH.md) on small, deliberately
// ragged shapes (partial tiles, GQA, causal with sk != sq, misaligned pointers, grids smaller or
// larger than the data) and compares with double-precision references computed here from the
// same (bf16-rounded) inputs.
//
// Why it exists: CI has no GPU, so this is the only place the .cu sources run before they reach
// one. kernels/tests/cuda_emulated.rs builds and runs it; by hand, from this directory:
//   F="-std=c++20 -O1 -pthread -fno-strict-aliasing -Wno-unknown-pragmas -Iinclude"; O=/tmp/emu
//   mkdir -p $O; for f in ../*.cu; do c++ $F -include emu.h -x c++ -c $f -o $O/${f:3:-3}.o; done
//   c++ $F test.cpp $O/*.o -o $O/test && $O/test [filter]
// The optional filter runs only the cases whose name contains it.
//
// Error metric: max |got - ref| / max |ref| over each output tensor (NaN fails), so one
// tolerance per dtype covers tensors of any scale; an all-zero reference is compared absolutely
// (the inputs are O(1)). Outputs the kernels must fully overwrite are pre-filled with NaN or
// garbage, so a skipped element fails too.
#include <cuda_bf16.h>
#include <unistd.h>

#include <csignal>
#include <functional>
#include <random>
#include <set>
#include <string>

#include "emu.h"

using bf16 = __nv_bfloat16;

extern "C" {
void rms_norm_fwd_f32(const float*, const float*, float*, float*, int, int, float);
void rms_norm_fwd_bf16(const bf16*, const bf16*, bf16*, float*, int, int, float);
void rms_norm_bwd_f32(const float*, const float*, const float*, const float*, float*, float*, int,
                      int);
void rms_norm_bwd_bf16(const bf16*, const bf16*, const float*, const bf16*, bf16*, float*, int,
                       int);
void rope_f32(const float*, float*, const float*, const float*, int, int, int, int, float);
void rope_bf16(const bf16*, bf16*, const float*, const float*, int, int, int, int, float);
void swiglu_fwd_f32(const float*, const float*, float*, long long);
void swiglu_fwd_bf16(const bf16*, const bf16*, bf16*, long long);
void swiglu_bwd_f32(const float*, const float*, const float*, float*, float*, long long);
void swiglu_bwd_bf16(const bf16*, const bf16*, const bf16*, bf16*, bf16*, long long);
void ce_lse_update(const float*, float*, float*, int, int);
void ce_softmax_grad(const float*, const float*, const float*, float*, int, int);
#define DECLARE_ATTN(S, T, D)                                                                      \
    void attn_fwd_d##D##_##S(const T*, const T*, const T*, T*, float*, int, int, int, int, int,    \
                             float, int);                                                          \
    void attn_bwd_d##D##_##S(const T*, const T*, const T*, const float*, const float*, const T*,   \
                             float*, float*, float*, int, int, int, int, int, float, int);
DECLARE_ATTN(f32, float, 64)
DECLARE_ATTN(f32, float, 128)
DECLARE_ATTN(bf16, bf16, 64)
DECLARE_ATTN(bf16, bf16, 128)
void attn_bwd_delta_f32(const float*, const float*, float*, int, int);
void attn_bwd_delta_bf16(const bf16*, const bf16*, float*, int, int);
}

// Every launch goes through launch(), which records the kernel's name: the final "launched:"
// line is how the Rust test knows that no kernel was left out.
template <typename F> struct Kernel {
    const char* name;
    F* fn;
};
#define KERNEL(f)                                                                                  \
    Kernel<decltype(f)> { #f, f }

static std::set<std::string> launched;
static int checks = 0, failures = 0;

template <typename F, typename... A> void launch(Kernel<F> k, dim3 grid, dim3 block, A... args) {
    launched.insert(k.name);
    emu_launch(k.fn, grid, block, args...);
}

// Per-dtype conversions, kernels and output tolerances. The bf16 one covers the rounding of the
// outputs to bf16 (2^-9 relative) plus, in attention, the bf16 rounding of P and dS.
template <typename T> struct Dt;
template <> struct Dt<float> {
    static constexpr const char* name = "f32";
    static constexpr double tol = 1e-5;  // observed max 1.2e-6
    static float store(float v) { return v; }
    static double load(float v) { return v; }
    static constexpr auto rms_fwd = KERNEL(rms_norm_fwd_f32);
    static constexpr auto rms_bwd = KERNEL(rms_norm_bwd_f32);
    static constexpr auto rope = KERNEL(rope_f32);
    static constexpr auto swiglu_fwd = KERNEL(swiglu_fwd_f32);
    static constexpr auto swiglu_bwd = KERNEL(swiglu_bwd_f32);
    static constexpr auto attn_delta = KERNEL(attn_bwd_delta_f32);
    static auto attn_fwd(int d) {
        return d == 64 ? KERNEL(attn_fwd_d64_f32) : KERNEL(attn_fwd_d128_f32);
    }
    static auto attn_bwd(int d) {
        return d == 64 ? KERNEL(attn_bwd_d64_f32) : KERNEL(attn_bwd_d128_f32);
    }
};
template <> struct Dt<bf16> {
    static constexpr const char* name = "bf16";
    static constexpr double tol = 1e-2;  // observed max 3.3e-3
    static bf16 store(float v) { return __float2bfloat16(v); }
    static double load(bf16 v) { return __bfloat162float(v); }
    static constexpr auto rms_fwd = KERNEL(rms_norm_fwd_bf16);
    static constexpr auto rms_bwd = KERNEL(rms_norm_bwd_bf16);
    static constexpr auto rope = KERNEL(rope_bf16);
    static constexpr auto swiglu_fwd = KERNEL(swiglu_fwd_bf16);
    static constexpr auto swiglu_bwd = KERNEL(swiglu_bwd_bf16);
    static constexpr auto attn_delta = KERNEL(attn_bwd_delta_bf16);
    static auto attn_fwd(int d) {
        return d == 64 ? KERNEL(attn_fwd_d64_bf16) : KERNEL(attn_fwd_d128_bf16);
    }
    static auto attn_bwd(int d) {
        return d == 64 ? KERNEL(attn_bwd_d64_bf16) : KERNEL(attn_bwd_d128_bf16);
    }
};
// f32 outputs computed in f32 throughout even by the bf16 kernels (inv_rms, dw, lse, delta and
// the cross-entropy kernels) are held to this whatever the input dtype (observed max 1.4e-7).
constexpr double F32_TOL = 1e-5;

static std::mt19937 rng(1234);

template <typename T> std::vector<T> random_vec(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<T> v(n);
    for (auto& x : v) x = Dt<T>::store(dist(rng));
    return v;
}

template <typename T> double val(T v) { return Dt<T>::load(v); }

template <typename T> void check(const std::string& what, const std::vector<T>& got,
                                 const std::vector<double>& ref, double tol) {
    double max_ref = 0, max_err = 0;
    size_t worst = 0;
    bool nan = false;
    for (double r : ref) max_ref = std::max(max_ref, std::fabs(r));
    for (size_t i = 0; i < ref.size(); ++i) {
        const double g = val(got[i]);
        if (std::isnan(g)) nan = true;
        const double e = std::fabs(g - ref[i]);
        if (e > max_err || std::isnan(e)) max_err = e, worst = i;
    }
    const double rel = max_err / (max_ref > 0 ? max_ref : 1.0);
    const bool ok = !nan && rel <= tol;
    ++checks;
    if (!ok) ++failures;
    std::printf("  %-4s %-14s rel_err %.2e (tol %.0e)%s worst [%zu] got %.6g ref %.6g\n",
                ok ? "ok" : "FAIL", what.c_str(), rel, tol, nan ? " NaN" : "", worst,
                val(got[worst]), ref[worst]);
}

// ---------------------------------------------------------------------------------------------

template <typename T> void test_rms_norm(int rows, int h, int bwd_grid) {
    const float eps = 1e-5f;
    auto x = random_vec<T>((size_t)rows * h, -1, 1), w = random_vec<T>(h, 0.5, 1.5);
    auto dy = random_vec<T>((size_t)rows * h, -1, 1);
    std::vector<T> y(x.size(), Dt<T>::store(NAN));
    std::vector<float> inv(rows, NAN);
    launch(Dt<T>::rms_fwd, dim3(rows), dim3(256), x.data(), w.data(), y.data(), inv.data(), rows, h,
           eps);

    std::vector<double> y_ref(x.size()), inv_ref(rows), dx_ref(x.size()), dw_ref(h, 0.0);
    for (int r = 0; r < rows; ++r) {
        const size_t o = (size_t)r * h;
        double ss = 0, dot = 0;
        for (int i = 0; i < h; ++i) ss += val(x[o + i]) * val(x[o + i]);
        const double iv = 1.0 / std::sqrt(ss / h + eps);
        inv_ref[r] = iv;
        for (int i = 0; i < h; ++i) y_ref[o + i] = val(x[o + i]) * iv * val(w[i]);
        for (int i = 0; i < h; ++i) dot += val(dy[o + i]) * val(w[i]) * val(x[o + i]) * iv;
        for (int i = 0; i < h; ++i) {
            const double xh = val(x[o + i]) * iv;
            dx_ref[o + i] = (val(dy[o + i]) * val(w[i]) - xh * dot / h) * iv;
            dw_ref[i] += val(dy[o + i]) * xh;
        }
    }
    check("fwd y", y, y_ref, Dt<T>::tol);
    check("fwd inv_rms", inv, inv_ref, F32_TOL);

    // The backward gets the reference inv_rms, so it is tested on its own.
    std::vector<float> inv_in(inv_ref.begin(), inv_ref.end());
    std::vector<T> dx(x.size(), Dt<T>::store(NAN));
    std::vector<float> dw_partial((size_t)bwd_grid * h, 777.f);  // must be fully overwritten
    launch(Dt<T>::rms_bwd, dim3(bwd_grid), dim3(256), x.data(), w.data(), inv_in.data(), dy.data(),
           dx.data(), dw_partial.data(), rows, h);
    std::vector<float> dw(h, 0.f);
    for (int g = 0; g < bwd_grid; ++g)
        for (int i = 0; i < h; ++i) dw[i] += dw_partial[(size_t)g * h + i];
    check("bwd dx", dx, dx_ref, Dt<T>::tol);
    check("bwd dw", dw, dw_ref, F32_TOL);
}

template <typename T> void test_rope(int bh, int s, int d, int offset, float sign, int grid) {
    const int max_pos = offset + s + 3;
    std::vector<float> cos_t((size_t)max_pos * d), sin_t((size_t)max_pos * d);
    for (int p = 0; p < max_pos; ++p)
        for (int i = 0; i < d; ++i) {  // halves repeated, as Rope::new builds them
            const double a = p * std::pow(10000.0, -2.0 * (i % (d / 2)) / d);
            cos_t[(size_t)p * d + i] = (float)std::cos(a);
            sin_t[(size_t)p * d + i] = (float)std::sin(a);
        }
    auto x = random_vec<T>((size_t)bh * s * d, -1, 1);
    std::vector<T> y(x.size(), Dt<T>::store(NAN));
    launch(Dt<T>::rope, dim3(grid), dim3(256), x.data(), y.data(), cos_t.data(), sin_t.data(), bh,
           s, d, offset, sign);
    std::vector<double> y_ref(x.size());
    for (int r = 0; r < bh * s; ++r) {
        const size_t o = (size_t)r * d, tab = (size_t)(offset + r % s) * d;
        for (int i = 0; i < d; ++i) {
            const double rot = i < d / 2 ? -val(x[o + i + d / 2]) : val(x[o + i - d / 2]);
            y_ref[o + i] = val(x[o + i]) * cos_t[tab + i] + rot * sign * sin_t[tab + i];
        }
    }
    check("y", y, y_ref, Dt<T>::tol);
}

template <typename T> void test_swiglu(long long n, int grid) {
    auto gate = random_vec<T>(n, -8, 8), up = random_vec<T>(n, -1, 1),
         d_out = random_vec<T>(n, -1, 1);
    // Saturation: exp(-g) overflows or underflows, and the result must still not be NaN.
    const float extremes[] = {-100.f, 100.f, -1000.f, 1000.f};
    for (int i = 0; i < 4; ++i) gate[i] = Dt<T>::store(extremes[i]);
    std::vector<double> out_ref(n), dg_ref(n), du_ref(n);
    for (long long i = 0; i < n; ++i) {
        const double g = val(gate[i]), u = val(up[i]), d = val(d_out[i]);
        const double sig = 1.0 / (1.0 + std::exp(-g));
        out_ref[i] = g * sig * u;
        du_ref[i] = d * g * sig;
        dg_ref[i] = d * u * sig * (1 + g * (1 - sig));
    }
    std::vector<T> d_gate(n, Dt<T>::store(NAN)), d_up(n, Dt<T>::store(NAN));
    launch(Dt<T>::swiglu_bwd, dim3(grid), dim3(256), gate.data(), up.data(), d_out.data(),
           d_gate.data(), d_up.data(), n);
    // The forward runs in place (out = gate), which the kernel allows.
    launch(Dt<T>::swiglu_fwd, dim3(grid), dim3(256), gate.data(), up.data(), gate.data(), n);
    check("bwd d_gate", d_gate, dg_ref, Dt<T>::tol);
    check("bwd d_up", d_up, du_ref, Dt<T>::tol);
    check("fwd in place", gate, out_ref, Dt<T>::tol);
}

// Cross-entropy over a vocabulary split into blocks of vb. With several blocks, row 0 of the
// first one is all -inf: a fully masked block must leave the running state usable.
void test_cross_entropy(int n, int vocab, int vb) {
    auto z = random_vec<float>((size_t)n * vocab, -10, 10);
    if (vocab > vb)
        for (int j = 0; j < vb; ++j) z[j] = -INFINITY;
    std::vector<float> run_max(n, -INFINITY), run_sum(n, 0.f);
    for (int v0 = 0; v0 < vocab; v0 += vb) {
        const int width = std::min(vb, vocab - v0);
        std::vector<float> block((size_t)n * width);
        for (int r = 0; r < n; ++r)
            for (int j = 0; j < width; ++j)
                block[(size_t)r * width + j] = z[(size_t)r * vocab + v0 + j];
        launch(KERNEL(ce_lse_update), dim3(n), dim3(256), block.data(), run_max.data(),
               run_sum.data(), n, width);
    }
    std::vector<float> lse(n);
    std::vector<double> lse_ref(n);
    for (int r = 0; r < n; ++r) {
        lse[r] = run_max[r] + std::log(run_sum[r]);
        double m = -INFINITY, s = 0;
        for (int j = 0; j < vocab; ++j) m = std::max(m, (double)z[(size_t)r * vocab + j]);
        for (int j = 0; j < vocab; ++j) s += std::exp(z[(size_t)r * vocab + j] - m);
        lse_ref[r] = m + std::log(s);
    }
    check("lse", lse, lse_ref, F32_TOL);

    auto row_scale = random_vec<float>(n, 0, 1);
    std::vector<double> g_ref(z.size());
    for (size_t i = 0; i < z.size(); ++i)
        g_ref[i] = row_scale[i / vocab] * std::exp(z[i] - lse_ref[i / vocab]);
    std::vector<float> g = z;  // in place, which the kernel allows
    launch(KERNEL(ce_softmax_grad), dim3(n), dim3(256), g.data(), lse.data(), row_scale.data(),
           g.data(), n, vocab);
    check("softmax_grad", g, g_ref, F32_TOL);
}

// Forward, delta and backward of one attention problem. `misalign` shifts q, k, v and d_out by
// one element, which sends the kernels down their scalar (non-16-byte) load path.
template <typename T>
void test_attention(int d, int b, int h, int hkv, int sq, int sk, int causal, int misalign) {
    const size_t nq = (size_t)b * h * sq * d, nk = (size_t)b * hkv * sk * d,
                 nr = (size_t)b * h * sq;
    auto qb = random_vec<T>(nq + 1, -2, 2), kb = random_vec<T>(nk + 1, -2, 2);
    auto vb = random_vec<T>(nk + 1, -1, 1), dob = random_vec<T>(nq + 1, -1, 1);
    const T *q = qb.data() + misalign, *k = kb.data() + misalign, *v = vb.data() + misalign,
            *d_out = dob.data() + misalign;
    const float scale = 1.0f / std::sqrt((float)d);

    // Reference: plain softmax attention and its gradients, in double.
    std::vector<double> out_ref(nq), lse_ref(nr), delta_ref(nr), dq_ref(nq, 0), dk_ref(nk, 0),
        dv_ref(nk, 0);
    const int group = h / hkv, diag = sk - sq;
    for (int bi = 0; bi < b; ++bi)
        for (int hq = 0; hq < h; ++hq) {
            const size_t row0 = (size_t)(bi * h + hq) * sq,
                         ko = (size_t)(bi * hkv + hq / group) * sk * d;
            for (int i = 0; i < sq; ++i) {
                const size_t qo = (row0 + i) * d;
                const int keys = causal ? std::min(sk, diag + i + 1) : sk;
                std::vector<double> s(keys), p(keys);
                double m = -INFINITY, sum = 0, delta = 0;
                for (int j = 0; j < keys; ++j) {
                    double a = 0;
                    for (int c = 0; c < d; ++c)
                        a += val(q[qo + c]) * val(k[ko + (size_t)j * d + c]);
                    s[j] = a * scale;
                    m = std::max(m, s[j]);
                }
                for (int j = 0; j < keys; ++j) sum += std::exp(s[j] - m);
                lse_ref[row0 + i] = m + std::log(sum);
                for (int j = 0; j < keys; ++j) p[j] = std::exp(s[j] - lse_ref[row0 + i]);
                for (int c = 0; c < d; ++c) {
                    double o = 0;
                    for (int j = 0; j < keys; ++j) o += p[j] * val(v[ko + (size_t)j * d + c]);
                    out_ref[qo + c] = o;
                    delta += o * val(d_out[qo + c]);
                }
                delta_ref[row0 + i] = delta;
                for (int j = 0; j < keys; ++j) {
                    const size_t kj = ko + (size_t)j * d;
                    double dp = 0;
                    for (int c = 0; c < d; ++c) dp += val(d_out[qo + c]) * val(v[kj + c]);
                    const double ds = p[j] * (dp - delta);
                    for (int c = 0; c < d; ++c) {
                        dv_ref[kj + c] += p[j] * val(d_out[qo + c]);
                        dq_ref[qo + c] += scale * ds * val(k[kj + c]);
                        dk_ref[kj + c] += scale * ds * val(q[qo + c]);
                    }
                }
            }
        }

    std::vector<T> out(nq, Dt<T>::store(NAN));
    std::vector<float> lse(nr, NAN);
    launch(Dt<T>::attn_fwd(d), dim3((sq + 63) / 64, b * h), dim3(128), q, k, v, out.data(),
           lse.data(), b, h, hkv, sq, sk, scale, causal);
    check("fwd out", out, out_ref, Dt<T>::tol);
    check("fwd lse", lse, lse_ref, F32_TOL);

    // delta of the kernel's own out, against the same sum in double.
    std::vector<float> delta(nr, NAN);
    std::vector<double> delta_of_out(nr, 0);
    for (size_t r = 0; r < nr; ++r)
        for (int c = 0; c < d; ++c) delta_of_out[r] += val(out[r * d + c]) * val(d_out[r * d + c]);
    launch(Dt<T>::attn_delta, dim3((unsigned)(nr + 7) / 8), dim3(256), out.data(), d_out,
           delta.data(), (int)nr, d);
    check("bwd delta", delta, delta_of_out, F32_TOL);

    // The backward gets the reference lse and delta, so it is tested on its own.
    std::vector<float> lse_in(lse_ref.begin(), lse_ref.end());
    std::vector<float> delta_in(delta_ref.begin(), delta_ref.end());
    std::vector<float> dq(nq, 0.f), dk(nk, NAN), dv(nk, NAN);  // the caller zeroes dq
    launch(Dt<T>::attn_bwd(d), dim3((sk + 31) / 32, b * hkv), dim3(128), q, k, v, lse_in.data(),
           delta_in.data(), d_out, dq.data(), dk.data(), dv.data(), b, h, hkv, sq, sk, scale,
           causal);
    check("bwd dq", dq, dq_ref, Dt<T>::tol);
    check("bwd dk", dk, dk_ref, Dt<T>::tol);
    check("bwd dv", dv, dv_ref, Dt<T>::tol);
}

// ---------------------------------------------------------------------------------------------

struct Case {
    std::string name;
    std::function<void()> run;
};

template <typename T> void add_cases(std::vector<Case>& cases) {
    const std::string t = Dt<T>::name;
    auto add = [&](std::string name, std::function<void()> run) {
        cases.push_back({name + " " + t, run});
    };
    add("rms_norm rows=5 h=300 bwd_grid=2", [] { test_rms_norm<T>(5, 300, 2); });
    add("rms_norm rows=3 h=7 bwd_grid=3", [] { test_rms_norm<T>(3, 7, 3); });
    add("rope bh=3 s=5 d=64 offset=4 fwd grid=7", [] { test_rope<T>(3, 5, 64, 4, 1.f, 7); });
    add("rope bh=2 s=3 d=128 offset=0 bwd grid=1", [] { test_rope<T>(2, 3, 128, 0, -1.f, 1); });
    add("swiglu n=1000 grid=3", [] { test_swiglu<T>(1000, 3); });
    // Attention: (d, b, h, hkv, sq, sk, causal, misalign). Causal with 2 query tiles, ragged key
    // tiles, a diagonal offset and GQA over 2 kv heads; non-causal with sk < sq, 2 batches, GQA
    // group 3 and misaligned inputs; single-query and single-key corners (with one key, dq and dk
    // are exactly 0).
    for (int d : {64, 128}) {
        const std::string ds = " d=" + std::to_string(d);
        add("attention" + ds + " b=1 h=4 hkv=2 sq=70 sk=101 causal",
            [d] { test_attention<T>(d, 1, 4, 2, 70, 101, 1, 0); });
        add("attention" + ds + " b=2 h=3 hkv=1 sq=37 sk=20 misaligned",
            [d] { test_attention<T>(d, 2, 3, 1, 37, 20, 0, 1); });
    }
    add("attention d=64 b=1 h=2 hkv=2 sq=1 sk=1 causal",
        [] { test_attention<T>(64, 1, 2, 2, 1, 1, 1, 0); });
    add("attention d=128 b=1 h=1 hkv=1 sq=1 sk=5 causal misaligned",
        [] { test_attention<T>(128, 1, 1, 1, 1, 5, 1, 1); });
}

extern "C" void on_alarm(int) {
    const char msg[] = "emulator: timed out (a barrier that not every thread reaches?)\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(3);
}

int main(int argc, char** argv) {
    // A kernel whose threads disagree on a barrier deadlocks here (on a GPU it is undefined
    // behaviour); fail instead of hanging CI. Line buffering keeps the output up to that point.
    std::signal(SIGALRM, on_alarm);
    alarm(120);
    std::setvbuf(stdout, nullptr, _IOLBF, 0);

    const std::string filter = argc > 1 ? argv[1] : "";
    std::vector<Case> cases;
    add_cases<float>(cases);
    add_cases<bf16>(cases);
    cases.push_back(
        {"cross_entropy n=3 vocab=1000 vb=300 f32", [] { test_cross_entropy(3, 1000, 300); }});
    cases.push_back(
        {"cross_entropy n=2 vocab=50 vb=64 f32", [] { test_cross_entropy(2, 50, 64); }});
    for (const Case& c : cases)
        if (c.name.find(filter) != std::string::npos) {
            std::printf("%s\n", c.name.c_str());
            c.run();
        }

    std::printf("launched:");
    for (const auto& name : launched) std::printf(" %s", name.c_str());
    std::printf("\n%d checks, %d failures\n", checks, failures);
    return failures == 0 && checks > 0 ? 0 : 1;
}
