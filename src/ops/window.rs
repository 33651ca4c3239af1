//! Launchers for `kernels/window.cu`: TinyViT's window partition (zero padding to a multiple
//! of the window) and its inverse (crop, optional fused residual add), fp16 NHWC.

use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};

use crate::error::{Error, Result};
use crate::gpu::{DevicePtr, Gpu};

const THREADS: u32 = 256;
/// Enough CTAs to fill any current GPU; the kernels grid-stride over the rest.
const MAX_BLOCKS: usize = 4096;

/// A TinyViT block's windowing: an fp16 `[batch, height, width, channels]` map cut into
/// `window x window` windows after zero padding bottom/right to a multiple of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowGeometry {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    /// A multiple of 8 (16-byte chunks).
    pub channels: usize,
    pub window: usize,
}

/// Mirrors `WindowGeometry` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct WindowParams {
    batch: i32,
    height: i32,
    width: i32,
    channels: i32,
    window: i32,
    windows_y: i32,
    windows_x: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for WindowParams {}

impl WindowGeometry {
    /// Windows along (y, x) after padding.
    pub fn grid(&self) -> (usize, usize) {
        if self.window == 0 {
            return (0, 0);
        }
        (
            self.height.div_ceil(self.window),
            self.width.div_ceil(self.window),
        )
    }

    /// Windows over the whole batch (the attention's batch).
    pub fn windows(&self) -> usize {
        let (y, x) = self.grid();
        self.batch.saturating_mul(y).saturating_mul(x)
    }

    /// Tokens per window (the attention's sequence length).
    pub fn tokens(&self) -> usize {
        self.window.saturating_mul(self.window)
    }

    /// Elements of the NHWC map.
    pub fn map_elements(&self) -> usize {
        [self.height, self.width, self.channels]
            .iter()
            .fold(self.batch, |n, &d| n.saturating_mul(d))
    }

    /// Elements of the partitioned `[windows, tokens, channels]` tensor.
    pub fn windows_elements(&self) -> usize {
        self.windows()
            .saturating_mul(self.tokens())
            .saturating_mul(self.channels)
    }

    fn params(&self, kernel: &'static str) -> Result<WindowParams> {
        let fail = |message: String| Error::Launch { kernel, message };
        if [
            self.batch,
            self.height,
            self.width,
            self.channels,
            self.window,
        ]
        .contains(&0)
        {
            return Err(fail(format!("zero-sized geometry {self:?}")));
        }
        if self.channels % 8 != 0 {
            return Err(fail(format!(
                "channels {} is not a multiple of 8",
                self.channels
            )));
        }
        let (wy, wx) = self.grid();
        let to_i32 =
            |v: usize| i32::try_from(v).map_err(|_| fail(format!("{v} in {self:?} exceeds i32")));
        // The kernels index elements with 32-bit ints (grid-stride steps included).
        let largest = self.windows_elements().max(self.map_elements());
        if largest >= (i32::MAX as usize) - (MAX_BLOCKS * THREADS as usize) * 8 {
            return Err(fail(format!(
                "{self:?} has {largest} elements, too many for i32"
            )));
        }
        Ok(WindowParams {
            batch: to_i32(self.batch)?,
            height: to_i32(self.height)?,
            width: to_i32(self.width)?,
            channels: to_i32(self.channels)?,
            window: to_i32(self.window)?,
            windows_y: to_i32(wy)?,
            windows_x: to_i32(wx)?,
        })
    }
}

fn check_buffer(
    kernel: &'static str,
    what: &str,
    ptr: DevicePtr,
    bytes: usize,
    elements: usize,
) -> Result<()> {
    if ptr % 16 != 0 {
        return Err(Error::Launch {
            kernel,
            message: format!("{what} address {ptr:#x} is not 16-byte aligned"),
        });
    }
    if bytes < elements * 2 {
        return Err(Error::Launch {
            kernel,
            message: format!("{what} has {bytes} bytes, needs {}", elements * 2),
        });
    }
    Ok(())
}

fn launch(
    gpu: &Gpu,
    kernel: &'static str,
    function: &CudaFunction,
    chunks: usize,
    args: &[DevicePtr],
    params: &WindowParams,
) -> Result<()> {
    let blocks = chunks.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let stream = gpu.stream();
    let mut builder = stream.launch_builder(function);
    for ptr in args {
        builder.arg(ptr);
    }
    builder.arg(params);
    // SAFETY: argument order and types match the kernel signatures; buffers checked by callers.
    unsafe { builder.launch(cfg) }.map_err(|e| Error::Launch {
        kernel,
        message: e.to_string(),
    })?;
    Ok(())
}

/// Launches `window_partition`: `input` NHWC `[batch, height, width, channels]` ->
/// `output` `[windows, window^2, channels]`, padded tokens zero.
pub fn launch_window_partition(
    gpu: &Gpu,
    geometry: &WindowGeometry,
    input: DevicePtr,
    input_bytes: usize,
    output: DevicePtr,
    output_bytes: usize,
) -> Result<()> {
    const KERNEL: &str = "window_partition";
    let params = geometry.params(KERNEL)?;
    check_buffer(KERNEL, "input", input, input_bytes, geometry.map_elements())?;
    check_buffer(
        KERNEL,
        "output",
        output,
        output_bytes,
        geometry.windows_elements(),
    )?;
    launch(
        gpu,
        KERNEL,
        &gpu.kernels().window_partition,
        geometry.windows_elements() / 8,
        &[input, output],
        &params,
    )
}

/// Launches `window_unpartition`: `input` `[windows, window^2, channels]` -> `output` NHWC,
/// cropped to `height x width`, plus `residual` (NHWC address and bytes; may be `output`
/// itself) when given.
pub fn launch_window_unpartition(
    gpu: &Gpu,
    geometry: &WindowGeometry,
    input: DevicePtr,
    input_bytes: usize,
    residual: Option<(DevicePtr, usize)>,
    output: DevicePtr,
    output_bytes: usize,
) -> Result<()> {
    const KERNEL: &str = "window_unpartition";
    let params = geometry.params(KERNEL)?;
    check_buffer(
        KERNEL,
        "input",
        input,
        input_bytes,
        geometry.windows_elements(),
    )?;
    check_buffer(
        KERNEL,
        "output",
        output,
        output_bytes,
        geometry.map_elements(),
    )?;
    if let Some((ptr, bytes)) = residual {
        check_buffer(KERNEL, "residual", ptr, bytes, geometry.map_elements())?;
    }
    launch(
        gpu,
        KERNEL,
        &gpu.kernels().window_unpartition,
        geometry.map_elements() / 8,
        &[input, residual.map_or(0, |(ptr, _)| ptr), output],
        &params,
    )
}
