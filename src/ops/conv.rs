//! Convolutions on NHWC fp16 activations, and the host-side weight preparation they need.
//!
//! - [`launch_conv2d`]: dense kxk convolution as an implicit GEMM on tensor cores
//!   (kernels/gemm.cu `conv_igemm_*`) with the GEMM's fused epilogue (folded-BatchNorm bias,
//!   activation, residual before or after it). A 1x1 stride-1 convolution is exactly
//!   [`crate::ops::gemm::launch_gemm`] with M = pixels, and should use it.
//! - [`launch_depthwise_conv2d`]: depthwise kxk (k = 3, 5, 7; stride 1 or 2) with bias and
//!   activation (kernels/conv.cu).
//! - [`launch_conv3x3_stem`]: the 3-channel stem reading the NCHW preprocessed image and
//!   writing NHWC.
//! - [`fold_batchnorm`], [`conv_weight_ohwi`], [`depthwise_weight_taps`]: weight preparation
//!   at load time (f32; the caller converts to fp16 for upload; biases stay f32).

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::gemm::{
    epilogue_params, launch_tiled, select_gemm_tile, Activation, ConvGeometry, Epilogue,
    GemmParams, GemmProblem, GemmTile, Matrix,
};
use super::{launch_error, DeviceRegion};
use crate::error::Result;
use crate::gpu::Gpu;

const HALF: usize = 2;

/// Geometry of a dense 2-D convolution on NHWC input `[batch, height, width, in_channels]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    /// Images.
    pub batch: usize,
    /// Input rows.
    pub height: usize,
    /// Input columns.
    pub width: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel rows.
    pub kernel_h: usize,
    /// Kernel columns.
    pub kernel_w: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (all four sides).
    pub padding: usize,
}

/// `(in + 2 pad - k) / stride + 1`, or None when the kernel does not fit or stride is 0.
fn output_extent(input: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = input.checked_add(padding.checked_mul(2)?)?;
    if stride == 0 || kernel == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

impl Conv2dShape {
    /// Output (height, width), or None for an impossible geometry.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        Some((
            output_extent(self.height, self.kernel_h, self.stride, self.padding)?,
            output_extent(self.width, self.kernel_w, self.stride, self.padding)?,
        ))
    }

    /// The implicit GEMM: M = output pixels, N = output channels, K = kh * kw * Cin.
    pub fn gemm_problem(&self) -> Option<GemmProblem> {
        let (ho, wo) = self.output_size()?;
        Some(GemmProblem::new(
            self.batch.checked_mul(ho)?.checked_mul(wo)?,
            self.out_channels,
            self.kernel_h
                .checked_mul(self.kernel_w)?
                .checked_mul(self.in_channels)?,
        ))
    }

    fn output_or_err(&self, kernel: &'static str) -> Result<(usize, usize)> {
        self.output_size()
            .filter(|_| self.batch > 0 && self.in_channels > 0 && self.out_channels > 0)
            .ok_or_else(|| launch_error(kernel, format!("impossible convolution {self:?}")))
    }
}

fn to_i32(kernel: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| launch_error(kernel, format!("dimension {v} exceeds i32")))
}

fn input_bytes(kernel: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(HALF, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| launch_error(kernel, "input size overflows"))
}

/// The operands of a dense convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvArgs {
    /// NHWC fp16 `[batch, height, width, Cin]` packed, 16-byte aligned, Cin % 8 == 0.
    pub input: DeviceRegion,
    /// fp16 `[Cout, kh, kw, Cin]` ([`conv_weight_ohwi`]), 16-byte aligned.
    pub weight: DeviceRegion,
    /// `[batch * Ho * Wo, Cout]` with any row (pixel) stride >= Cout, e.g. a channel slice of
    /// a concatenation.
    pub output: Matrix,
    /// Bias (folded BatchNorm), activation, residual (the output's shape).
    pub epilogue: Epilogue,
}

