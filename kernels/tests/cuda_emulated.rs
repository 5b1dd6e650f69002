//! Runs the hand-written CUDA kernels (`cuda/*.cu`) on the CPU, so that CI, which has neither a
//! GPU nor the CUDA toolkit, still tests the real kernel sources.
//!
//! The `.cu` files are compiled unchanged with the host C++ compiler (`c++`, or `$CXX`) against
//! the emulator in `cuda/emu/`: one host thread per CUDA thread with real block and warp
//! barriers, shuffles and atomics, and small stand-ins for `<cuda_bf16.h>` and `<mma.h>`. The
//! driver `cuda/emu/test.cpp` launches every kernel with its documented launch configuration on
//! ragged shapes (partial tiles, GQA, causal with `sk != sq`, misaligned pointers) and compares
//! with double-precision references. A second build with one deliberate bug (an off-by-one
//! causal bound) must fail, which shows the comparison has teeth.
//!
//! What this cannot catch: mistakes that depend on the hardware wmma fragment layout (the mock
//! uses a different one on purpose, so layout assumptions fail rather than pass), timing,
//! occupancy and register or shared-memory limits, nvcc-only compile errors, and bugs that only
//! the GPU's weaker memory model exposes. The `cuda` feature is not needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Instant;

/// The translation units in `cuda/`, as `build.rs` compiles them; attention first, because the
/// mutant build swaps it out.
const SOURCES: [&str; 5] = ["attention", "rms_norm", "rope", "swiglu", "cross_entropy"];

/// Every kernel of the launch table in `cuda/LAUNCH.md`; the driver must launch them all.
const KERNELS: [&str; 22] = [
    "rms_norm_fwd_f32",
    "rms_norm_fwd_bf16",
    "rms_norm_bwd_f32",
    "rms_norm_bwd_bf16",
    "rope_f32",
    "rope_bf16",
    "swiglu_fwd_f32",
    "swiglu_fwd_bf16",
    "swiglu_bwd_f32",
    "swiglu_bwd_bf16",
    "ce_lse_update",
    "ce_softmax_grad",
    "attn_fwd_d64_f32",
    "attn_fwd_d64_bf16",
    "attn_fwd_d128_f32",
    "attn_fwd_d128_bf16",
    "attn_bwd_delta_f32",
    "attn_bwd_delta_bf16",
    "attn_bwd_d64_f32",
    "attn_bwd_d64_bf16",
    "attn_bwd_d128_f32",
    "attn_bwd_d128_bf16",
];

/// The planted bug: in both attention forwards, each query also sees the first key past its
/// causal bound (`j <= diag + i + 1`).
const MUTATION: (&str, &str) = ("imin(sk - 1, diag + qi)", "imin(sk - 1, diag + qi + 1)");
/// Driver cases the mutant runs (both dtypes): causal, with a diagonal offset.
const MUTANT_FILTER: &str = "d=64 b=1 h=4 hkv=2 sq=70 sk=101 causal";

/// C++20 for `std::barrier`; -O1 keeps compiling cheap; no strict aliasing because the kernels
/// copy bf16 rows through `uint4`, which CUDA allows; `#pragma unroll` means nothing here.
const CXXFLAGS: [&str; 6] = [
    "-std=c++20",
    "-O1",
    "-pthread",
    "-fno-strict-aliasing",
    "-Wall",
    "-Wno-unknown-pragmas",
];

