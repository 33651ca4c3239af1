//! Fused TinyViT convolution blocks (kernels/tinyvit.cu): 1x1 expand + GELU, depthwise 3x3 +
//! GELU, 1x1 project, in one launch whose expanded activation stays in shared memory.
//!
//! - [`launch_mbconv`]: a whole MBConv block (64 channels, expand ratio 4, shortcut + GELU).
//! - [`launch_patch_merging_c64`]: layers.0's PatchMerging (64 -> 128 channels, stride 2).
//!
//! And the transformer block's MLP (fc1 + GELU + fc2 + residual in one launch, the hidden
//! activations never leave the SM): [`launch_tinyvit_mlp`] for the widths in [`MLP_CHANNELS`].

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::gemm::Matrix;
use super::{launch_error, overlaps, DeviceRegion};
use crate::error::Result;
use crate::gpu::Gpu;

const HALF: usize = 2;
const THREADS: u32 = 256;
/// Channels of the fused MBConv's input and output.
pub const MBCONV_CHANNELS: usize = 64;
/// Hidden channels of the fused MBConv (expand ratio 4).
pub const MBCONV_HIDDEN: usize = 4 * MBCONV_CHANNELS;
/// Input channels of the fused PatchMerging.
pub const PATCH_MERGING_IN: usize = 64;
/// Output (and hidden) channels of the fused PatchMerging.
pub const PATCH_MERGING_OUT: usize = 128;

/// One compiled block: its kernel, channels, depthwise stride, output tile and dynamic shared
/// memory (the `Block<...>` instantiations in kernels/tinyvit.cu: the input halo, the expanded
/// and depthwise tiles and a double buffer of one 64-channel chunk's weights; the MBConv's fits
/// two blocks per SM on sm_90, the PatchMerging's one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvBlock {
    pub(crate) kernel: &'static str,
    cin: usize,
    hidden: usize,
    cout: usize,
    stride: usize,
    tile: (usize, usize),
    pub(crate) smem_bytes: u32,
}

pub(crate) const MBCONV: ConvBlock = ConvBlock {
    kernel: "mbconv_c64_e4",
    cin: MBCONV_CHANNELS,
    hidden: MBCONV_HIDDEN,
    cout: MBCONV_CHANNELS,
    stride: 1,
    tile: (8, 16),
    smem_bytes: 113_920,
};

pub(crate) const PATCH_MERGING: ConvBlock = ConvBlock {
    kernel: "patch_merging_c64_c128",
    cin: PATCH_MERGING_IN,
    hidden: PATCH_MERGING_OUT,
    cout: PATCH_MERGING_OUT,
    stride: 2,
    tile: (8, 8),
    smem_bytes: 160_000,
};

/// Geometry of a fused block's input: NHWC `[batch, height, width, C]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvBlockShape {
    /// Images.
    pub batch: usize,
    /// Input rows.
    pub height: usize,
    /// Input columns.
    pub width: usize,
}

/// The operands of a fused block (BatchNorms folded into the convolutions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvBlockArgs {
    /// NHWC fp16 `[batch, height, width, Cin]` packed, 16-byte aligned.
    pub input: DeviceRegion,
    /// conv1: fp16 `[hidden, Cin]` (PyTorch `[out, in]`), 16-byte aligned.
    pub expand_weight: DeviceRegion,
    /// conv1 bias: f32 `[hidden]`.
    pub expand_bias: DeviceRegion,
    /// conv2 (depthwise 3x3, pad 1): fp16 `[9, hidden]` tap-major
    /// ([`crate::ops::conv::depthwise_weight_taps`]).
    pub depthwise_weight: DeviceRegion,
    /// conv2 bias: f32 `[hidden]`.
    pub depthwise_bias: DeviceRegion,
    /// conv3: fp16 `[Cout, hidden]` (PyTorch `[out, in]`).
    pub project_weight: DeviceRegion,
    /// conv3 bias: f32 `[Cout]`.
    pub project_bias: DeviceRegion,
    /// NHWC fp16 `[batch, Ho, Wo, Cout]` packed; must not overlap `input`.
    pub output: DeviceRegion,
}

/// Mirrors `ConvBlockParams` in kernels/tinyvit.cu.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct ConvBlockParams {
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
    ho: i32,
    wo: i32,
    tiles_x: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for ConvBlockParams {}

impl ConvBlock {
    /// Output (rows, columns) of the depthwise 3x3 (pad 1) at this block's stride.
    fn output(&self, shape: &ConvBlockShape) -> (usize, usize) {
        let out = |n: usize| (n - 1) / self.stride + 1;
        (out(shape.height), out(shape.width))
    }