fn conv_params(shape: &Conv2dShape, args: &ConvArgs) -> Result<(GemmProblem, GemmParams)> {
    const KERNEL: &str = "conv_igemm";
    let ConvArgs {
        input,
        weight,
        output,
        epilogue,
    } = args;
    let (ho, wo) = shape.output_or_err(KERNEL)?;
    if shape.in_channels % 8 != 0 {
        return Err(launch_error(
            KERNEL,
            format!(
                "input channels {} must be a multiple of 8 (16-byte pixel chunks); use the stem \
                 kernel for 3-channel input",
                shape.in_channels
            ),
        ));
    }
    let problem = shape
        .gemm_problem()
        .ok_or_else(|| launch_error(KERNEL, "problem size overflows"))?;
    let mut params = epilogue_params(KERNEL, &problem, output, epilogue)?;
    let need = input_bytes(
        KERNEL,
        &[shape.batch, shape.height, shape.width, shape.in_channels],
    )?;
    input.check(KERNEL, "input", Some(need), 16)?;
    // Weights [Cout, kh, kw, Cin] packed: a [N, K] matrix.
    let need_w = problem
        .n
        .checked_mul(problem.k)
        .and_then(|e| e.checked_mul(HALF));
    weight.check(KERNEL, "weight", need_w, 16)?;
    params.x = input.ptr;
    params.w = weight.ptr;
    params.ldw = problem.k as i64;
    params.conv = ConvGeometry {
        h: to_i32(KERNEL, shape.height)?,
        w: to_i32(KERNEL, shape.width)?,
        cin: to_i32(KERNEL, shape.in_channels)?,
        kh: to_i32(KERNEL, shape.kernel_h)?,
        kw: to_i32(KERNEL, shape.kernel_w)?,
        stride: to_i32(KERNEL, shape.stride)?,
        pad: to_i32(KERNEL, shape.padding)?,
        ho: to_i32(KERNEL, ho)?,
        wo: to_i32(KERNEL, wo)?,
    };
    Ok((problem, params))
}

/// Checks a convolution's arguments exactly as [`launch_conv2d`] does, without a GPU.
pub fn check_conv2d(shape: &Conv2dShape, args: &ConvArgs) -> Result<()> {
    conv_params(shape, args).map(|_| ())
}

/// Dense convolution, implicit GEMM on tensor cores:
/// `output[p, co] = epilogue(sum over (ky, kx, ci) of input[pixel(p, ky, kx), ci] * weight[co, ky, kx, ci])`
/// with the tile [`select_gemm_tile`] picks.
pub fn launch_conv2d(gpu: &Gpu, shape: &Conv2dShape, args: &ConvArgs) -> Result<()> {
    let (problem, params) = conv_params(shape, args)?;
    let tile = select_gemm_tile(problem.m, problem.n, 1, gpu.kernels().sm_count);
    launch_conv(gpu, tile, &problem, &params)
}

/// [`launch_conv2d`] with an explicit tile (tests and tuning).
pub fn launch_conv2d_tile(
    gpu: &Gpu,
    tile: GemmTile,
    shape: &Conv2dShape,
    args: &ConvArgs,
) -> Result<()> {
    let (problem, params) = conv_params(shape, args)?;
    launch_conv(gpu, tile, &problem, &params)
}

fn launch_conv(
    gpu: &Gpu,
    tile: GemmTile,
    problem: &GemmProblem,
    params: &GemmParams,
) -> Result<()> {
    let f = &gpu.kernels().conv_igemm[tile.index()];
    launch_tiled(gpu, f, tile.conv_kernel(), tile, problem, params, 1)
}

// ---------------------------------------------------------------------------------------------
// Direct (CUDA-core) convolutions: depthwise and the stem

/// Mirrors `DirectConvParams` in kernels/conv.cu (shared by the depthwise and stem kernels).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct DirectConvParams {
    x: u64,
    w: u64,
    bias: u64,
    y: u64,
    ldy: i64,
    batch: i32,
    h: i32,
    w_in: i32,
    c: i32,
    ho: i32,
    wo: i32,
    stride: i32,
    pad: i32,
    act: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for DirectConvParams {}

