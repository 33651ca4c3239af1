//! Typed launchers: one Rust function per kernel that checks its arguments and launches it on
//! the GPU's stream. Model code composes these; it never names a kernel.

pub mod attention;
pub mod conv;
pub mod gemm;
pub mod gemm_tune;
pub mod mask;
pub mod norm;
pub mod packet;
pub mod preprocess;
pub mod sam_cross_attention;
pub mod sam_decoder;
pub mod sam_folded_i2t;
pub mod sam_folded_t2i;
pub mod sam_heads;
pub mod sam_tokens;
pub mod tinyvit;
pub mod window;

use crate::error::{Error, Result};
use crate::gpu::{DeviceBuffer, DevicePtr};

/// A device tensor as a launcher sees it: its address and how many bytes are valid from there,
/// so the launcher can prove a shape fits before the kernel touches memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRegion {
    /// Device address of the first byte.
    pub ptr: DevicePtr,
    /// Bytes valid at `ptr`.
    pub bytes: usize,
}

impl DeviceRegion {
    /// A region of `bytes` at `ptr`.
    pub fn new(ptr: DevicePtr, bytes: usize) -> DeviceRegion {
        DeviceRegion { ptr, bytes }
    }

    /// The whole of `buffer`.
    pub fn of(buffer: &DeviceBuffer) -> DeviceRegion {
        DeviceRegion::new(buffer.ptr(), buffer.len())
    }

    /// Checks that the region is non-null, aligned to `align` bytes and holds `need` bytes
    /// (`None`: the size overflowed). `kernel` and `what` name the failure.
    pub(crate) fn check(
        &self,
        kernel: &'static str,
        what: &str,
        need: Option<usize>,
        align: u64,
    ) -> Result<()> {
        if self.ptr == 0 {
            return Err(launch_error(kernel, format!("{what} is a null pointer")));
        }
        if self.ptr % align != 0 {
            return Err(launch_error(
                kernel,
                format!("{what} at {:#x} is not {align}-byte aligned", self.ptr),
            ));
        }
        match need {
            Some(need) if need <= self.bytes => Ok(()),
            Some(need) => Err(launch_error(
                kernel,
                format!("{what} has {} bytes, needs {need}", self.bytes),
            )),
            None => Err(launch_error(kernel, format!("{what}: size overflows"))),
        }
    }
}

/// Launches `function` (the kernel `kernel`, for error messages) with its one by-value
/// parameter struct on the GPU's stream.
///
/// # Safety
/// `params` must mirror the kernel's parameter struct, and every buffer it points to must have
/// been checked to cover what the kernel reads and writes under `cfg`.
pub(crate) unsafe fn launch_with_params<P: cudarc::driver::DeviceRepr>(
    gpu: &crate::gpu::Gpu,
    kernel: &'static str,
    function: &cudarc::driver::CudaFunction,
    cfg: cudarc::driver::LaunchConfig,
    params: &P,
) -> Result<()> {
    use cudarc::driver::PushKernelArg;
    let mut launch = gpu.stream().launch_builder(function);
    launch.arg(params);
    // SAFETY: the caller's contract (above).
    unsafe { launch.launch(cfg) }.map_err(|e| launch_error(kernel, e.to_string()))?;
    Ok(())
}

/// `Error::Launch` for `kernel` when its `bytes` of dynamic shared memory per block exceed what
/// the device lets a block opt into (the sm_90-sized kernels on older GPUs).
pub(crate) fn check_smem_optin(
    kernels: &crate::gpu::Kernels,
    kernel: &'static str,
    bytes: u32,
) -> Result<()> {
    let optin = kernels.smem_per_block_optin();
    if bytes as usize > optin {
        return Err(launch_error(
            kernel,
            format!("needs {bytes} bytes of shared memory per block, the device allows {optin}"),
        ));
    }
    Ok(())
}

/// `Error::Launch` for `kernel` unless a normalisation's `eps` is finite and >= 0.
pub(crate) fn check_eps(kernel: &'static str, eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(launch_error(
            kernel,
            format!("eps {eps} must be finite and >= 0"),
        ))
    }
}

/// An `Error::Launch` for `kernel`.
pub(crate) fn launch_error(kernel: &'static str, message: impl Into<String>) -> Error {
    Error::Launch {
        kernel,
        message: message.into(),
    }
}

/// Whether `a_bytes` at `a` and `b_bytes` at `b` share a byte.
pub(crate) fn overlaps(a: &DeviceRegion, a_bytes: usize, b: &DeviceRegion, b_bytes: usize) -> bool {
    a.ptr < b.ptr.saturating_add(b_bytes as u64) && b.ptr < a.ptr.saturating_add(a_bytes as u64)
}
