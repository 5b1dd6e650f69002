//! `cargo xtask gpu-build`: the CUDA binaries, built on a CPU-only machine.
//!
//! Installs the pinned toolkit wheels, prepares the link directory (unversioned symlinks and
//! the driver stub), builds `seqpipe` with `cuda,nccl` and `xtask` with `cuda` (which carries
//! `gpu-test` and `bench gpu`) in their own target directory, and copies them, stripped, to
//! `target/gpu/bin/` and, gzipped together, to `target/gpu/carry.tar.gz`. Last it lists what the
//! binaries need at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::link_stubs;
use super::toolkit::{self, run, Toolkit};

/// Where the carried binaries go, relative to the workspace root.
pub const DIST: &str = "target/gpu/bin";

/// Builds everything; returns the binaries' paths.
pub fn gpu_build(root: &Path) -> Result<Vec<PathBuf>> {
    let toolkit = toolkit::install(root)?;
    let link = root.join("target/gpu/link");
    link_stubs::prepare(&link, &toolkit, &cudarc_source(root)?)?;
    let builds: [(&str, &str, &str); 2] = [
        ("seqpipe-trainer", "seqpipe", "cuda,nccl"),
        ("xtask", "xtask", "cuda"),
    ];
    let dist = root.join(DIST);
    std::fs::create_dir_all(&dist)?;
    let mut built = Vec::new();
    for (package, bin, features) in builds {
        println!("gpu-build: cargo build --release -p {package} --features {features}");
        run(cuda_cargo(root, &toolkit, &link).args([
            "build",
            "--release",
            "-p",
            package,
            "--bin",
            bin,
            "--features",
            features,
        ]))?;
        let from = root.join("target/gpu-build/release").join(bin);
        let to = dist.join(bin);
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        built.push(to);
    }
    report(&built)?;
    // The binaries embed candle's PTX (mostly text): gzip makes the pair fit the 64 MiB that a
    // device machine takes with the working tree. `gpu/run-on-gpu.sh` unpacks it.
    let archive = root.join(CARRY);
    run(Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(root.join("target/gpu"))
        .arg("bin"))?;
    let size = std::fs::metadata(&archive)?.len();
    println!(
        "  {} ({:.1} MiB): both binaries, for carrying",
        archive.display(),
        size as f64 / (1 << 20) as f64
    );
    Ok(built)
}

/// The compressed binaries, relative to the workspace root.
pub const CARRY: &str = "target/gpu/carry.tar.gz";

/// `cargo` with the environment of a CUDA build: the wheels' nvcc first on `PATH`, the CUDA
/// version and compute capability fixed (so nothing probes a GPU), our link directory, and a
/// target directory of its own so the CPU build's cache stays valid.
fn cuda_cargo(root: &Path, toolkit: &Toolkit, link: &Path) -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .env("PATH", format!("{}:{path}", toolkit.bin().display()))
        .env("CUDA_HOME", toolkit.cuda_home())
        .env("CUDA_PATH", toolkit.cuda_home())
        .env("CUDA_COMPUTE_CAP", toolkit::COMPUTE_CAP)
        .env("CUDARC_CUDA_VERSION", toolkit::CUDARC_CUDA_VERSION)
        .env("CARGO_TARGET_DIR", root.join("target/gpu-build"))
        .env("RUSTFLAGS", format!("-L native={}", link.display()))
        // Small binaries: the device machine takes 64 MiB of carried files.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    cmd
}

/// cudarc's source directory, from cargo's own resolution of the CUDA features.
fn cudarc_source(root: &Path) -> Result<PathBuf> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--all-features"])
        .output()
        .context("cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "cudarc")
        .and_then(|p| p["manifest_path"].as_str())
        .context("cudarc is not in the resolved dependencies with --all-features")?;
    Ok(PathBuf::from(manifest)
        .parent()
        .context("cudarc's manifest has no directory")?
        .to_path_buf())
}

/// Prints each binary's size and the shared libraries it needs (ELF `NEEDED` entries).
fn report(built: &[PathBuf]) -> Result<()> {
    println!("\ngpu-build: done. Carry these to the GPU machine:");
    for bin in built {
        let size = std::fs::metadata(bin)?.len();
        println!(
            "  {} ({:.1} MiB)",
            bin.display(),
            size as f64 / (1 << 20) as f64
        );
        let out = Command::new("readelf").arg("-d").arg(bin).output();
        if let Ok(out) = out {
            let needed: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("(NEEDED)"))
                .filter_map(|l| {
                    l.split('[')
                        .nth(1)
                        .map(|s| s.trim_end_matches(']').to_string())
                })
                .collect();
            println!("    needs at run time: {}", needed.join(", "));
        }
    }
    println!(
        "  The GPU machine must provide libcuda.so.1 (its driver) and the CUDA 13 libraries above\n  \
         on the loader path; `xtask gpu-test` looks in the usual places and says what is missing."
    );
    Ok(())
}
