//! Launcher for `kernels/norm.cu`: LayerNorm over the last dimension (fp16 in/out, fp32
//! statistics), optionally of `x + residual` with the sum written back for the residual
//! stream. On NHWC activations this is also SAM's LayerNorm2d (eps 1e-6). With a window
//! geometry it gathers its rows as TinyViT's window partition (fusing the partition).

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::window::WindowGeometry;
use super::{launch_error, DeviceRegion};
use crate::error::Result;
use crate::gpu::Gpu;

/// (largest C, kernel name) of the compiled variants, in table order: C <= 64 uses groups of
/// 8 lanes per row, <= 128 16 lanes, above that a warp with 1, 2 or 4 vectors per lane.
pub(crate) const LAYER_NORM_VARIANTS: [(usize, &str); 5] = [
    (64, "layer_norm_c64"),
    (128, "layer_norm_c128"),
    (256, "layer_norm_c256"),
    (512, "layer_norm_c512"),
    (1024, "layer_norm_c1024"),
];

/// Lanes per row of each variant (the G template argument in norm.cu).
const GROUP_LANES: [u32; 5] = [8, 16, 32, 32, 32];
const THREADS: u32 = 256;

/// Largest channel count supported.
pub const LAYER_NORM_MAX_CHANNELS: usize = 1024;

/// The variant (index into [`LAYER_NORM_VARIANTS`]) used for `channels`.
pub fn variant_index(channels: usize) -> Option<usize> {
    LAYER_NORM_VARIANTS.iter().position(|&(c, _)| channels <= c)
}

/// Operands of one LayerNorm launch. All fp16 tensors are packed `[rows, channels]`,
/// 16-byte aligned; `y` may be `x` (in place), `sum` may be `x` or `residual`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormArgs {
    /// Rows (tokens or pixels).
    pub rows: usize,
    /// Normalised length C: a multiple of 8, at most 1024.
    pub channels: usize,
    /// nn.LayerNorm: 1e-5; SAM's LayerNorm2d: 1e-6.
    pub eps: f32,
    /// Input.
    pub x: DeviceRegion,
    /// Added to `x` before the norm, or None.
    pub residual: Option<DeviceRegion>,
    /// Receives `x + residual` (fp16), or None. Requires `residual`.
    pub sum: Option<DeviceRegion>,
    /// fp32 `[C]`.
    pub gamma: DeviceRegion,
    /// fp32 `[C]`.
    pub beta: DeviceRegion,
    /// Output.
    pub y: DeviceRegion,
}

/// Mirrors `LayerNormParams` in kernels/norm.cu.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct LayerNormParams {
    x: u64,
    residual: u64,
    sum: u64,
    gamma: u64,
    beta: u64,
    y: u64,
    rows: i32,
    c: i32,
    eps: f32,
    win: i32,
    win_h: i32,
    win_w: i32,
    windows_y: i32,
    windows_x: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for LayerNormParams {}

