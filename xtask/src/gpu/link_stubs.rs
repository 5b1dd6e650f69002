//! What the linker needs for a CUDA build on a machine without a GPU.
//!
//! candle turns on cudarc's `dynamic-linking`, so the binary is linked against `libcuda`,
//! `libcublas`, `libcublasLt`, `libcurand`, `libnvrtc` and `libnccl`. The wheels ship the
//! libraries only under their versioned names (`libcublas.so.13`), so the link directory gets
//! unversioned symlinks. `libcuda` belongs to the driver, which a build machine lacks: the link
//! directory gets a stub with the soname `libcuda.so.1` that defines every driver entry point
//! cudarc can call. The binary then records `libcuda.so.1`, and the GPU machine's real driver
//! library is what the loader finds there; the stub never ships.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::toolkit::{run, Toolkit};

/// Libraries linked by unversioned name: (link name, file prefix in the wheels).
const LINKED: [&str; 6] = ["cublas", "cublasLt", "curand", "nvrtc", "nccl", "cudart"];

/// Makes `dir` hold `lib<name>.so` for every linked library and the `libcuda` stub.
pub fn prepare(dir: &Path, toolkit: &Toolkit, cudarc_src: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in LINKED {
        let real = versioned(toolkit, name)?;
        let link = dir.join(format!("lib{name}.so"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link)
            .with_context(|| format!("linking {} → {}", link.display(), real.display()))?;
    }
    driver_stub(dir, cudarc_src)
}

/// `lib<name>.so.<N>` in the toolkit's library directories.
fn versioned(toolkit: &Toolkit, name: &str) -> Result<PathBuf> {
    let prefix = format!("lib{name}.so.");
    for d in toolkit.lib_dirs() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().to_string();
            // `libnvrtc.so.13`, not `libnvrtc-builtins.so.13.0` or `libnvrtc.alt.so.13`.
            if file.starts_with(&prefix) && file[prefix.len()..].chars().all(|c| c.is_ascii_digit())
            {
                return Ok(e.path());
            }
        }
    }
    bail!(
        "no {prefix}<N> in {:?}: the pinned wheels in gpu/requirements-cuda.txt provide it",
        toolkit.lib_dirs()
    )
}

/// Every driver symbol cudarc's bindings load (`load::<_F>("cuXxx")` in `driver/sys`).
fn driver_symbols(cudarc_src: &Path) -> Result<Vec<String>> {
    let file = cudarc_src.join("src/driver/sys/mod.rs");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let marker = "load::<_F>(\"";
    let mut names: Vec<String> = text
        .match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = &text[i + marker.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect();
    names.sort();
    names.dedup();
    if names.len() < 100 {
        bail!(
            "found only {} driver symbols in {}: cudarc's layout changed",
            names.len(),
            file.display()
        );
    }
    Ok(names)
}

fn driver_stub(dir: &Path, cudarc_src: &Path) -> Result<()> {
    let mut c = String::from(
        "/* Link-time stand-in for the NVIDIA driver library; never loaded at run time. */\n",
    );
    for name in driver_symbols(cudarc_src)? {
        // 999 is CUDA_ERROR_UNKNOWN, should the stub ever be called by mistake.
        writeln!(c, "int {name}(void) {{ return 999; }}")?;
    }
    let source = dir.join("libcuda_stub.c");
    std::fs::write(&source, c)?;
    run(Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(dir.join("libcuda.so"))
        .arg(&source))
    .context("building the libcuda link stub (needs a C compiler: apt-get install gcc)")
}