/// The operands of a direct convolution (depthwise or stem).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DirectConvArgs {
    /// Depthwise: NHWC fp16 `[batch, height, width, C]` packed, 16-byte aligned.
    /// Stem: NCHW fp16 `[batch, 3, height, width]` (the preprocessed network input).
    pub input: DeviceRegion,
    /// Depthwise: fp16 `[k * k, C]` tap-major ([`depthwise_weight_taps`]), 16-byte aligned.
    /// Stem: fp16 `[Cout, 3, 3, 3]`, PyTorch's layout (BatchNorm folded).
    pub weight: DeviceRegion,
    /// fp32 `[C]` (16-byte aligned for depthwise), or None.
    pub bias: Option<DeviceRegion>,
    /// Applied after the bias.
    pub activation: Activation,
    /// NHWC `[batch * Ho * Wo, C]`, 16-byte aligned, row (pixel) stride a multiple of 8 and
    /// >= C (e.g. a channel slice of a wider tensor).
    pub output: Matrix,
}

/// The operands of a depthwise convolution.
pub type DepthwiseArgs = DirectConvArgs;
/// The operands of the stem convolution.
pub type StemArgs = DirectConvArgs;

/// Output-side checks and the parameter block shared by the direct kernels: `shape` is
/// (batch, height, width, output channels, stride, padding), `(ho, wo)` the output size.
/// Returns the parameters and the output pixel count.
fn direct_params(
    kernel: &'static str,
    (batch, height, width, channels, stride, padding): (usize, usize, usize, usize, usize, usize),
    (ho, wo): (usize, usize),
    args: &DirectConvArgs,
) -> Result<(DirectConvParams, usize)> {
    let out = &args.output;
    if out.row_stride < channels || out.row_stride % 8 != 0 {
        return Err(launch_error(
            kernel,
            format!(
                "output row stride {} must be >= {channels} and a multiple of 8",
                out.row_stride
            ),
        ));
    }
    let pixels = batch
        .checked_mul(ho)
        .and_then(|p| p.checked_mul(wo))
        .ok_or_else(|| launch_error(kernel, "output size overflows"))?;
    out.region
        .check(kernel, "output", out.span_bytes(pixels, channels, 1), 16)?;
    let params = DirectConvParams {
        x: args.input.ptr,
        w: args.weight.ptr,
        bias: args.bias.map_or(0, |b| b.ptr),
        y: out.region.ptr,
        ldy: i64::try_from(out.row_stride).map_err(|_| launch_error(kernel, "stride overflows"))?,
        batch: to_i32(kernel, batch)?,
        h: to_i32(kernel, height)?,
        w_in: to_i32(kernel, width)?,
        c: to_i32(kernel, channels)?,
        ho: to_i32(kernel, ho)?,
        wo: to_i32(kernel, wo)?,
        stride: to_i32(kernel, stride)?,
        pad: to_i32(kernel, padding)?,
        act: args.activation.code(),
    };
    Ok((params, pixels))
}

fn launch_direct(
    gpu: &Gpu,
    f: &cudarc::driver::CudaFunction,
    name: &'static str,
    blocks: u32,
    params: &DirectConvParams,
) -> Result<()> {
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (DIRECT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut launch = gpu.stream().launch_builder(f);
    launch.arg(params);
    // SAFETY: parameters mirror the kernel's; buffers were checked by the caller.
    unsafe { launch.launch(cfg) }.map_err(|e| launch_error(name, e.to_string()))?;
    Ok(())
}

/// Threads per block of the direct kernels.
const DIRECT_THREADS: u32 = 256;

fn grid_blocks(kernel: &'static str, threads: Option<usize>) -> Result<u32> {
    threads
        .and_then(|t| u32::try_from(t.div_ceil(DIRECT_THREADS as usize)).ok())
        .ok_or_else(|| launch_error(kernel, "grid overflows"))
}

/// (kernel size, stride, kernel name) of the compiled depthwise variants, in table order.
pub(crate) const DEPTHWISE_VARIANTS: [(usize, usize, &str); 6] = [
    (3, 1, "depthwise_k3s1"),
    (3, 2, "depthwise_k3s2"),
    (5, 1, "depthwise_k5s1"),
    (5, 2, "depthwise_k5s2"),
    (7, 1, "depthwise_k7s1"),
    (7, 2, "depthwise_k7s2"),
];

/// Outputs along x one depthwise thread computes (kDwOutX in conv.cu).
const DEPTHWISE_OUT_X: usize = 4;

/// Geometry of a depthwise convolution on NHWC `[batch, height, width, channels]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseShape {
    /// Images.
    pub batch: usize,
    /// Input rows.
    pub height: usize,
    /// Input columns.
    pub width: usize,
    /// Channels (in = out), a multiple of 8.
    pub channels: usize,
    /// Square kernel size: 3, 5 or 7.
    pub kernel: usize,
    /// 1 or 2.
    pub stride: usize,
    /// Zero padding (all four sides).
    pub padding: usize,
}

