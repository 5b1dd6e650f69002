//! Where a threaded run puts its stages: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda`
//! feature, and the matmul ceiling MFU is measured against on that device.

use crate::error::{fail, Context, Result};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

/// Opens the device a configuration names, or explains what would be valid.
pub fn open(spec: &str) -> Result<Device> {
    let index = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => fail!(
                Config,
                "device = {spec:?} is not a device; use \"cpu\", \"cuda\" or \"cuda:N\""
            ),
        },
    };
    if !cfg!(feature = "cuda") {
        fail!(
            Config,
            "device = {spec:?} needs a seqpipe built with the `cuda` feature (`cargo xtask \
             gpu-build`, see docs/gpu.md); this one runs on \"cpu\" only"
        );
    }
    Device::new_cuda(index).with_context(|| {
        format!(
            "opening {spec}: needs the NVIDIA driver and the CUDA 13 libraries on the loader path"
        )
    })
}

/// Dense matmul FLOP/s of one device in `dtype` (4096³, repeated for 0.4 s after a warm-up):
/// the MFU ceiling of a GPU run. The CPU uses [`crate::train::measure_matmul_peak`] instead.
pub fn matmul_peak(device: &Device, dtype: DType) -> Result<f64> {
    let n = 4096;
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    a.matmul(&b)?;
    device.synchronize()?;
    let (start, mut runs) = (Instant::now(), 0u32);
    while start.elapsed() < Duration::from_millis(400) {
        a.matmul(&b)?;
        device.synchronize()?;
        runs += 1;
    }
    Ok(2.0 * (n as f64).powi(3) * runs as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_opens_and_bad_names_say_what_is_valid() {
        assert!(open("cpu").unwrap().is_cpu());
        let e = open("tpu").unwrap_err().to_string();
        assert!(e.contains("\"tpu\"") && e.contains("\"cuda:N\""), "{e}");
        let e = open("cuda:x").unwrap_err().to_string();
        assert!(e.contains("\"cuda:x\""), "{e}");
        if !cfg!(feature = "cuda") {
            let e = open("cuda:1").unwrap_err().to_string();
            assert!(e.contains("`cuda` feature"), "{e}");
        }
    }
}
