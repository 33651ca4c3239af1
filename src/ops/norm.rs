//! Launcher for `kernels/norm.cu`: LayerNorm over the last dimension (fp16 in/out, fp32
//! statistics), optionally of `x + residual` with the sum written back for the residual
//! stream. On NHWC activations this is also SAM's LayerNorm2d (eps 1e-6). With a window
//! geometry it gathers its rows as TinyViT's window partition (fusing the partition).

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::window::WindowGeometry;
use super::{check_eps, launch_error, overlaps, DeviceRegion};
use crate::error::Result;
use crate::gpu::Gpu;

/// (largest C, kernel name) of the compiled variants, in table order; [`GROUP_LANES`] gives
/// each one's lanes per row (TinyViT's 160 and 320 channels get 8 lanes with 3 or 5 vectors
/// each, so no lane idles).
pub(crate) const LAYER_NORM_VARIANTS: [(usize, &str); 7] = [
    (64, "layer_norm_c64"),
    (128, "layer_norm_c128"),
    (192, "layer_norm_c192"),
    (256, "layer_norm_c256"),
    (320, "layer_norm_c320"),
    (512, "layer_norm_c512"),
    (1024, "layer_norm_c1024"),
];

/// Lanes per row of each variant (the G template argument in norm.cu).
const GROUP_LANES: [u32; 7] = [8, 16, 8, 32, 8, 32, 32];
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
    dw_w: u64,
    dw_b: u64,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for LayerNormParams {}

/// TinyViT's local conv in front of a LayerNorm ([`launch_depthwise_layer_norm`]): a depthwise
/// 3x3 convolution (stride 1, zero padding 1, bias, no activation) of the NHWC
/// `[batch, height, width, C]` map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthwisePrologue {
    /// Images.
    pub batch: usize,
    /// Map rows.
    pub height: usize,
    /// Map columns.
    pub width: usize,
    /// fp16 `[9, C]` tap-major ([`crate::ops::conv::depthwise_weight_taps`]), 16-byte aligned.
    pub weight: DeviceRegion,
    /// f32 `[C]`, 16-byte aligned.
    pub bias: DeviceRegion,
}

/// Where a LayerNorm's rows come from.
#[derive(Debug, Clone, Copy)]
enum Rows<'a> {
    /// Row r of `x` (plus the residual).
    Plain,
    /// Token r of the window partition of `x`.
    Window(&'a WindowGeometry),
    /// The depthwise convolution of `x` at pixel r.
    Depthwise(&'a DepthwisePrologue),
}

/// Validates a launch: (variant, parameters, blocks).
fn layer_norm_params(
    args: &LayerNormArgs,
    source: Rows<'_>,
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
    check_eps(KERNEL, args.eps)?;
    if args.sum.is_some() && args.residual.is_none() && !matches!(source, Rows::Depthwise(_)) {
        return Err(launch_error(KERNEL, "sum output given without a residual"));
    }
    let tensor = args.rows.checked_mul(c).and_then(|e| e.checked_mul(2));
    let mut gather = [0i32; 5];
    let (mut dw_w, mut dw_b) = (0, 0);
    let i32_of = |v: usize| {
        i32::try_from(v).map_err(|_| launch_error(KERNEL, format!("dimension {v} exceeds i32")))
    };
    match source {
        Rows::Plain => args.x.check(KERNEL, "x", tensor, 16)?,
        Rows::Window(g) => {
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
            if overlaps(&args.y, tensor.unwrap_or(0), &args.x, map.unwrap_or(0)) {
                return Err(launch_error(KERNEL, "a window gather cannot write over x"));
            }
            for (slot, v) in gather.iter_mut().zip([g.window, g.height, g.width, wy, wx]) {
                *slot = i32_of(v)?;
            }
        }
        Rows::Depthwise(d) => {
            let pixels = d
                .batch
                .checked_mul(d.height)
                .and_then(|p| p.checked_mul(d.width));
            if pixels != Some(args.rows) {
                return Err(launch_error(
                    KERNEL,
                    format!("depthwise map {d:?} does not have {} pixels", args.rows),
                ));
            }
            if args.residual.is_some() {
                return Err(launch_error(
                    KERNEL,
                    "a depthwise prologue takes no residual",
                ));
            }
            let Some(sum) = &args.sum else {
                return Err(launch_error(
                    KERNEL,
                    "a depthwise prologue stores its convolution in `sum`",
                ));
            };
            args.x.check(KERNEL, "x", tensor, 16)?;
            d.weight
                .check(KERNEL, "depthwise weight", Some(9 * c * 2), 16)?;
            d.bias.check(KERNEL, "depthwise bias", Some(c * 4), 16)?;
            let bytes = tensor.unwrap_or(0);
            if overlaps(sum, bytes, &args.x, bytes) || overlaps(&args.y, bytes, &args.x, bytes) {
                return Err(launch_error(
                    KERNEL,
                    "a depthwise prologue cannot write over x (it reads the neighbours)",
                ));
            }
            gather[1] = i32_of(d.height)?;
            gather[2] = i32_of(d.width)?;
            dw_w = d.weight.ptr;
            dw_b = d.bias.ptr;
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
        dw_w,
        dw_b,
    };
    Ok((variant, params, blocks))
}

/// Checks a LayerNorm's arguments exactly as [`launch_layer_norm`] does, without a GPU.
pub fn check_layer_norm(args: &LayerNormArgs) -> Result<()> {
    layer_norm_params(args, Rows::Plain).map(|_| ())
}

/// `y = LayerNorm(x (+ residual)) * gamma + beta` over the last dimension; with a residual the
/// fp16 sum is normalised and, if `sum` is given, stored.
pub fn launch_layer_norm(gpu: &Gpu, args: &LayerNormArgs) -> Result<()> {
    launch(gpu, layer_norm_params(args, Rows::Plain)?)
}

/// TinyViT's window partition fused with the attention's LayerNorm: `y` (`args.rows` =
/// windows x tokens rows) is `LayerNorm(window_partition(x))` for `x` the NHWC map of
/// `window` (zero padding tokens come out as beta). No residual.
pub fn launch_window_layer_norm(
    gpu: &Gpu,
    window: &WindowGeometry,
    args: &LayerNormArgs,
) -> Result<()> {
    launch(gpu, layer_norm_params(args, Rows::Window(window))?)
}

/// Checks a windowed LayerNorm's arguments exactly as [`launch_window_layer_norm`] does.
pub fn check_window_layer_norm(window: &WindowGeometry, args: &LayerNormArgs) -> Result<()> {
    layer_norm_params(args, Rows::Window(window)).map(|_| ())
}

/// TinyViT's local conv fused with the MLP's LayerNorm: `sum` (required) receives the fp16
/// depthwise 3x3 convolution of the map `x` ([`DepthwisePrologue`]; the block's residual
/// stream) and `y` its LayerNorm. Rows = pixels; no residual; neither output may overlap `x`.
pub fn launch_depthwise_layer_norm(
    gpu: &Gpu,
    conv: &DepthwisePrologue,
    args: &LayerNormArgs,
) -> Result<()> {
    launch(gpu, layer_norm_params(args, Rows::Depthwise(conv))?)
}

/// Checks a depthwise-prologue LayerNorm's arguments as [`launch_depthwise_layer_norm`] does.
pub fn check_depthwise_layer_norm(conv: &DepthwisePrologue, args: &LayerNormArgs) -> Result<()> {
    layer_norm_params(args, Rows::Depthwise(conv)).map(|_| ())
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
