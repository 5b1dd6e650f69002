//! The plumbing every kernel launch shares: device views of input tensors, fresh output
//! buffers (optionally poisoned), and wrapping buffers back into tensors.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::cuda::cudarc::driver::{
    CudaSlice, DevicePtrMut, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};
use candle_core::cuda::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Shape, Storage, Tensor};
use half::bf16;

use crate::error::{KernelError, Result};

static POISON: AtomicBool = AtomicBool::new(false);

/// When on, every output buffer of a kernel starts as all-ones bytes (NaN in f32 and bf16)
/// instead of zeros, so a test sees any element a kernel forgot to write. Off by default.
pub fn poison_outputs(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

/// Element types our kernels are instantiated for, with their PTX name suffix.
pub(crate) trait KernelFloat:
    CudaDType + DeviceRepr + ValidAsZeroBits + Copy + 'static
{
    const SUFFIX: &'static str;
}
impl KernelFloat for f32 {
    const SUFFIX: &'static str = "f32";
}
impl KernelFloat for bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// Which kernel dtype a tensor maps to, or none (f64 and the rest keep the candle path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Float {
    F32,
    Bf16,
}

/// The CUDA device of `t` and its kernel dtype, when both exist.
pub(crate) fn target(t: &Tensor) -> Option<(CudaDevice, Float)> {
    let Device::Cuda(dev) = t.device() else {
        return None;
    };
    let float = match t.dtype() {
        DType::F32 => Float::F32,
        DType::BF16 => Float::Bf16,
        _ => return None,
    };
    Some((dev.clone(), float))
}

pub(crate) fn cuda_err(op: &'static str, e: impl std::fmt::Display) -> KernelError {
    KernelError::Candle(candle_core::Error::Msg(format!("{op}: CUDA: {e}")))
}

/// A fresh device buffer of `n` elements: zeros, or NaN bytes when poisoning is on.
pub(crate) fn output<T: KernelFloat>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    let mut s = dev.alloc_zeros::<T>(n.max(1))?;
    if POISON.load(Ordering::SeqCst) {
        let stream = dev.cuda_stream();
        let (ptr, _sync) = s.device_ptr_mut(&stream);
        // SAFETY: `ptr` addresses the `n·size_of::<T>()` bytes just allocated on this stream.
        unsafe {
            candle_core::cuda::cudarc::driver::result::memset_d8_async(
                ptr,
                0xFF,
                n.max(1) * std::mem::size_of::<T>(),
                stream.cu_stream(),
            )
        }
        .map_err(|e| cuda_err("poison", e))?;
    }
    Ok(s)
}

/// Wraps a device buffer as a contiguous tensor of `shape`.
pub(crate) fn tensor<T: KernelFloat>(
    s: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    let storage = CudaStorage::wrap_cuda_slice(s, dev.clone());
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}

/// A launch of `grid` blocks of `threads` threads, no dynamic shared memory (none of our
/// kernels uses any).
pub(crate) fn blocks(grid: (usize, usize), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Runs `$f::<f32>` or `$f::<bf16>` (a kernel's generic launcher) for the kernel dtype `$float`.
macro_rules! by_float {
    ($float:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $float {
            $crate::cuda::launch::Float::F32 => $f::<f32>($($arg),*),
            $crate::cuda::launch::Float::Bf16 => $f::<half::bf16>($($arg),*),
        }
    };
}
pub(crate) use by_float;

/// A 1-D launch covering `n` elements with `threads` per block, at most `max_blocks` blocks
/// (the kernels loop grid-stride over the rest).
pub(crate) fn grid_1d(n: usize, threads: u32, max_blocks: u32) -> LaunchConfig {
    let grid = n.div_ceil(threads as usize).clamp(1, max_blocks as usize);
    blocks((grid, 1), threads)
}

/// A dimension as the kernels' `int`, or an error when it does not fit.
pub(crate) fn int(op: &'static str, what: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| KernelError::Param {
        op,
        what,
        value: v.to_string(),
        valid: format!("at most {} on the CUDA path", i32::MAX),
    })
}

/// Binds `$name` to a device view of tensor `$t` (made contiguous) with element type `$ty`; the
/// storage guard lives to the end of the enclosing block.
macro_rules! device_view {
    ($name:ident, $t:expr, $ty:ty, $op:expr) => {
        let owned = $t.contiguous()?;
        let (guard, layout) = owned.storage_and_layout();
        let start = layout.start_offset();
        let whole = match &*guard {
            candle_core::Storage::Cuda(s) => s.as_cuda_slice::<$ty>()?,
            _ => {
                return Err($crate::cuda::launch::cuda_err(
                    $op,
                    "an input is not on the CUDA device",
                ))
            }
        };
        let $name = whole.slice(start..start + owned.elem_count());
    };
}
pub(crate) use device_view;
