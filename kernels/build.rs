//! Compiles `cuda/*.cu` to PTX with nvcc when the `cuda` feature is on; does nothing otherwise,
//! so the default build and `cargo test --workspace` never need nvcc.
//!
//! PTX is built at build time rather than with NVRTC at run time: compile errors surface on the
//! build machine (`cargo xtask gpu-build`), the binary needs no NVRTC for our kernels, and the
//! target (`sm_$CUDA_COMPUTE_CAP`, default 90 for H100/H200) is fixed where the toolkit is pinned.

use std::path::PathBuf;
use std::process::Command;

const SOURCES: [&str; 5] = ["rms_norm", "rope", "swiglu", "attention", "cross_entropy"];

fn main() {
    println!("cargo:rerun-if-changed=cuda");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    for name in SOURCES {
        let src = format!("cuda/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
            .arg(format!("-arch=sm_{cap}"))
            .arg(&src)
            .arg("-o")
            .arg(&ptx)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("nvcc failed on {src} ({s}); see the messages above"),
            Err(e) => panic!(
                "the `cuda` feature needs nvcc on PATH ({e}); `cargo xtask gpu-build` installs \
                 the pinned toolkit into .venv-cuda and sets PATH"
            ),
        }
    }
}