impl DepthwiseShape {
    /// Output (height, width), or None for an impossible geometry.
    pub fn output_size(&self) -> Option<(usize, usize)> {
        Some((
            output_extent(self.height, self.kernel, self.stride, self.padding)?,
            output_extent(self.width, self.kernel, self.stride, self.padding)?,
        ))
    }
}

/// Validates a depthwise launch: (variant index, parameters, blocks).
fn depthwise_params(
    shape: &DepthwiseShape,
    args: &DirectConvArgs,
) -> Result<(usize, DirectConvParams, u32)> {
    const KERNEL: &str = "depthwise_conv2d";
    let variant = DEPTHWISE_VARIANTS
        .iter()
        .position(|&(k, s, _)| k == shape.kernel && s == shape.stride)
        .ok_or_else(|| {
            launch_error(
                KERNEL,
                format!(
                    "kernel {} stride {} not compiled (kernels 3, 5, 7; strides 1, 2)",
                    shape.kernel, shape.stride
                ),
            )
        })?;
    let (ho, wo) = shape
        .output_size()
        .filter(|_| shape.batch > 0 && shape.channels > 0)
        .ok_or_else(|| launch_error(KERNEL, format!("impossible convolution {shape:?}")))?;
    let c = shape.channels;
    if c % 8 != 0 {
        return Err(launch_error(
            KERNEL,
            format!("channels {c} must be a multiple of 8"),
        ));
    }
    let need_in = input_bytes(KERNEL, &[shape.batch, shape.height, shape.width, c])?;
    args.input.check(KERNEL, "input", Some(need_in), 16)?;
    let need_w = c
        .checked_mul(shape.kernel * shape.kernel)
        .and_then(|e| e.checked_mul(HALF));
    args.weight.check(KERNEL, "weight", need_w, 16)?;
    if let Some(bias) = &args.bias {
        bias.check(KERNEL, "bias", c.checked_mul(4), 16)?;
    }
    let geometry = (
        shape.batch,
        shape.height,
        shape.width,
        c,
        shape.stride,
        shape.padding,
    );
    let (params, _) = direct_params(KERNEL, geometry, (ho, wo), args)?;
    // One thread per 8 channels of DEPTHWISE_OUT_X adjacent output pixels.
    let threads = shape
        .batch
        .checked_mul(ho)
        .and_then(|t| t.checked_mul(wo.div_ceil(DEPTHWISE_OUT_X)))
        .and_then(|t| t.checked_mul(c / 8));
    Ok((variant, params, grid_blocks(KERNEL, threads)?))
}

/// Checks a depthwise convolution's arguments exactly as [`launch_depthwise_conv2d`] does.
pub fn check_depthwise_conv2d(shape: &DepthwiseShape, args: &DirectConvArgs) -> Result<()> {
    depthwise_params(shape, args).map(|_| ())
}

/// Depthwise convolution with bias and activation:
/// `out[b, oy, ox, c] = act(bias[c] + sum over (ky, kx) of in[b, oy*s-p+ky, ox*s-p+kx, c] * w[ky*k+kx, c])`.
pub fn launch_depthwise_conv2d(
    gpu: &Gpu,
    shape: &DepthwiseShape,
    args: &DirectConvArgs,
) -> Result<()> {
    let (variant, params, blocks) = depthwise_params(shape, args)?;
    let f = &gpu.kernels().depthwise[variant];
    launch_direct(gpu, f, DEPTHWISE_VARIANTS[variant].2, blocks, &params)
}