    /// Validates a launch: (parameters, grid).
    fn params(
        &self,
        shape: &ConvBlockShape,
        args: &ConvBlockArgs,
    ) -> Result<(ConvBlockParams, (u32, u32))> {
        let kernel = self.kernel;
        let ConvBlockShape {
            batch,
            height,
            width,
        } = *shape;
        if batch == 0 || height == 0 || width == 0 {
            return Err(launch_error(kernel, format!("empty shape {shape:?}")));
        }
        let (ho, wo) = self.output(shape);
        let bytes = |pixels: [usize; 3], c: usize| {
            pixels
                .iter()
                .try_fold(c * HALF, |acc, &d| acc.checked_mul(d))
        };
        let input = bytes([batch, height, width], self.cin);
        let output = bytes([batch, ho, wo], self.cout);
        args.input.check(kernel, "input", input, 16)?;
        args.output.check(kernel, "output", output, 16)?;
        let (a, b) = (args.input.ptr, args.output.ptr);
        let (a_end, b_end) = (
            a.saturating_add(input.unwrap_or(0) as u64),
            b.saturating_add(output.unwrap_or(0) as u64),
        );
        if a < b_end && b < a_end {
            return Err(launch_error(
                kernel,
                "output overlaps input (blocks read their neighbours' input halo)",
            ));
        }
        let (cin, hid, cout) = (self.cin, self.hidden, self.cout);
        let w = |what: &str, region: &DeviceRegion, elements: usize, size: usize| {
            region.check(kernel, what, Some(elements * size), 16)
        };
        w("expand weight", &args.expand_weight, hid * cin, HALF)?;
        w("expand bias", &args.expand_bias, hid, 4)?;
        w("depthwise weight", &args.depthwise_weight, 9 * hid, HALF)?;
        w("depthwise bias", &args.depthwise_bias, hid, 4)?;
        w("project weight", &args.project_weight, cout * hid, HALF)?;
        w("project bias", &args.project_bias, cout, 4)?;
        let tiles_x = wo.div_ceil(self.tile.1);
        let tiles = ho
            .div_ceil(self.tile.0)
            .checked_mul(tiles_x)
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| launch_error(kernel, "grid overflows"))?;
        let grid_batch = u32::try_from(batch)
            .ok()
            .filter(|&b| b <= 65_535)
            .ok_or_else(|| launch_error(kernel, format!("batch {batch} exceeds the grid")))?;
        let to_i32 = |v: usize| {
            i32::try_from(v).map_err(|_| launch_error(kernel, format!("dimension {v} exceeds i32")))
        };
        // Element offsets inside one image must fit the kernel's 32-bit pixel math.
        to_i32(height.saturating_mul(width).saturating_mul(cin.max(cout)))?;
        let params = ConvBlockParams {
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
            ho: to_i32(ho)?,
            wo: to_i32(wo)?,
            tiles_x: to_i32(tiles_x)?,
        };
        Ok((params, (tiles, grid_batch)))
    }

    fn launch(
        &self,
        gpu: &Gpu,
        f: &cudarc::driver::CudaFunction,
        shape: &ConvBlockShape,
        args: &ConvBlockArgs,
    ) -> Result<()> {
        let (params, (tiles, batch)) = self.params(shape, args)?;
        let cfg = LaunchConfig {
            grid_dim: (tiles, batch, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: self.smem_bytes,
        };
        let mut launch = gpu.stream().launch_builder(f);
        launch.arg(&params);
        // SAFETY: parameters mirror the kernel's; every buffer was checked above.
        unsafe { launch.launch(cfg) }.map_err(|e| launch_error(self.kernel, e.to_string()))?;
        Ok(())
    }

    /// FLOPs as the unfused chain counts them (2 x multiply-adds of both 1x1 convolutions and
    /// the depthwise conv; the halo recomputation is not counted).
    fn flops(&self, shape: &ConvBlockShape) -> f64 {
        let (ho, wo) = self.output(shape);
        let inputs = (shape.batch * shape.height * shape.width) as f64;
        let outputs = (shape.batch * ho * wo) as f64;
        let (cin, hid, cout) = (self.cin as f64, self.hidden as f64, self.cout as f64);
        2.0 * (inputs * cin * hid + outputs * (9.0 * hid + hid * cout))
    }
}

/// Checks a fused MBConv's arguments exactly as [`launch_mbconv`] does.
pub fn check_mbconv(shape: &ConvBlockShape, args: &ConvBlockArgs) -> Result<()> {
    MBCONV.params(shape, args).map(|_| ())
}

