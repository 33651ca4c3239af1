//! Launcher for `kernels/preprocess.cu`: one frame upload -> D-FINE and MobileSAM inputs.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use half::f16;

use crate::error::{Error, Result};
use crate::frame::{DFINE_INPUT_SIZE, SAM_INPUT_SIZE, SAM_PIXEL_MEAN, SAM_PIXEL_STD};
use crate::gpu::{DevicePtr, Gpu};

// Must match kTileX, kThreadsY and kRowsPerThread in the kernel.
const TILE_X: u32 = 32;
const THREADS_Y: u32 = 8;
const TILE_Y: u32 = THREADS_Y * 4;

/// Mirrors `SamNormalization` in the kernel (passed by value).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct SamNormalization {
    mean: [f32; 3],
    inv_std: [f32; 3],
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for SamNormalization {}

/// Bytes of one NCHW fp16 RGB square input of side `size`.
pub fn input_bytes(size: u32) -> usize {
    3 * size as usize * size as usize * std::mem::size_of::<f16>()
}

/// Device tensors the preprocessing kernel reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct PreprocessIo {
    /// Upload buffer: frame header + pixels (see `crate::frame::stage_frame`).
    pub upload: DevicePtr,
    /// Bytes available at `upload`.
    pub upload_bytes: usize,
    /// D-FINE input, 1x3x640x640 fp16.
    pub dfine_input: DevicePtr,
    /// Bytes available at `dfine_input`.
    pub dfine_bytes: usize,
    /// MobileSAM input, 1x3x1024x1024 fp16.
    pub sam_input: DevicePtr,
    /// Bytes available at `sam_input`.
    pub sam_bytes: usize,
}

fn tiles(size: u32) -> u32 {
    size.div_ceil(TILE_X) * size.div_ceil(TILE_Y)
}

/// Launches `preprocess_frame`. The frame geometry is read on the device from the header in
/// the upload buffer, so the launch is valid for any frame and can be captured in a graph.
pub fn launch_preprocess(gpu: &Gpu, io: &PreprocessIo) -> Result<()> {
    let check = |what: &str, have: usize, need: usize| {
        if have < need {
            Err(Error::Launch {
                kernel: "preprocess_frame",
                message: format!("{what} has {have} bytes, needs {need}"),
            })
        } else {
            Ok(())
        }
    };
    check(
        "upload buffer",
        io.upload_bytes,
        crate::frame::FRAME_PIXEL_OFFSET + 1,
    )?;
    check(
        "D-FINE input",
        io.dfine_bytes,
        input_bytes(DFINE_INPUT_SIZE),
    )?;
    check("SAM input", io.sam_bytes, input_bytes(SAM_INPUT_SIZE))?;

    let norm = SamNormalization {
        mean: SAM_PIXEL_MEAN,
        inv_std: SAM_PIXEL_STD.map(|s| 1.0 / s),
    };
    let dfine_size = DFINE_INPUT_SIZE as i32;
    let sam_size = SAM_INPUT_SIZE as i32;
    let cfg = LaunchConfig {
        grid_dim: (tiles(DFINE_INPUT_SIZE) + tiles(SAM_INPUT_SIZE), 1, 1),
        block_dim: (TILE_X, THREADS_Y, 1),
        shared_mem_bytes: 0,
    };
    let stream = gpu.stream();
    let mut launch = stream.launch_builder(&gpu.kernels().preprocess_frame);
    launch
        .arg(&io.upload)
        .arg(&io.dfine_input)
        .arg(&dfine_size)
        .arg(&io.sam_input)
        .arg(&sam_size)
        .arg(&norm);
    // SAFETY: argument order and types match the kernel signature; buffer sizes checked above.
    unsafe { launch.launch(cfg) }.map_err(|e| Error::Launch {
        kernel: "preprocess_frame",
        message: e.to_string(),
    })?;
    Ok(())
}