/// Most output channels the stem kernel holds in shared memory.
pub const STEM_MAX_OUT_CHANNELS: usize = 64;

/// Validates a stem launch: (parameters, blocks).
fn stem_params(shape: &Conv2dShape, args: &DirectConvArgs) -> Result<(DirectConvParams, u32)> {
    const KERNEL: &str = "conv3x3_stem_nchw";
    let (ho, wo) = shape.output_or_err(KERNEL)?;
    if shape.in_channels != 3 || shape.kernel_h != 3 || shape.kernel_w != 3 {
        return Err(launch_error(
            KERNEL,
            format!(
                "the stem is a 3x3 convolution of 3 channels, got {}x{} over {}",
                shape.kernel_h, shape.kernel_w, shape.in_channels
            ),
        ));
    }
    let cout = shape.out_channels;
    if cout % 8 != 0 || cout > STEM_MAX_OUT_CHANNELS {
        return Err(launch_error(
            KERNEL,
            format!(
                "output channels {cout} must be a multiple of 8 and <= {STEM_MAX_OUT_CHANNELS}"
            ),
        ));
    }
    let need_in = input_bytes(KERNEL, &[shape.batch, 3, shape.height, shape.width])?;
    args.input
        .check(KERNEL, "input", Some(need_in), HALF as u64)?;
    args.weight
        .check(KERNEL, "weight", Some(cout * 27 * HALF), HALF as u64)?;
    if let Some(bias) = &args.bias {
        bias.check(KERNEL, "bias", Some(cout * 4), 4)?;
    }
    let geometry = (
        shape.batch,
        shape.height,
        shape.width,
        cout,
        shape.stride,
        shape.padding,
    );
    let (params, pixels) = direct_params(KERNEL, geometry, (ho, wo), args)?;
    Ok((params, grid_blocks(KERNEL, Some(pixels))?))
}

/// Checks the stem's arguments exactly as [`launch_conv3x3_stem`] does.
pub fn check_conv3x3_stem(shape: &Conv2dShape, args: &DirectConvArgs) -> Result<()> {
    stem_params(shape, args).map(|_| ())
}

/// The stem: 3x3 convolution (any stride and padding) of the 3-channel NCHW fp16 image with
/// bias and activation, written NHWC (one thread per output pixel).
pub fn launch_conv3x3_stem(gpu: &Gpu, shape: &Conv2dShape, args: &DirectConvArgs) -> Result<()> {
    let (params, blocks) = stem_params(shape, args)?;
    let f = &gpu.kernels().conv3x3_stem_nchw;
    launch_direct(gpu, f, "conv3x3_stem_nchw", blocks, &params)
}

// ---------------------------------------------------------------------------------------------
// Host-side weight preparation

/// BatchNorm2d parameters and running statistics (eval mode), one entry per channel.
#[derive(Debug, Clone, Copy)]
pub struct BatchNorm<'a> {
    /// `weight` (gamma).
    pub gamma: &'a [f32],
    /// `bias` (beta).
    pub beta: &'a [f32],
    /// `running_mean`.
    pub mean: &'a [f32],
    /// `running_var`.
    pub var: &'a [f32],
    /// `eps` (1e-5 by default in PyTorch).
    pub eps: f32,
}

