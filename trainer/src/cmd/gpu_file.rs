//! `seqpipe plan --gpu FILE.toml`: a cluster described by the user — a GPU preset to start from
//! and the figures measured on the real machine (compute, HBM, host link, NVLink domain and
//! network), in the units people quote them in.
//!
//! ```toml
//! base = "h100"            # the preset every unset figure comes from
//! achieved_tflops = 400    # PipeOffload's B_c
//! memory_gbps = 3000       # HBM
//! [interconnect]
//! gpus_per_node = 8
//! nvlink_gbps = 370        # per GPU, each direction (NCCL's bus bandwidth)
//! network_gbps = 45
//! latency_us = 8
//! ```

use std::path::Path;

use anyhow::{bail, Context};
use seqpipe_memory::{gpu_preset, GpuPreset, Interconnect};
use serde::Deserialize;

/// The file's fields; every figure is optional and overrides `base`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuFile {
    base: String,
    peak_tflops: Option<f64>,
    achieved_tflops: Option<f64>,
    host_link_gbps: Option<f64>,
    memory_gb: Option<f64>,
    memory_gbps: Option<f64>,
    interconnect: Option<InterconnectFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterconnectFile {
    gpus_per_node: Option<u64>,
    nvlink_gbps: Option<f64>,
    network_gbps: Option<f64>,
    latency_us: Option<f64>,
}

/// A preset by name, or the cluster a `.toml` file describes.
pub fn resolve_gpu(spec: &str) -> anyhow::Result<GpuPreset> {
    if !spec.ends_with(".toml") {
        return Ok(gpu_preset(spec)?);
    }
    let path = Path::new(spec);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --gpu {}", path.display()))?;
    let file: GpuFile =
        toml::from_str(&text).with_context(|| format!("in --gpu {}", path.display()))?;
    from_file(&file).with_context(|| format!("in --gpu {}", path.display()))
}

fn from_file(f: &GpuFile) -> anyhow::Result<GpuPreset> {
    let mut gpu = gpu_preset(&f.base)?;
    gpu.name = "custom";
    let scaled = [
        ("peak_tflops", f.peak_tflops, 1e12, &mut gpu.peak_flops),
        (
            "achieved_tflops",
            f.achieved_tflops,
            1e12,
            &mut gpu.achieved_flops,
        ),
        (
            "host_link_gbps",
            f.host_link_gbps,
            1e9,
            &mut gpu.host_link_bytes_per_s,
        ),
        ("memory_gb", f.memory_gb, 1e9, &mut gpu.memory_bytes),
        (
            "memory_gbps",
            f.memory_gbps,
            1e9,
            &mut gpu.memory_bytes_per_s,
        ),
    ];
    for (key, value, unit, field) in scaled {
        if let Some(v) = value {
            *field = positive(key, v)? * unit;
        }
    }
    if let Some(i) = &f.interconnect {
        gpu.interconnect = interconnect(gpu.interconnect, i)?;
    }
    Ok(gpu)
}

fn interconnect(mut net: Interconnect, i: &InterconnectFile) -> anyhow::Result<Interconnect> {
    if let Some(n) = i.gpus_per_node {
        if n == 0 {
            bail!("interconnect.gpus_per_node = 0: a node holds at least 1 GPU");
        }
        net.gpus_per_node = n;
    }
    let scaled = [
        (
            "interconnect.nvlink_gbps",
            i.nvlink_gbps,
            1e9,
            &mut net.nvlink_bytes_per_s,
        ),
        (
            "interconnect.network_gbps",
            i.network_gbps,
            1e9,
            &mut net.network_bytes_per_s,
        ),
        (
            "interconnect.latency_us",
            i.latency_us,
            1e-6,
            &mut net.latency_s,
        ),
    ];
    for (key, value, unit, field) in scaled {
        if let Some(v) = value {
            *field = positive(key, v)? * unit;
        }
    }
    Ok(net)
}

fn positive(key: &str, v: f64) -> anyhow::Result<f64> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{key} = {v}: give a positive, finite figure");
    }
    Ok(v)
}
