//! The CUDA toolkit of a GPU build, installed from PyPI wheels into the project-local venv
//! `.venv-cuda` (Debian offers no CUDA toolkit; the wheels carry nvcc, its helpers and the
//! libraries). The pins live in `gpu/requirements-cuda.txt`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// CUDA version of the pinned wheels, as cudarc spells it (`CUDARC_CUDA_VERSION`).
pub const CUDARC_CUDA_VERSION: &str = "13000";
/// H100 / H200.
pub const COMPUTE_CAP: &str = "90";

/// Where the pinned wheels put things.
#[derive(Debug, Clone)]
pub struct Toolkit {
    /// The venv's `site-packages/nvidia`.
    pub nvidia: PathBuf,
}

impl Toolkit {
    /// `nvidia/cu13`: bin/nvcc, include, lib (cudart, cublas, curand, nvrtc).
    pub fn cuda_home(&self) -> PathBuf {
        self.nvidia.join("cu13")
    }

    /// Directory of nvcc, ptxas, fatbinary.
    pub fn bin(&self) -> PathBuf {
        self.cuda_home().join("bin")
    }

    /// Directories holding the shared libraries a CUDA build links against.
    pub fn lib_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.cuda_home().join("lib"),
            self.nvidia.join("nccl").join("lib"),
        ]
    }
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Creates `.venv-cuda` if needed and installs the pinned wheels (pip skips what is there).
pub fn install(root: &Path) -> Result<Toolkit> {
    let venv = root.join(".venv-cuda");
    let python = venv.join("bin/python");
    if !python.exists() {
        println!("gpu-build: creating {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 -m venv (Debian: apt-get install python3-venv)")?;
    }
    let requirements = root.join("gpu/requirements-cuda.txt");
    println!("gpu-build: installing {}", requirements.display());
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    locate(&python)
}

fn locate(python: &Path) -> Result<Toolkit> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .context("asking the venv's python for site-packages")?;
    let site = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let toolkit = Toolkit {
        nvidia: site.join("nvidia"),
    };
    let nvcc = toolkit.bin().join("nvcc");
    if !nvcc.exists() {
        bail!(
            "{} is missing after installing the wheels (is gpu/requirements-cuda.txt intact?)",
            nvcc.display()
        );
    }
    Ok(toolkit)
}