#[test]
fn cuda_kernels_match_references_under_emulation() {
    let start = Instant::now();
    let cxx = find_compiler();
    let cuda = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let emu = cuda.join("emu");
    let dir = unique_temp_dir();

    let attention = std::fs::read_to_string(cuda.join("attention.cu")).unwrap();
    assert!(
        attention.contains(MUTATION.0),
        "cuda/attention.cu no longer contains `{}`: update MUTATION so the test still plants a \
         causal-bound bug",
        MUTATION.0
    );
    let mutant_src = dir.join("attention_mutant.cu");
    std::fs::write(&mutant_src, attention.replace(MUTATION.0, MUTATION.1)).unwrap();

    // Compile every translation unit (longest first), at most one job per core.
    let mut units: Vec<PathBuf> = vec![emu.join("test.cpp"), mutant_src];
    units.extend(SOURCES.iter().map(|s| cuda.join(format!("{s}.cu"))));
    let object = |src: &Path| dir.join(src.file_stem().unwrap()).with_extension("o");
    let jobs = units
        .iter()
        .map(|src| {
            let mut cmd = cxx.command();
            // `cuda/` for `common.cuh`: the mutant is compiled from the temp directory.
            cmd.args(CXXFLAGS)
                .arg("-I")
                .arg(emu.join("include"))
                .arg("-I")
                .arg(&cuda);
            if src.extension().is_some_and(|e| e == "cu") {
                cmd.arg("-include")
                    .arg(emu.join("emu.h"))
                    .args(["-x", "c++"]);
            }
            cmd.arg("-c").arg(src).arg("-o").arg(object(src));
            (src.display().to_string(), cmd)
        })
        .collect();
    run_parallel(jobs, &dir);
    let link = |name: &str, attention_object: &Path| {
        let exe = dir.join(name);
        let mut cmd = cxx.command();
        cmd.arg("-pthread")
            .arg(object(&emu.join("test.cpp")))
            .arg(attention_object);
        for s in &SOURCES[1..] {
            cmd.arg(dir.join(format!("{s}.o")));
        }
        let out = cmd.arg("-o").arg(&exe).output().unwrap();
        assert!(
            out.status.success(),
            "linking {name} failed:\n{}",
            text(&out)
        );
        exe
    };
    let driver = link("emu_test", &dir.join("attention.o"));
    let mutant = link("emu_test_mutant", &dir.join("attention_mutant.o"));
    let built = start.elapsed();

    // The real kernels: every check passes and every kernel was launched.
    let out = Command::new(&driver).output().unwrap();
    let report = text(&out);
    println!("{report}");
    assert!(
        out.status.success(),
        "the emulated CUDA kernels disagree with the references (or crashed: {}); driver output \
         above, build in {}",
        out.status,
        dir.display()
    );
    let launched: Vec<&str> = report
        .lines()
        .find_map(|l| l.strip_prefix("launched:"))
        .expect("the driver prints the kernels it launched")
        .split_whitespace()
        .collect();
    let missing: Vec<&str> = KERNELS
        .into_iter()
        .filter(|k| !launched.contains(k))
        .collect();
    assert!(missing.is_empty(), "kernels never launched: {missing:?}");

    // The planted bug: the driver must run to the end (exit 1, no crash) and flag the output.
    let out = Command::new(&mutant).arg(MUTANT_FILTER).output().unwrap();
    let mutant_report = text(&out);
    assert!(
        out.status.code() == Some(1) && mutant_report.contains("FAIL fwd out"),
        "the off-by-one causal mask went unnoticed ({}):\n{mutant_report}",
        out.status
    );

    println!(
        "{} kernels checked; the causal off-by-one mutant fails as it should; build {:.1} s, \
         total {:.1} s",
        KERNELS.len(),
        built.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    // Kept on failure (the assertions above name it) for a look at the objects and binaries.
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `$CXX` (program plus optional leading arguments, e.g. `ccache g++`) or `c++`.
struct Compiler {
    program: String,
    args: Vec<String>,
}

impl Compiler {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd
    }
}

/// A missing compiler fails the test rather than skipping it: a silently skipped test would
/// leave the kernels untested in CI without anyone noticing.
fn find_compiler() -> Compiler {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let mut words = cxx.split_whitespace().map(String::from);
    let compiler = Compiler {
        program: words.next().expect("CXX is set but empty"),
        args: words.collect(),
    };
    match compiler.command().arg("--version").output() {
        Ok(out) if out.status.success() => compiler,
        result => panic!(
            "no working C++ compiler (`{cxx}`: {}). This test compiles the CUDA kernels for a \
             CPU emulator and needs a C++20 compiler: install g++ (apt-get install g++) or set CXX.",
            match result {
                Ok(out) => text(&out),
                Err(e) => e.to_string(),
            }
        ),
    }
}

fn unique_temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "seqpipe-cuda-emulated-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the labelled commands on as many threads as there are cores; panics with the
/// compiler's messages if any fails.
fn run_parallel(jobs: Vec<(String, Command)>, dir: &Path) {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let queue = Mutex::new(jobs.into_iter());
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some((label, mut cmd)) = queue.lock().unwrap().next() else {
                    break;
                };
                let out = cmd.output().unwrap();
                if !out.status.success() {
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("compiling {label} failed:\n{}", text(&out)));
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap();
    assert!(
        errors.is_empty(),
        "{}\n(build in {})",
        errors.join("\n"),
        dir.display()
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
