//! Launcher for `kernels/sam_heads.cu`: the MobileSAM mask decoder's five output MLPs in one
//! launch (official `MaskDecoder.predict_masks`: `iou_prediction_head` = MLP(256, 256, 4, 3
//! layers) on token 0, `output_hypernetworks_mlps[i]` = MLP(256, 256, 32, 3 layers) on token
//! 1 + i; ReLU between the layers, none after the last).
//!
//! fp16 queries, weights (nn.Linear `[out, in]`, stacked over the 5 MLPs, the IoU head's last
//! layer padded 4 -> 32 rows with zeros) and output; f32 biases. The output is `[5][stride][32]`
//! fp16, row `mlp * stride + prompt`: what [`super::sam_decoder::launch_upscale_masks`] reads as
//! `heads`. Errors are `Error::Launch` naming the kernel and the problem.

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::sam_decoder::{HEADS, OUTPUT_TOKENS, SAM_DIM, UPSCALED_CHANNELS};
use super::{launch_error, launch_with_params, overlaps, DeviceRegion};
use crate::error::Result;
use crate::gpu::Gpu;

/// MLPs computed: the IoU head, then the 4 hypernetwork MLPs.
pub const HEAD_MLPS: usize = HEADS;
/// Input and hidden width of every head MLP.
pub const HEAD_HIDDEN: usize = SAM_DIM;
/// Output columns of every head MLP (the IoU head's 4 padded with zeros).
pub const HEAD_OUT: usize = UPSCALED_CHANNELS;
/// Outputs of the IoU head (columns 0..4 of its row block).
pub const IOU_OUTPUTS: usize = 4;
/// Most prompts of one launch.
pub const HEADS_MAX_PROMPTS: usize = 65535;
/// Most tokens per prompt.
pub const HEADS_MAX_TOKENS: usize = 1 << 16;
/// Prompts per CTA (the mma row tile).
pub const HEADS_PROMPTS_PER_CTA: usize = 16;
/// Dynamic shared memory of `sam_heads`: a 4-slot ring of 256 x 40 halves, the x tile and the
/// hidden tile (16 x 264 halves each; static_assert in the kernel).
pub(crate) const HEADS_SMEM_BYTES: u32 = 98_816;

const KERNEL: &str = "sam_heads";
const THREADS: u32 = 256;

/// Bytes of each layer's stacked weight (fp16) and bias (f32).
const LAYER_BYTES: [(usize, usize); 3] = [
    (
        HEAD_MLPS * HEAD_HIDDEN * HEAD_HIDDEN * 2,
        HEAD_MLPS * HEAD_HIDDEN * 4,
    ),
    (
        HEAD_MLPS * HEAD_HIDDEN * HEAD_HIDDEN * 2,
        HEAD_MLPS * HEAD_HIDDEN * 4,
    ),
    (
        HEAD_MLPS * HEAD_OUT * HEAD_HIDDEN * 2,
        HEAD_MLPS * HEAD_OUT * 4,
    ),
];

/// Operands of [`launch_heads`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadsArgs {
    /// Prompts, 1..=[`HEADS_MAX_PROMPTS`].
    pub prompts: usize,
    /// Tokens per prompt, 5..=[`HEADS_MAX_TOKENS`] (the 5 output tokens first).
    pub tokens: usize,
    /// fp16 `[prompts, tokens, 256]`, packed: the queries after the final attention.
    pub queries: DeviceRegion,
    /// Per layer (weight, bias): fp16 `[5][256][256]` + f32 `[5][256]`, the same for layer 2,
    /// fp16 `[5][32][256]` + f32 `[5][32]` for layer 3 (MLP 0, the IoU head, padded with zero
    /// rows and biases past its 4 outputs).
    pub layers: [(DeviceRegion, DeviceRegion); 3],
    /// Rows between the output's MLP blocks, >= `prompts` (the decode plan's maximum).
    pub stride: usize,
    /// fp16 `[5][stride][32]` output (rows of prompts past `prompts` are not written); must not
    /// overlap any input.
    pub y: DeviceRegion,
}

/// Mirrors `HeadsParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct HeadsParams {
    x: u64,
    w1: u64,
    b1: u64,
    w2: u64,
    b2: u64,
    w3: u64,
    b3: u64,
    y: u64,
    prompts: i32,
    tokens: i32,
    stride: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for HeadsParams {}

