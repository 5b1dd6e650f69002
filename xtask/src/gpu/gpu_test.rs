//! `xtask gpu-test` (GPU machine): every kernel against the CPU path and PyTorch, the trainer's
//! oracle on CUDA, and the NCCL checks; one Markdown table at the end, written to
//! `out/gpu/gpu-test.md` too. Exits non-zero when any check fails.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use super::cases::{self, rel_err};
use super::report::Report;
use super::{nccl_check, oracle, torch};

/// Largest relative error (to the reference's max-abs) a kernel output may have.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        // Same f32 arithmetic, another summation order.
        DType::F32 => 1e-4,
        // bf16 outputs (8 significant bits) and bf16 probabilities in the attention matmuls.
        _ => 3e-2,
    }
}

fn verdict(err: f64, tol: f64) -> &'static str {
    if err <= tol {
        "ok"
    } else {
        "FAIL"
    }
}

/// The GPU's name and driver, from nvidia-smi when present.
pub fn device_description() -> String {
    std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown GPU (no nvidia-smi)".into())
}

/// An error and its causes on one line, for a table cell.
pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace(['\n', '|'], " ")
}

/// Opens GPU 0 or explains what is missing.
pub fn open_gpu() -> Result<Device> {
    Device::new_cuda(0).context(
        "opening CUDA device 0: needs the NVIDIA driver (libcuda.so.1) and the CUDA 13 \
         libraries (libcublas, libcublasLt, libcurand, libnvrtc) on the loader path",
    )
}

/// Runs everything; `script` is `gpu/torch_ref.py`, `out` the output directory.
pub fn run(script: &Path, out: &Path, parts: &[String]) -> Result<()> {
    let part = |name: &str| parts.iter().any(|p| p == name);
    let gpu = open_gpu()?;
    std::fs::create_dir_all(out)?;
    let mut md = Report::create(&out.join("gpu-test.md"))?;
    let mut failures = 0;
    writeln!(
        md,
        "# seqpipe gpu-test\n\ndevice: {}\n",
        device_description()
    )?;
    if part("kernels") {
        failures += kernel_rows(&mut md, script, out, &gpu)?;
    }

    if part("oracle") {
        writeln!(md, "\n## Trainer oracle on CUDA (stages as threads on one GPU) vs single-device f64 on the CPU\n")?;
        writeln!(
            md,
            "| run | loss rel. err | worst grad rel. err (tensor) | bound | |\n|---|---|---|---|---|"
        )?;
        oracle::run(&gpu, |row| {
            failures += usize::from(!row.passed());
            if let Some(e) = &row.error {
                writeln!(
                    md,
                    "| {} | error: {} | | {:.0e} | FAIL |",
                    row.label, e, row.bound
                )?;
                return Ok(());
            }
            writeln!(
                md,
                "| {} | {:.2e} | {:.2e} ({}) | {:.0e} | {} |",
                row.label,
                row.loss_err,
                row.grad_err.0,
                row.grad_err.1,
                row.bound,
                verdict(row.loss_err.max(row.grad_err.0), row.bound)
            )?;
            Ok(())
        })?;
    }
    if part("nccl") {
        writeln!(md, "\n## NCCL\n\n| check | outcome |\n|---|---|")?;
        for row in nccl_check::run()? {
            failures += usize::from(row.outcome.starts_with("FAIL"));
            writeln!(md, "| {} | {} |", row.check, row.outcome.replace('\n', " "))?;
        }
    }
    if failures > 0 {
        bail!(
            "{failures} GPU check(s) failed (table above, also in {})",
            md.path().display()
        );
    }
    Ok(())
}

/// Every kernel case on the GPU against the CPU path and PyTorch; returns the failures.
fn kernel_rows(md: &mut Report, script: &Path, out: &Path, gpu: &Device) -> Result<usize> {
    let mut failures = 0;
    seqpipe_kernels::cuda::poison_outputs(true);
    writeln!(
        md,
        "## Kernels (outputs poisoned with NaN before every launch)\n"
    )?;
    writeln!(md, "| case | dtype | output | vs CPU path | vs PyTorch | tolerance | |\n|---|---|---|---|---|---|---|")?;
    let all = cases::all()?;
    for dtype in [DType::F32, DType::BF16] {
        let work = out.join(format!("torch-{dtype:?}"));
        let torch_ref = torch::reference(script, &work, &all, dtype);
        if let Ok((about, _)) = &torch_ref {
            writeln!(md, "| PyTorch reference | {dtype:?} | {about} | | | | |")?;
        }
        for case in &all {
            // A case that fails to run is a FAIL row; the other cases still run.
            let got = match cases::run(case, gpu, dtype) {
                Ok(got) => got,
                Err(e) => {
                    failures += 1;
                    writeln!(
                        md,
                        "| {} | {dtype:?} | (all) | error: {} | | | FAIL |",
                        case.name,
                        one_line(&e)
                    )?;
                    continue;
                }
            };
            let cpu = cases::run(case, &Device::Cpu, dtype)?;
            for (name, g) in &got {
                let e_cpu = rel_err(g, &cpu[name])?;
                let e_torch = match &torch_ref {
                    Ok((_, refs)) => refs
                        .get(&case.name)
                        .and_then(|r| r.get(name))
                        .map(|t| rel_err(g, t))
                        .transpose()?
                        .unwrap_or(f64::NAN),
                    Err(_) => f64::NAN,
                };
                let tol = tolerance(dtype);
                let ok = e_cpu <= tol && e_torch <= tol;
                failures += usize::from(!ok);
                writeln!(
                    md,
                    "| {} | {dtype:?} | {name} | {e_cpu:.2e} | {e_torch:.2e} | {tol:.0e} | {} |",
                    case.name,
                    if ok { "ok" } else { "FAIL" }
                )?;
            }
        }
        if let Err(e) = torch_ref {
            failures += 1;
            writeln!(md, "\nPyTorch reference for {dtype:?} failed: {e:#}\n")?;
        }
    }
    seqpipe_kernels::cuda::poison_outputs(false);
    Ok(failures)
}