/// Validates a launch, rows gathered by `window` if given: (variant, parameters, blocks).
fn layer_norm_params(
    args: &LayerNormArgs,
    window: Option<&WindowGeometry>,
) -> Result<(usize, LayerNormParams, u32)> {
    const KERNEL: &str = "layer_norm";
    let c = args.channels;
    let variant = variant_index(c)
        .filter(|_| c > 0 && c % 8 == 0)
        .ok_or_else(|| {
            launch_error(
                KERNEL,
                format!(
                    "channels {c} must be a positive multiple of 8 and <= {LAYER_NORM_MAX_CHANNELS}"
                ),
            )
        })?;
    if args.rows == 0 || i32::try_from(args.rows).is_err() {
        return Err(launch_error(
            KERNEL,
            format!("rows {} must be in 1..=i32::MAX", args.rows),
        ));
    }
    if !(args.eps.is_finite() && args.eps >= 0.0) {
        return Err(launch_error(
            KERNEL,
            format!("eps {} must be finite and >= 0", args.eps),
        ));
    }
    if args.sum.is_some() && args.residual.is_none() {
        return Err(launch_error(KERNEL, "sum output given without a residual"));
    }
    let tensor = args.rows.checked_mul(c).and_then(|e| e.checked_mul(2));
    let mut gather = [0i32; 5];
    match window {
        None => args.x.check(KERNEL, "x", tensor, 16)?,
        Some(g) => {
            let (wy, wx) = g.grid();
            let padded = g.windows().checked_mul(g.tokens());
            if g.window == 0 || g.channels != c || padded != Some(args.rows) {
                return Err(launch_error(
                    KERNEL,
                    format!(
                        "window {g:?} does not give {} rows of {c} channels",
                        args.rows
                    ),
                ));
            }
            if args.residual.is_some() {
                return Err(launch_error(KERNEL, "a window gather takes no residual"));
            }
            let map = g.map_elements().checked_mul(2);
            args.x.check(KERNEL, "x", map, 16)?;
            let (x0, x1) = (
                args.x.ptr,
                args.x.ptr.saturating_add(map.unwrap_or(0) as u64),
            );
            let y1 = args.y.ptr.saturating_add(tensor.unwrap_or(0) as u64);
            if args.y.ptr < x1 && x0 < y1 {
                return Err(launch_error(KERNEL, "a window gather cannot write over x"));
            }
            for (slot, v) in gather.iter_mut().zip([g.window, g.height, g.width, wy, wx]) {
                *slot = i32::try_from(v)
                    .map_err(|_| launch_error(KERNEL, format!("window {g:?} exceeds i32")))?;
            }
        }
    }
    args.y.check(KERNEL, "y", tensor, 16)?;
    if let Some(r) = &args.residual {
        r.check(KERNEL, "residual", tensor, 16)?;
    }
    if let Some(s) = &args.sum {
        s.check(KERNEL, "sum", tensor, 16)?;
    }
    args.gamma.check(KERNEL, "gamma", Some(c * 4), 16)?;
    args.beta.check(KERNEL, "beta", Some(c * 4), 16)?;
    let rows_per_block = (THREADS / GROUP_LANES[variant]) as usize;
    let blocks = u32::try_from(args.rows.div_ceil(rows_per_block))
        .map_err(|_| launch_error(KERNEL, "grid overflows"))?;
    let params = LayerNormParams {
        x: args.x.ptr,
        residual: args.residual.map_or(0, |r| r.ptr),
        sum: args.sum.map_or(0, |s| s.ptr),
        gamma: args.gamma.ptr,
        beta: args.beta.ptr,
        y: args.y.ptr,
        rows: args.rows as i32,
        c: c as i32,
        eps: args.eps,
        win: gather[0],
        win_h: gather[1],
        win_w: gather[2],
        windows_y: gather[3],
        windows_x: gather[4],
    };
    Ok((variant, params, blocks))
}

/// Checks a LayerNorm's arguments exactly as [`launch_layer_norm`] does, without a GPU.
pub fn check_layer_norm(args: &LayerNormArgs) -> Result<()> {
    layer_norm_params(args, None).map(|_| ())
}

/// `y = LayerNorm(x (+ residual)) * gamma + beta` over the last dimension; with a residual the
/// fp16 sum is normalised and, if `sum` is given, stored.
pub fn launch_layer_norm(gpu: &Gpu, args: &LayerNormArgs) -> Result<()> {
    launch(gpu, layer_norm_params(args, None)?)
}

/// TinyViT's window partition fused with the attention's LayerNorm: `y` (`args.rows` =
/// windows x tokens rows) is `LayerNorm(window_partition(x))` for `x` the NHWC map of
/// `window` (zero padding tokens come out as beta). No residual.
pub fn launch_window_layer_norm(
    gpu: &Gpu,
    window: &WindowGeometry,
    args: &LayerNormArgs,
) -> Result<()> {
    launch(gpu, layer_norm_params(args, Some(window))?)
}

/// Checks a windowed LayerNorm's arguments exactly as [`launch_window_layer_norm`] does.
pub fn check_window_layer_norm(window: &WindowGeometry, args: &LayerNormArgs) -> Result<()> {
    layer_norm_params(args, Some(window)).map(|_| ())
}

fn launch(gpu: &Gpu, (variant, params, blocks): (usize, LayerNormParams, u32)) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = gpu
        .stream()
        .launch_builder(&gpu.kernels().layer_norm[variant]);
    launch.arg(&params);
    // SAFETY: parameters mirror the kernel's; buffers checked above.
    unsafe { launch.launch(cfg) }
        .map_err(|e| launch_error(LAYER_NORM_VARIANTS[variant].1, e.to_string()))?;
    Ok(())
}
