//! The PyTorch bridge of `gpu-test`: writes each case's inputs as raw little-endian files with a
//! JSON manifest, runs `gpu/torch_ref.py` in the GPU machine's Python, and reads its float32
//! outputs back. Raw files keep the Python side to numpy and torch, which that machine has.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::cases::{Case, Named};

fn write_tensor(dir: &Path, file: &str, t: &Tensor) -> Result<serde_json::Value> {
    let (dtype, bytes): (&str, Vec<u8>) = match t.dtype() {
        DType::U32 => (
            "u32",
            t.flatten_all()?
                .to_vec1::<u32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        _ => (
            "f32",
            t.flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
    };
    std::fs::write(dir.join(file), bytes)?;
    Ok(serde_json::json!({"shape": t.dims(), "dtype": dtype, "file": file}))
}

/// Runs the PyTorch reference of every case, with inputs rounded to `dtype` first; returns
/// (PyTorch version and device, outputs per case).
pub fn reference(
    script: &Path,
    work: &Path,
    cases: &[Case],
    dtype: DType,
) -> Result<(String, BTreeMap<String, Named>)> {
    std::fs::create_dir_all(work)?;
    let mut listed = Vec::new();
    for case in cases {
        let mut inputs = serde_json::Map::new();
        for (name, t) in &case.inputs {
            let rounded = if t.dtype() == DType::U32 || name == "mask" {
                t.clone()
            } else {
                t.to_dtype(dtype)?
            };
            let file = format!("{}.{name}.in", case.name);
            inputs.insert(name.clone(), write_tensor(work, &file, &rounded)?);
        }
        listed.push(serde_json::json!({"name": case.name, "op": case.op, "params": case.params, "inputs": inputs}));
    }
    std::fs::write(
        work.join("manifest.json"),
        serde_json::to_string_pretty(&serde_json::json!({"cases": listed}))?,
    )?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(script)
        .arg(work)
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("torch/manifest.json"))?)?;
    let mut all = BTreeMap::new();
    for (case, outs) in manifest["outputs"]
        .as_object()
        .context("torch manifest has no outputs")?
    {
        let mut named = Named::new();
        for (name, spec) in outs.as_object().context("outputs of a case")? {
            let shape: Vec<usize> = serde_json::from_value(spec["shape"].clone())?;
            let file = spec["file"].as_str().context("output file")?;
            let bytes = std::fs::read(work.join("torch").join(file))?;
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            named.insert(
                name.clone(),
                Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?,
            );
        }
        all.insert(case.clone(), named);
    }
    let about = format!(
        "torch {} on {}",
        manifest["torch"].as_str().unwrap_or("?"),
        manifest["device"].as_str().unwrap_or("?")
    );
    Ok((about, all))
}
