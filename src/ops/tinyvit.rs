//! Fused TinyViT kernels (kernels/tinyvit.cu).
//!
//! - [`launch_mbconv`]: a whole MBConv block (1x1 expand + GELU, depthwise 3x3 + GELU, 1x1
//!   project + shortcut + GELU) for 64 channels and expand ratio 4, in one launch whose
//!   4x-expanded activation stays in shared memory.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::{launch_error, DeviceRegion};
use crate::error::Result;
use crate::gpu::Gpu;

const KERNEL: &str = "mbconv_c64_e4";
const HALF: usize = 2;
/// Channels of the fused MBConv's input and output.
pub const MBCONV_CHANNELS: usize = 64;
/// Hidden channels of the fused MBConv (expand ratio 4).
pub const MBCONV_HIDDEN: usize = 4 * MBCONV_CHANNELS;
/// Output tile of one block (rows, columns): kTileH x kTileW in kernels/tinyvit.cu.
const TILE: (usize, usize) = (8, 16);
const THREADS: u32 = 256;
/// Dynamic shared memory of `mbconv_c64_e4` (kSmemBytes in kernels/tinyvit.cu).
pub(crate) const MBCONV_SMEM_BYTES: u32 = 144_384;

/// Geometry of a fused MBConv: NHWC `[batch, height, width, 64]` in and out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbConvShape {
    /// Images.
    pub batch: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// The operands of a fused MBConv (BatchNorms folded into the convolutions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MbConvArgs {
    /// NHWC fp16 `[batch, height, width, 64]` packed, 16-byte aligned.
    pub input: DeviceRegion,
    /// conv1: fp16 `[256, 64]` (PyTorch `[out, in]`), 16-byte aligned.
    pub expand_weight: DeviceRegion,
    /// conv1 bias: f32 `[256]`.
    pub expand_bias: DeviceRegion,
    /// conv2 (depthwise 3x3, pad 1): fp16 `[9, 256]` tap-major
    /// ([`crate::ops::conv::depthwise_weight_taps`]).
    pub depthwise_weight: DeviceRegion,
    /// conv2 bias: f32 `[256]`.
    pub depthwise_bias: DeviceRegion,
    /// conv3: fp16 `[64, 256]` (PyTorch `[out, in]`).
    pub project_weight: DeviceRegion,
    /// conv3 bias: f32 `[64]`.
    pub project_bias: DeviceRegion,
    /// NHWC fp16 `[batch, height, width, 64]` packed; must not overlap `input`.
    pub output: DeviceRegion,
}

/// Mirrors `MbConvParams` in kernels/tinyvit.cu.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct MbConvParams {
    x: u64,
    w1: u64,
    b1: u64,
    w2: u64,
    b2: u64,
    w3: u64,
    b3: u64,
    y: u64,
    h: i32,
    w: i32,
    tiles_x: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for MbConvParams {}

fn to_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| launch_error(KERNEL, format!("dimension {v} exceeds i32")))
}

/// Validates a fused MBConv: (parameters, grid).
fn mbconv_params(shape: &MbConvShape, args: &MbConvArgs) -> Result<(MbConvParams, (u32, u32))> {
    let MbConvShape {
        batch,
        height,
        width,
    } = *shape;
    if batch == 0 || height == 0 || width == 0 {
        return Err(launch_error(KERNEL, format!("empty shape {shape:?}")));
    }
    let c = MBCONV_CHANNELS;
    let hidden = MBCONV_HIDDEN;
    let activation = batch
        .checked_mul(height)
        .and_then(|v| v.checked_mul(width))
        .and_then(|v| v.checked_mul(c * HALF));
    args.input.check(KERNEL, "input", activation, 16)?;
    args.output.check(KERNEL, "output", activation, 16)?;
    let bytes = activation.unwrap_or(usize::MAX) as u64;
    let (a, b) = (args.input.ptr, args.output.ptr);
    if a < b.saturating_add(bytes) && b < a.saturating_add(bytes) {
        return Err(launch_error(
            KERNEL,
            "output overlaps input (blocks read their neighbours' input halo)",
        ));
    }
    args.expand_weight
        .check(KERNEL, "expand weight", Some(hidden * c * HALF), 16)?;
    args.expand_bias
        .check(KERNEL, "expand bias", Some(hidden * 4), 16)?;
    args.depthwise_weight
        .check(KERNEL, "depthwise weight", Some(9 * hidden * HALF), 16)?;
    args.depthwise_bias
        .check(KERNEL, "depthwise bias", Some(hidden * 4), 16)?;
    args.project_weight
        .check(KERNEL, "project weight", Some(c * hidden * HALF), 16)?;
    args.project_bias
        .check(KERNEL, "project bias", Some(c * 4), 16)?;
    let tiles_x = width.div_ceil(TILE.1);
    let tiles = height
        .div_ceil(TILE.0)
        .checked_mul(tiles_x)
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| launch_error(KERNEL, "grid overflows"))?;
    let batch = u32::try_from(batch)
        .ok()
        .filter(|&b| b <= 65_535)
        .ok_or_else(|| launch_error(KERNEL, format!("batch {batch} exceeds the grid")))?;
    let params = MbConvParams {
        x: args.input.ptr,
        w1: args.expand_weight.ptr,
        b1: args.expand_bias.ptr,
        w2: args.depthwise_weight.ptr,
        b2: args.depthwise_bias.ptr,
        w3: args.project_weight.ptr,
        b3: args.project_bias.ptr,
        y: args.output.ptr,
        h: to_i32(height)?,
        w: to_i32(width)?,
        tiles_x: to_i32(tiles_x)?,
    };
    Ok((params, (tiles, batch)))
}

/// Checks a fused MBConv's arguments exactly as [`launch_mbconv`] does.
pub fn check_mbconv(shape: &MbConvShape, args: &MbConvArgs) -> Result<()> {
    mbconv_params(shape, args).map(|_| ())
}

/// One TinyViT MBConv block (64 channels, expand 4), eval mode with folded BatchNorms:
/// `y = gelu(conv3(gelu(dw3x3(gelu(conv1(x))))) + x)`, hidden activations rounded to fp16 as
/// the unfused chain stores them.
pub fn launch_mbconv(gpu: &Gpu, shape: &MbConvShape, args: &MbConvArgs) -> Result<()> {
    let (params, (tiles, batch)) = mbconv_params(shape, args)?;
    let cfg = LaunchConfig {
        grid_dim: (tiles, batch, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: MBCONV_SMEM_BYTES,
    };
    let mut launch = gpu.stream().launch_builder(&gpu.kernels().mbconv_c64_e4);
    launch.arg(&params);
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch.launch(cfg) }.map_err(|e| launch_error(KERNEL, e.to_string()))?;
    Ok(())
}

/// FLOPs of one fused MBConv as the unfused chain counts them (2 x multiply-adds of both 1x1
/// convolutions and the depthwise conv; the halo recomputation is not counted).
pub fn mbconv_flops(shape: &MbConvShape) -> f64 {
    let pixels = (shape.batch * shape.height * shape.width) as f64;
    let (c, hidden) = (MBCONV_CHANNELS as f64, MBCONV_HIDDEN as f64);
    2.0 * pixels * (2.0 * c * hidden + 9.0 * hidden)
}