/// Bytes of the output `[5][stride][32]` fp16 for `stride` rows per MLP.
pub fn heads_output_bytes(stride: usize) -> usize {
    HEAD_MLPS * stride * HEAD_OUT * 2
}

fn heads_params(a: &HeadsArgs) -> Result<(HeadsParams, u32)> {
    if a.prompts == 0 || a.prompts > HEADS_MAX_PROMPTS {
        return Err(launch_error(
            KERNEL,
            format!("prompts {} must be in 1..={HEADS_MAX_PROMPTS}", a.prompts),
        ));
    }
    if !(OUTPUT_TOKENS..=HEADS_MAX_TOKENS).contains(&a.tokens) {
        return Err(launch_error(
            KERNEL,
            format!(
                "tokens {} must be in {OUTPUT_TOKENS}..={HEADS_MAX_TOKENS}",
                a.tokens
            ),
        ));
    }
    if a.stride < a.prompts || a.stride > HEADS_MAX_PROMPTS {
        return Err(launch_error(
            KERNEL,
            format!(
                "stride {} must be >= prompts {} and <= {HEADS_MAX_PROMPTS}",
                a.stride, a.prompts
            ),
        ));
    }
    let x_bytes = a.prompts * a.tokens * HEAD_HIDDEN * 2;
    let y_bytes = heads_output_bytes(a.stride);
    a.queries.check(KERNEL, "queries", Some(x_bytes), 16)?;
    const NAMES: [(&str, &str); 3] = [
        ("layer 1 weight", "layer 1 bias"),
        ("layer 2 weight", "layer 2 bias"),
        ("layer 3 weight", "layer 3 bias"),
    ];
    for (((w, b), (w_bytes, b_bytes)), (w_name, b_name)) in
        a.layers.iter().zip(LAYER_BYTES).zip(NAMES)
    {
        w.check(KERNEL, w_name, Some(w_bytes), 16)?;
        b.check(KERNEL, b_name, Some(b_bytes), 16)?;
    }
    a.y.check(KERNEL, "y", Some(y_bytes), 16)?;
    if overlaps(&a.y, y_bytes, &a.queries, x_bytes) {
        return Err(launch_error(KERNEL, "the output overlaps the queries"));
    }
    for (((w, b), (w_bytes, b_bytes)), (w_name, b_name)) in
        a.layers.iter().zip(LAYER_BYTES).zip(NAMES)
    {
        for (what, region, bytes) in [(w_name, w, w_bytes), (b_name, b, b_bytes)] {
            if overlaps(&a.y, y_bytes, region, bytes) {
                return Err(launch_error(
                    KERNEL,
                    format!("the output overlaps the {what}"),
                ));
            }
        }
    }
    let [(w1, b1), (w2, b2), (w3, b3)] = a.layers;
    let params = HeadsParams {
        x: a.queries.ptr,
        w1: w1.ptr,
        b1: b1.ptr,
        w2: w2.ptr,
        b2: b2.ptr,
        w3: w3.ptr,
        b3: b3.ptr,
        y: a.y.ptr,
        prompts: a.prompts as i32,
        tokens: a.tokens as i32,
        stride: a.stride as i32,
    };
    Ok((params, a.prompts.div_ceil(HEADS_PROMPTS_PER_CTA) as u32))
}

/// Checks [`launch_heads`]'s arguments exactly as the launch does, without a GPU.
pub fn check_heads(args: &HeadsArgs) -> Result<()> {
    heads_params(args).map(|_| ())
}

/// The 5 head MLPs of every prompt in one launch: grid (prompts / 16, 5), each CTA streaming
/// one MLP's weights (272 KB) once for its 16 prompts. Bitwise deterministic.
pub fn launch_heads(gpu: &Gpu, args: &HeadsArgs) -> Result<()> {
    let (params, tiles) = heads_params(args)?;
    let cfg = LaunchConfig {
        grid_dim: (tiles, HEAD_MLPS as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: HEADS_SMEM_BYTES,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch_with_params(gpu, KERNEL, &gpu.kernels().sam_heads, cfg, &params) }
}