/// One TinyViT MBConv block (64 channels, expand 4), eval mode with folded BatchNorms:
/// `y = gelu(conv3(gelu(dw3x3(gelu(conv1(x))))) + x)`, hidden activations rounded to fp16 as
/// the unfused chain stores them.
pub fn launch_mbconv(gpu: &Gpu, shape: &ConvBlockShape, args: &ConvBlockArgs) -> Result<()> {
    MBCONV.launch(gpu, &gpu.kernels().mbconv_c64_e4, shape, args)
}

/// FLOPs of a fused MBConv as the unfused chain counts them.
pub fn mbconv_flops(shape: &ConvBlockShape) -> f64 {
    MBCONV.flops(shape)
}

/// Checks a fused PatchMerging's arguments exactly as [`launch_patch_merging_c64`] does.
pub fn check_patch_merging_c64(shape: &ConvBlockShape, args: &ConvBlockArgs) -> Result<()> {
    PATCH_MERGING.params(shape, args).map(|_| ())
}

/// TinyViT's PatchMerging from 64 to 128 channels (stride 2; MobileSAM's layers.0), eval mode
/// with folded BatchNorms: `y = conv3(gelu(dw3x3_s2(gelu(conv1(x)))))` on the NHWC map,
/// output NHWC `[batch, (H-1)/2+1, (W-1)/2+1, 128]` (the official `[L, C]` tokens).
pub fn launch_patch_merging_c64(
    gpu: &Gpu,
    shape: &ConvBlockShape,
    args: &ConvBlockArgs,
) -> Result<()> {
    PATCH_MERGING.launch(gpu, &gpu.kernels().patch_merging_c64_c128, shape, args)
}

/// FLOPs of a fused PatchMerging as the unfused chain counts them.
pub fn patch_merging_c64_flops(shape: &ConvBlockShape) -> f64 {
    PATCH_MERGING.flops(shape)
}

/// Channel counts (C) with a fused MLP kernel; hidden = 4 C. Other widths use two GEMMs.
pub const MLP_CHANNELS: [usize; 2] = [MLPS[0].channels, MLPS[1].channels];

/// One compiled fused MLP (the `Mlp<C, BM, STAGES>` instantiations in kernels/tinyvit.cu): its
/// kernel, channels, rows per block and dynamic shared memory (the x/r tile, one hidden chunk,
/// b2 and a ring of 64-unit weight chunks: 2 stages and 2 blocks per SM at 128 channels, 3
/// stages and one block per SM at 160).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MlpKernel {
    pub(crate) kernel: &'static str,
    channels: usize,
    rows_per_block: usize,
    pub(crate) smem_bytes: u32,
}

/// Indexed like [`MLP_CHANNELS`].
pub(crate) const MLPS: [MlpKernel; 2] = [
    MlpKernel {
        kernel: "tinyvit_mlp_c128",
        channels: 128,
        rows_per_block: 64,
        smem_bytes: 99_328,
    },
    MlpKernel {
        kernel: "tinyvit_mlp_c160",
        channels: 160,
        rows_per_block: 32,
        smem_bytes: 150_400,
    },
];

/// Rows and channels of a fused MLP: `[rows, channels]` in and out, hidden `4 x channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlpShape {
    /// Tokens (pixels).
    pub rows: usize,
    /// C, one of [`MLP_CHANNELS`].
    pub channels: usize,
}

/// The operands of a fused MLP. Matrices are fp16 `[rows, C]` with 16-byte aligned rows (row
/// stride a multiple of 8 elements, >= C; the batch stride is unused); weights fp16 in
/// PyTorch `[out, in]` layout and biases f32, all 16-byte aligned. `output` must not overlap
/// any operand.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlpArgs {
    /// The MLP's input (its LayerNorm's output).
    pub x: Matrix,
    /// fc1.weight: `[4C, C]`.
    pub fc1_weight: DeviceRegion,
    /// fc1.bias: `[4C]` f32.
    pub fc1_bias: DeviceRegion,
    /// fc2.weight: `[C, 4C]`.
    pub fc2_weight: DeviceRegion,
    /// fc2.bias: `[C]` f32.
    pub fc2_bias: DeviceRegion,
    /// Added after fc2 (the block's residual stream).
    pub residual: Matrix,
    /// `residual + fc2(gelu(fc1(x)))`.
    pub output: Matrix,
}

/// Mirrors `MlpParams` in kernels/tinyvit.cu.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct MlpParams {
    x: u64,
    w1: u64,
    b1: u64,
    w2: u64,
    b2: u64,
    r: u64,
    y: u64,
    ldx: i64,
    ldr: i64,
    ldy: i64,
    m: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for MlpParams {}

/// Whether `channels` has a fused MLP kernel.
pub fn has_fused_mlp(channels: usize) -> bool {
    MLP_CHANNELS.contains(&channels)
}