/// Folds an eval-mode BatchNorm into the convolution before it, as TinyViT's
/// `Conv2d_BN.fuse()` does: with `s = gamma / sqrt(var + eps)`,
/// `w' = w * s[out]` and `b' = beta + (b - mean) * s` (b = 0 without a conv bias).
///
/// `weight` is `[Cout, ...]` in any per-output-channel layout; returns (w', b') in f32,
/// computed in f64.
pub fn fold_batchnorm(
    weight: &[f32],
    conv_bias: Option<&[f32]>,
    bn: &BatchNorm<'_>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    const WHAT: &str = "fold_batchnorm";
    let cout = bn.gamma.len();
    if cout == 0
        || bn.beta.len() != cout
        || bn.mean.len() != cout
        || bn.var.len() != cout
        || conv_bias.is_some_and(|b| b.len() != cout)
    {
        return Err(launch_error(
            WHAT,
            format!(
                "BatchNorm vectors differ in length: gamma {}, beta {}, mean {}, var {}, conv bias {:?}",
                bn.gamma.len(),
                bn.beta.len(),
                bn.mean.len(),
                bn.var.len(),
                conv_bias.map(<[f32]>::len)
            ),
        ));
    }
    if weight.is_empty() || weight.len() % cout != 0 {
        return Err(launch_error(
            WHAT,
            format!(
                "weight has {} values, not a positive multiple of {cout} channels",
                weight.len()
            ),
        ));
    }
    let per_channel = weight.len() / cout;
    let mut scale = Vec::with_capacity(cout);
    for c in 0..cout {
        let denom = bn.var[c] as f64 + bn.eps as f64;
        if denom.is_nan() || denom <= 0.0 {
            return Err(launch_error(
                WHAT,
                format!(
                    "channel {c}: running_var {} + eps {} is not positive",
                    bn.var[c], bn.eps
                ),
            ));
        }
        scale.push(bn.gamma[c] as f64 / denom.sqrt());
    }
    let folded_w = weight
        .iter()
        .enumerate()
        .map(|(i, &w)| (w as f64 * scale[i / per_channel]) as f32)
        .collect();
    let folded_b = (0..cout)
        .map(|c| {
            let b = conv_bias.map_or(0.0, |b| b[c] as f64);
            (bn.beta[c] as f64 + (b - bn.mean[c] as f64) * scale[c]) as f32
        })
        .collect();
    Ok((folded_w, folded_b))
}

/// PyTorch conv weight `[Cout, Cin, kh, kw]` -> `[Cout, kh, kw, Cin]`, the K order of the
/// implicit-GEMM kernel (K index = (ky * kw + kx) * Cin + ci).
pub fn conv_weight_ohwi(
    weight: &[f32],
    out_channels: usize,
    in_channels: usize,
    kernel_h: usize,
    kernel_w: usize,
) -> Result<Vec<f32>> {
    let taps = kernel_h.saturating_mul(kernel_w);
    let expected = out_channels
        .saturating_mul(in_channels)
        .saturating_mul(taps);
    if weight.len() != expected || expected == 0 {
        return Err(launch_error(
            "conv_weight_ohwi",
            format!(
                "weight has {} values, [{out_channels}, {in_channels}, {kernel_h}, {kernel_w}] needs {expected}",
                weight.len()
            ),
        ));
    }
    let mut out = vec![0.0; expected];
    for co in 0..out_channels {
        for ci in 0..in_channels {
            for t in 0..taps {
                out[(co * taps + t) * in_channels + ci] =
                    weight[(co * in_channels + ci) * taps + t];
            }
        }
    }
    Ok(out)
}

/// PyTorch depthwise weight `[C, 1, kh, kw]` -> tap-major `[kh * kw, C]` (the depthwise
/// kernel loads 8 channels of one tap as one 16-byte vector).
pub fn depthwise_weight_taps(
    weight: &[f32],
    channels: usize,
    kernel_h: usize,
    kernel_w: usize,
) -> Result<Vec<f32>> {
    let taps = kernel_h.saturating_mul(kernel_w);
    if weight.len() != channels.saturating_mul(taps) || weight.is_empty() {
        return Err(launch_error(
            "depthwise_weight_taps",
            format!(
                "weight has {} values, [{channels}, 1, {kernel_h}, {kernel_w}] needs {}",
                weight.len(),
                channels.saturating_mul(taps)
            ),
        ));
    }
    let mut out = vec![0.0; weight.len()];
    for c in 0..channels {
        for t in 0..taps {
            out[t * channels + c] = weight[c * taps + t];
        }
    }
    Ok(out)
}