/// Validates a fused MLP launch: (kernel index, parameters, blocks).
fn mlp_params(shape: &MlpShape, args: &MlpArgs) -> Result<(usize, MlpParams, u32)> {
    let MlpShape { rows, channels: c } = *shape;
    let index = MLPS
        .iter()
        .position(|spec| spec.channels == c)
        .ok_or_else(|| {
            launch_error(
                "tinyvit_mlp",
                format!("no fused MLP for {c} channels (have {MLP_CHANNELS:?})"),
            )
        })?;
    let spec = MLPS[index];
    let kernel = spec.kernel;
    if rows == 0 {
        return Err(launch_error(kernel, "empty shape: 0 rows"));
    }
    let m =
        i32::try_from(rows).map_err(|_| launch_error(kernel, format!("{rows} rows exceed i32")))?;
    // [rows, C] with 16-byte rows (the kernel copies x and r with 16-byte cp.async).
    let matrix = |what: &str, a: &Matrix| -> Result<usize> {
        if a.row_stride < c || a.row_stride % 8 != 0 {
            return Err(launch_error(
                kernel,
                format!(
                    "{what}: row stride {} must be >= {c} and a multiple of 8 elements",
                    a.row_stride
                ),
            ));
        }
        let span = a.span_bytes(rows, c, 1);
        a.region.check(kernel, what, span, 16)?;
        Ok(span.unwrap_or(0))
    };
    let x = matrix("x", &args.x)?;
    let r = matrix("residual", &args.residual)?;
    let y = matrix("output", &args.output)?;
    let hid = 4 * c;
    let half = |n: usize| Some(n * HALF);
    let float = |n: usize| Some(n * 4);
    let operands = [
        ("fc1 weight", &args.fc1_weight, half(hid * c)),
        ("fc1 bias", &args.fc1_bias, float(hid)),
        ("fc2 weight", &args.fc2_weight, half(c * hid)),
        ("fc2 bias", &args.fc2_bias, float(c)),
    ];
    for (what, region, bytes) in operands {
        region.check(kernel, what, bytes, 16)?;
    }
    let inputs = [
        ("x", &args.x.region, x),
        ("residual", &args.residual.region, r),
    ]
    .into_iter()
    .chain(operands.map(|(what, region, bytes)| (what, region, bytes.unwrap_or(0))));
    for (what, region, bytes) in inputs {
        if overlaps(&args.output.region, y, region, bytes) {
            return Err(launch_error(kernel, format!("output overlaps {what}")));
        }
    }
    let blocks = u32::try_from(rows.div_ceil(spec.rows_per_block))
        .map_err(|_| launch_error(kernel, "grid overflows"))?;
    let params = MlpParams {
        x: args.x.region.ptr,
        w1: args.fc1_weight.ptr,
        b1: args.fc1_bias.ptr,
        w2: args.fc2_weight.ptr,
        b2: args.fc2_bias.ptr,
        r: args.residual.region.ptr,
        y: args.output.region.ptr,
        ldx: args.x.row_stride as i64,
        ldr: args.residual.row_stride as i64,
        ldy: args.output.row_stride as i64,
        m,
    };
    Ok((index, params, blocks))
}

/// Checks a fused MLP's arguments exactly as [`launch_tinyvit_mlp`] does.
pub fn check_tinyvit_mlp(shape: &MlpShape, args: &MlpArgs) -> Result<()> {
    mlp_params(shape, args).map(|_| ())
}

/// TinyViT's `Mlp.forward` after its LayerNorm plus the block's residual, in one launch:
/// `output = residual + fc2(gelu(fc1(x)))` with the hidden activations rounded to fp16. The
/// result has the same bits as the two-GEMM chain (fc1 + GELU, then fc2 + residual after the
/// activation) of [`crate::ops::gemm`]; see kernels/tinyvit.cu.
pub fn launch_tinyvit_mlp(gpu: &Gpu, shape: &MlpShape, args: &MlpArgs) -> Result<()> {
    let (index, params, blocks) = mlp_params(shape, args)?;
    let spec = MLPS[index];
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: spec.smem_bytes,
    };
    let mut launch = gpu
        .stream()
        .launch_builder(&gpu.kernels().tinyvit_mlp[index]);
    launch.arg(&params);
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch.launch(cfg) }.map_err(|e| launch_error(spec.kernel, e.to_string()))?;
    Ok(())
}

/// FLOPs of a fused MLP: its two GEMMs, `2 x rows x C x 4C` each.
pub fn tinyvit_mlp_flops(shape: &MlpShape) -> f64 {
    let (rows, c) = (shape.rows as f64, shape.channels as f64);
    2.0 * 2.0 * rows * c * 4.0 * c
}
