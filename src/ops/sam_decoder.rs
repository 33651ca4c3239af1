//! Launchers for `kernels/sam_decoder.cu`: the MobileSAM prompt encoder (positional encoding of
//! points and boxes, token assembly) and the end of the mask upscaling fused with the
//! hypernetwork mask product and the multimask slice. The transformer itself is GEMMs,
//! LayerNorms and attentions from the other launchers (see `models::mobilesam::decoder`).

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::{
    check_eps, check_smem_optin, launch_error, launch_with_params, overlaps, DeviceRegion,
};
use crate::error::Result;
use crate::gpu::Gpu;

/// Channels of the SAM transformer.
pub const SAM_DIM: usize = 256;
/// Output tokens in front of the prompt tokens: the IoU token and 4 mask tokens.
pub const OUTPUT_TOKENS: usize = 5;
/// Side of the image embedding.
pub const EMBED_SIDE: usize = 64;
/// Pixels of the image embedding.
pub const EMBED_PIXELS: usize = EMBED_SIDE * EMBED_SIDE;
/// Channels of the final upscaled map (`transformer_dim // 8`).
pub const UPSCALED_CHANNELS: usize = 32;
/// Rows of the head outputs: IoU head, then the 4 hypernetwork MLPs.
pub const HEADS: usize = 5;

/// Label codes in a prompt buffer (the index of `point_embeddings`, -1 for padding).
pub mod label {
    /// `not_a_point_embed` (PromptEncoder's padding point, label -1).
    pub const PADDING: f32 = -1.0;
    /// Background point (label 0).
    pub const NEGATIVE: f32 = 0.0;
    /// Foreground point (label 1).
    pub const POSITIVE: f32 = 1.0;
    /// First box corner (`point_embeddings[2]`).
    pub const BOX_TOP_LEFT: f32 = 2.0;
    /// Second box corner (`point_embeddings[3]`).
    pub const BOX_BOTTOM_RIGHT: f32 = 3.0;
}

/// Mirrors `PromptParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct PromptParams {
    count: u64,
    prompts: u64,
    header: u64,
    gauss: u64,
    label_embed: u64,
    output_tokens: u64,
    tokens: u64,
    points: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for PromptParams {}

/// Operands of [`launch_prompt_encode`].
#[derive(Debug, Clone, Copy)]
pub struct PromptEncodeArgs {
    /// Prompts computed (grid.y); prompts past the device count become padding.
    pub batch: usize,
    /// Points per prompt (2 for a box).
    pub points: usize,
    /// One u32: prompts in use.
    pub count: DeviceRegion,
    /// `[batch, points, 3]` f32: x, y in frame pixels and a [`label`] code.
    pub prompts: DeviceRegion,
    /// The frame's `FrameHeader` (size and MobileSAM extent).
    pub header: DeviceRegion,
    /// `[2, 128]` f32 Gaussian frequencies.
    pub gauss: DeviceRegion,
    /// `[5, 256]` f32: `point_embeddings[0..4]`, then `not_a_point_embed`.
    pub label_embed: DeviceRegion,
    /// `[5, 256]` f32: `iou_token`, then `mask_tokens`.
    pub output_tokens: DeviceRegion,
    /// `[batch, 5 + points, 256]` fp16 output.
    pub tokens: DeviceRegion,
}

/// Writes the decoder's input tokens for every prompt (see the kernel file).
pub fn launch_prompt_encode(gpu: &Gpu, a: &PromptEncodeArgs) -> Result<()> {
    const KERNEL: &str = "sam_prompt_encode";
    if a.batch == 0 || a.batch > 65535 || a.points == 0 || a.points > 4096 {
        return Err(launch_error(
            KERNEL,
            format!(
                "batch {} must be 1..=65535 and points {} 1..=4096",
                a.batch, a.points
            ),
        ));
    }
    let tokens = OUTPUT_TOKENS + a.points;
    a.count.check(KERNEL, "count", Some(4), 4)?;
    a.prompts
        .check(KERNEL, "prompts", Some(a.batch * a.points * 12), 4)?;
    a.header.check(
        KERNEL,
        "frame header",
        Some(std::mem::size_of::<crate::frame::FrameHeader>()),
        4,
    )?;
    a.gauss.check(KERNEL, "gauss", Some(2 * 128 * 4), 4)?;
    a.label_embed
        .check(KERNEL, "label embeddings", Some(5 * SAM_DIM * 4), 4)?;
    a.output_tokens.check(
        KERNEL,
        "output tokens",
        Some(OUTPUT_TOKENS * SAM_DIM * 4),
        4,
    )?;
    a.tokens
        .check(KERNEL, "tokens", Some(a.batch * tokens * SAM_DIM * 2), 2)?;
    let params = PromptParams {
        count: a.count.ptr,
        prompts: a.prompts.ptr,
        header: a.header.ptr,
        gauss: a.gauss.ptr,
        label_embed: a.label_embed.ptr,
        output_tokens: a.output_tokens.ptr,
        tokens: a.tokens.ptr,
        points: a.points as i32,
    };
    let cfg = LaunchConfig {
        grid_dim: (tokens as u32, a.batch as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch_with_params(gpu, KERNEL, &gpu.kernels().sam_prompt_encode, cfg, &params) }
}

/// Mirrors `UpscaleMaskParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct UpscaleMaskParams {
    up1: u64,
    ln_gamma: u64,
    ln_beta: u64,
    w2: u64,
    b2: u64,
    heads: u64,
    count: u64,
    low_res: u64,
    iou: u64,
    mask_count: u64,
    eps: f32,
    batch: i32,
    stride: i32,
    first: i32,
    masks: i32,
    up1_ld: i32,
    normalized: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for UpscaleMaskParams {}

/// Dynamic shared memory of `sam_upscale_masks`: both 128-row chunks of LayerNorm2d + GELU
/// output, rows padded to 72 halves (static_assert in the kernel).
pub(crate) const UPSCALE_SMEM_BYTES: u32 = 36_864;

/// Channels after the first ConvTranspose2d of `output_upscaling`.
pub const UPSCALE1_CHANNELS: usize = 64;

/// Operands of [`launch_upscale_masks`].
#[derive(Debug, Clone, Copy)]
pub struct UpscaleMaskArgs {
    /// Prompts computed.
    pub batch: usize,
    /// Rows between the head outputs' blocks (the plan's maximum prompt count).
    pub stride: usize,
    /// Multimask output (mask tokens 1..4) or the single mask (token 0).
    pub multimask: bool,
    /// `[batch * 4096, 256]` fp16 with row stride `up1_ld`: the first ConvTranspose2d (+ bias)
    /// as a GEMM, columns `(dy, dx, channel)` (each row four sub-pixels of 64 channels).
    pub up1: DeviceRegion,
    /// Elements between the rows of `up1` (256 when packed; a multiple of 8).
    pub up1_ld: usize,
    /// `up1` already holds `GELU(LayerNorm2d(.))` ([`launch_convt1_ln_gelu`]): the kernel
    /// copies it instead of normalising (`ln` and `eps` are then unused but still checked).
    pub normalized: bool,
    /// `[64]` f32 LayerNorm2d weight and bias.
    pub ln: (DeviceRegion, DeviceRegion),
    /// LayerNorm2d eps.
    pub eps: f32,
    /// `[128, 64]` fp16 second ConvTranspose2d as GEMM rows `(dy2, dx2, channel)`.
    pub w2: DeviceRegion,
    /// `[128]` f32 its bias (repeated per sub-pixel).
    pub b2: DeviceRegion,
    /// `[5][stride][32]` fp16 head outputs.
    pub heads: DeviceRegion,
    /// One u32: prompts in use.
    pub count: DeviceRegion,
    /// `[batch, C, 256, 256]` f32 output.
    pub low_res: DeviceRegion,
    /// `[batch, C]` f32 output.
    pub iou: DeviceRegion,
    /// One u32 output: masks in use (`min(count, batch) * C`).
    pub mask_count: DeviceRegion,
}

/// Masks per prompt for the multimask flag.
pub fn masks_per_prompt(multimask: bool) -> usize {
    if multimask {
        3
    } else {
        1
    }
}

/// LayerNorm2d + GELU, the second ConvTranspose2d + GELU and `low_res = hyper_in @ upscaled`
/// in one kernel (the upscaled map is never stored), plus the IoU slice
/// (MaskDecoder.forward's `mask_slice`).
pub fn launch_upscale_masks(gpu: &Gpu, a: &UpscaleMaskArgs) -> Result<()> {
    const KERNEL: &str = "sam_upscale_masks";
    let c = masks_per_prompt(a.multimask);
    if a.batch == 0 || a.batch > 65535 || a.stride < a.batch {
        return Err(launch_error(
            KERNEL,
            format!(
                "batch {} must be 1..=65535 and <= stride {}",
                a.batch, a.stride
            ),
        ));
    }
    check_eps(KERNEL, a.eps)?;
    let pixels = 4 * 4 * EMBED_PIXELS;
    let rows = 4 * EMBED_PIXELS;
    let up1_row = 4 * UPSCALE1_CHANNELS;
    if a.up1_ld < up1_row || a.up1_ld % 8 != 0 || a.up1_ld > i32::MAX as usize {
        return Err(launch_error(
            KERNEL,
            format!(
                "up1 row stride {} must be a multiple of 8 and >= {up1_row}",
                a.up1_ld
            ),
        ));
    }
    a.up1.check(
        KERNEL,
        "up1",
        Some(((a.batch * EMBED_PIXELS - 1) * a.up1_ld + up1_row) * 2),
        16,
    )?;
    a.ln.0
        .check(KERNEL, "LayerNorm2d weight", Some(UPSCALE1_CHANNELS * 4), 4)?;
    a.ln.1
        .check(KERNEL, "LayerNorm2d bias", Some(UPSCALE1_CHANNELS * 4), 4)?;
    a.w2.check(
        KERNEL,
        "w2",
        Some(4 * UPSCALED_CHANNELS * UPSCALE1_CHANNELS * 2),
        16,
    )?;
    a.b2.check(KERNEL, "b2", Some(4 * UPSCALED_CHANNELS * 4), 4)?;
    a.heads.check(
        KERNEL,
        "heads",
        Some(HEADS * a.stride * UPSCALED_CHANNELS * 2),
        2,
    )?;
    a.count.check(KERNEL, "count", Some(4), 4)?;
    a.low_res
        .check(KERNEL, "low_res", Some(a.batch * c * pixels * 4), 4)?;
    a.iou.check(KERNEL, "iou", Some(a.batch * c * 4), 4)?;
    a.mask_count.check(KERNEL, "mask_count", Some(4), 4)?;
    let params = UpscaleMaskParams {
        up1: a.up1.ptr,
        ln_gamma: a.ln.0.ptr,
        ln_beta: a.ln.1.ptr,
        w2: a.w2.ptr,
        b2: a.b2.ptr,
        heads: a.heads.ptr,
        count: a.count.ptr,
        low_res: a.low_res.ptr,
        iou: a.iou.ptr,
        mask_count: a.mask_count.ptr,
        eps: a.eps,
        batch: a.batch as i32,
        stride: a.stride as i32,
        first: i32::from(a.multimask),
        masks: c as i32,
        up1_ld: a.up1_ld as i32,
        normalized: i32::from(a.normalized),
    };
    // 256 rows of 64 channels per block (kBlockRows in the kernel).
    let cfg = LaunchConfig {
        grid_dim: ((rows / 256) as u32, a.batch as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: UPSCALE_SMEM_BYTES,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch_with_params(gpu, KERNEL, &gpu.kernels().sam_upscale_masks, cfg, &params) }
}

/// Mirrors `ConvT1Params` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct ConvT1Params {
    x: u64,
    w: u64,
    bias: u64,
    ln_gamma: u64,
    ln_beta: u64,
    y: u64,
    rows: i32,
    eps: f32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for ConvT1Params {}

/// Dynamic shared memory of `sam_convt1_ln_gelu`: the weight and two x tiles of rows padded to
/// 264 halves, bias, gamma, beta (static_assert in the kernel).
pub const CONVT1_SMEM_BYTES: u32 = 204_288;
/// Rows per `sam_convt1_ln_gelu` tile: `rows` must be a multiple of it.
pub const CONVT1_TILE_ROWS: usize = 64;

/// Operands of [`launch_convt1_ln_gelu`].
#[derive(Debug, Clone, Copy)]
pub struct ConvT1Args {
    /// Rows (prompts x 4096 pixels), a positive multiple of [`CONVT1_TILE_ROWS`].
    pub rows: usize,
    /// fp16 `[rows, 256]` (the final keys), packed.
    pub x: DeviceRegion,
    /// fp16 `[256, 256]`: the first ConvTranspose2d as GEMM rows `(dy, dx, channel)`.
    pub weight: DeviceRegion,
    /// f32 `[256]`: its bias, repeated per sub-pixel.
    pub bias: DeviceRegion,
    /// `[64]` f32 LayerNorm2d weight and bias, and its eps.
    pub ln: (DeviceRegion, DeviceRegion),
    pub eps: f32,
    /// fp16 `[rows, 256]` output; must not overlap x.
    pub y: DeviceRegion,
    /// SMs to leave without a CTA of this launch, for work issued on another stream at the same
    /// time (a CTA takes a whole SM's shared memory); 0 uses every SM. At least one is used.
    pub spare_sms: usize,
}

/// CTAs of a [`launch_convt1_ln_gelu`] over `rows` rows on `sm_count` SMs, `spare_sms` of them
/// left free: one per SM, each of two 8-warp groups taking every other tile.
pub fn convt1_ctas(rows: usize, sm_count: usize, spare_sms: usize) -> usize {
    (rows / CONVT1_TILE_ROWS)
        .div_ceil(2)
        .min(sm_count.saturating_sub(spare_sms))
        .max(1)
}

fn convt1_params(a: &ConvT1Args) -> Result<ConvT1Params> {
    const KERNEL: &str = "sam_convt1_ln_gelu";
    if a.rows == 0 || a.rows % CONVT1_TILE_ROWS != 0 || a.rows > i32::MAX as usize / SAM_DIM {
        return Err(launch_error(
            KERNEL,
            format!(
                "rows {} must be a positive multiple of {CONVT1_TILE_ROWS}",
                a.rows
            ),
        ));
    }
    check_eps(KERNEL, a.eps)?;
    let bytes = a.rows * SAM_DIM * 2;
    a.x.check(KERNEL, "x", Some(bytes), 16)?;
    a.weight
        .check(KERNEL, "weight", Some(SAM_DIM * SAM_DIM * 2), 16)?;
    a.bias.check(KERNEL, "bias", Some(SAM_DIM * 4), 4)?;
    a.ln.0
        .check(KERNEL, "LayerNorm2d weight", Some(UPSCALE1_CHANNELS * 4), 4)?;
    a.ln.1
        .check(KERNEL, "LayerNorm2d bias", Some(UPSCALE1_CHANNELS * 4), 4)?;
    a.y.check(KERNEL, "y", Some(bytes), 16)?;
    if overlaps(&a.y, bytes, &a.x, bytes) {
        return Err(launch_error(KERNEL, "the output overlaps x"));
    }
    Ok(ConvT1Params {
        x: a.x.ptr,
        w: a.weight.ptr,
        bias: a.bias.ptr,
        ln_gamma: a.ln.0.ptr,
        ln_beta: a.ln.1.ptr,
        y: a.y.ptr,
        rows: a.rows as i32,
        eps: a.eps,
    })
}

/// Checks [`launch_convt1_ln_gelu`]'s arguments exactly as the launch does, without a GPU.
pub fn check_convt1_ln_gelu(args: &ConvT1Args) -> Result<()> {
    convt1_params(args).map(|_| ())
}

/// `y = GELU(LayerNorm2d(x W^T + b))` per 64-channel sub-pixel: the first ConvTranspose2d of
/// `output_upscaling` with its norm and activation, for [`launch_upscale_masks`] with
/// `normalized` set. Persistent: one CTA of two 8-warp groups per SM (the weight stays in
/// shared memory).
pub fn launch_convt1_ln_gelu(gpu: &Gpu, args: &ConvT1Args) -> Result<()> {
    const KERNEL: &str = "sam_convt1_ln_gelu";
    let params = convt1_params(args)?;
    let kernels = gpu.kernels();
    check_smem_optin(kernels, KERNEL, CONVT1_SMEM_BYTES)?;
    let cfg = LaunchConfig {
        grid_dim: (
            convt1_ctas(args.rows, kernels.sm_count() as usize, args.spare_sms) as u32,
            1,
            1,
        ),
        block_dim: (512, 1, 1),
        shared_mem_bytes: CONVT1_SMEM_BYTES,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch_with_params(gpu, KERNEL, &kernels.sam_convt1_ln_gelu, cfg, &params) }
}

/// Mirrors `ImageToTokenParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct ImageToTokenParams {
    q: u64,
    kv: u64,
    w: u64,
    bias: u64,
    residual: u64,
    gamma: u64,
    beta: u64,
    y: u64,
    q_stride: i64,
    q_batch: i64,
    res_batch: i64,
    kv_stride: i64,
    batch: i32,
    tokens: i32,
    scale: f32,
    eps: f32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for ImageToTokenParams {}

/// Width of the two-way blocks' cross attentions (`downsample_rate` 2), 8 heads of 16.
pub const CROSS_DIM: usize = SAM_DIM / 2;
/// Most tokens per prompt [`launch_image_to_token`] takes (5 output tokens + 64 points).
pub const MAX_TOKENS: usize = OUTPUT_TOKENS + 64;

/// Operands of [`launch_image_to_token`] (element strides; a batch stride 0 shares one tensor
/// between all prompts).
#[derive(Debug, Clone, Copy)]
pub struct ImageToTokenArgs {
    /// Prompts.
    pub batch: usize,
    /// Tokens per prompt (1..=[`MAX_TOKENS`]).
    pub tokens: usize,
    /// Image->token q: per prompt 4096 rows of 128 fp16, `q_stride` apart.
    pub q: DeviceRegion,
    /// Elements between q rows (even).
    pub q_stride: usize,
    /// Elements between prompts' q (0: shared).
    pub q_batch: usize,
    /// `[batch, tokens]` rows of 256 fp16, `kv_stride` elements apart: k (128 columns) then
    /// v (128).
    pub kv: DeviceRegion,
    /// Elements between k/v rows (256 when packed; a multiple of 8).
    pub kv_stride: usize,
    /// out_proj `[256, 128]` fp16 and `[256]` f32 bias.
    pub out: (DeviceRegion, DeviceRegion),
    /// `[4096, 256]` fp16 residual per prompt, `residual_batch` elements apart (0: shared); may
    /// be `y` itself.
    pub residual: DeviceRegion,
    /// Elements between prompts' residuals.
    pub residual_batch: usize,
    /// LayerNorm `[256]` f32 weight and bias.
    pub norm: (DeviceRegion, DeviceRegion),
    /// Attention scale (1 / sqrt(16)).
    pub scale: f32,
    /// LayerNorm eps.
    pub eps: f32,
    /// `[batch, 4096, 256]` fp16 output (the new keys).
    pub y: DeviceRegion,
}

/// Dynamic shared memory of `sam_image_to_token` for `tokens` tokens: out_proj padded to 136
/// halves a row, bias and norm parameters, the tokens' k (padded to 8 rows of 136 halves) and
/// v transposed (128 rows of `i2t_vt_ld` halves: the tokens padded to an odd multiple of 8,
/// for conflict-free fragment loads). Non-decreasing in `tokens`, so [`MAX_TOKENS`] bounds it.
pub(crate) fn image_to_token_smem_bytes(tokens: usize) -> u32 {
    let tiles = tokens.div_ceil(8);
    let vt_ld = (tiles | 1) * 8;
    (SAM_DIM * (CROSS_DIM + 8) * 2
        + 3 * SAM_DIM * 4
        + tiles * 8 * (CROSS_DIM + 8) * 2
        + CROSS_DIM * vt_ld * 2) as u32
}

/// `y = LayerNorm(residual + out_proj(softmax(scale q k^T) v))` with q the image pixels and
/// k/v the tokens: a two-way block's image->token attention, out_proj, residual and norm4 in
/// one kernel (no `[K, 4096, 128]` attention output, no pre-norm keys in memory).
pub fn launch_image_to_token(gpu: &Gpu, a: &ImageToTokenArgs) -> Result<()> {
    const KERNEL: &str = "sam_image_to_token";
    if a.batch == 0 || a.batch > 65535 || a.tokens == 0 || a.tokens > MAX_TOKENS {
        return Err(launch_error(
            KERNEL,
            format!(
                "batch {} must be 1..=65535 and tokens {} 1..={MAX_TOKENS}",
                a.batch, a.tokens
            ),
        ));
    }
    if a.q_stride < CROSS_DIM || a.q_stride % 2 != 0 || a.q_batch % 2 != 0 {
        return Err(launch_error(
            KERNEL,
            format!(
                "q row stride {} must be even and >= {CROSS_DIM}, batch stride {} even",
                a.q_stride, a.q_batch
            ),
        ));
    }
    if a.residual_batch % 2 != 0 || !(a.eps.is_finite() && a.eps >= 0.0 && a.scale.is_finite()) {
        return Err(launch_error(
            KERNEL,
            format!(
                "residual batch stride {} must be even, eps {} and scale {} finite",
                a.residual_batch, a.eps, a.scale
            ),
        ));
    }
    let span = |batch_stride: usize, rows: usize, stride: usize, cols: usize| {
        (a.batch - 1)
            .checked_mul(batch_stride)
            .and_then(|v| v.checked_add((rows - 1) * stride + cols))
            .and_then(|v| v.checked_mul(2))
    };
    a.q.check(
        KERNEL,
        "q",
        span(a.q_batch, EMBED_PIXELS, a.q_stride, CROSS_DIM),
        4,
    )?;
    if a.kv_stride < 2 * CROSS_DIM || a.kv_stride % 8 != 0 {
        return Err(launch_error(
            KERNEL,
            format!(
                "k/v row stride {} must be a multiple of 8 and >= {}",
                a.kv_stride,
                2 * CROSS_DIM
            ),
        ));
    }
    a.kv.check(
        KERNEL,
        "token k/v",
        (a.batch * a.tokens - 1)
            .checked_mul(a.kv_stride)
            .and_then(|v| v.checked_add(2 * CROSS_DIM))
            .and_then(|v| v.checked_mul(2)),
        16,
    )?;
    a.out
        .0
        .check(KERNEL, "out_proj weight", Some(SAM_DIM * CROSS_DIM * 2), 4)?;
    a.out
        .1
        .check(KERNEL, "out_proj bias", Some(SAM_DIM * 4), 16)?;
    a.residual.check(
        KERNEL,
        "residual",
        span(a.residual_batch, EMBED_PIXELS, SAM_DIM, SAM_DIM),
        4,
    )?;
    a.norm
        .0
        .check(KERNEL, "norm weight", Some(SAM_DIM * 4), 16)?;
    a.norm.1.check(KERNEL, "norm bias", Some(SAM_DIM * 4), 16)?;
    a.y.check(KERNEL, "y", Some(a.batch * EMBED_PIXELS * SAM_DIM * 2), 4)?;
    let params = ImageToTokenParams {
        q: a.q.ptr,
        kv: a.kv.ptr,
        w: a.out.0.ptr,
        bias: a.out.1.ptr,
        residual: a.residual.ptr,
        gamma: a.norm.0.ptr,
        beta: a.norm.1.ptr,
        y: a.y.ptr,
        q_stride: a.q_stride as i64,
        q_batch: a.q_batch as i64,
        res_batch: a.residual_batch as i64,
        kv_stride: a.kv_stride as i64,
        batch: a.batch as i32,
        tokens: a.tokens as i32,
        scale: a.scale,
        eps: a.eps,
    };
    // Persistent blocks over the 64-pixel tiles (kI2tRows), two per SM when they fit (on sm_90
    // at every token count: at most 110,720 B of dynamic shared memory each).
    let tiles = (a.batch * EMBED_PIXELS / 64) as u32;
    let cfg = LaunchConfig {
        grid_dim: (tiles.min(2 * gpu.kernels().sm_count()), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: image_to_token_smem_bytes(a.tokens),
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch_with_params(gpu, KERNEL, &gpu.kernels().sam_image_to_token, cfg, &params) }
}

/// Side of a low-res mask input (`4 x` the embedding side, `PromptEncoder.mask_input_size`).
pub const MASK_INPUT_SIDE: usize = 4 * EMBED_SIDE;
/// Values of one low-res mask input.
pub const MASK_INPUT_PIXELS: usize = MASK_INPUT_SIDE * MASK_INPUT_SIDE;

/// The packed f32 parameters of `prompt_encoder.mask_downscaling` that [`launch_mask_embed`]
/// reads: the official tensors, each flattened in its own row-major order, concatenated in the
/// order of [`mask_params::TENSORS`] (offsets mirror the kernel's `kW1..kB3`).
pub mod mask_params {
    /// `(name suffix under prompt_encoder.mask_downscaling., official shape)` in packing order.
    pub const TENSORS: [(&str, &[usize]); 10] = [
        ("0.weight", &[4, 1, 2, 2]),
        ("0.bias", &[4]),
        ("1.weight", &[4]),
        ("1.bias", &[4]),
        ("3.weight", &[16, 4, 2, 2]),
        ("3.bias", &[16]),
        ("4.weight", &[16]),
        ("4.bias", &[16]),
        ("6.weight", &[256, 16, 1, 1]),
        ("6.bias", &[256]),
    ];
    /// First conv weight `[4, 1, 2, 2]`.
    pub const W1: usize = 0;
    /// First conv bias `[4]`.
    pub const B1: usize = 16;
    /// First LayerNorm2d weight `[4]`.
    pub const G1: usize = 20;
    /// First LayerNorm2d bias `[4]`.
    pub const BE1: usize = 24;
    /// Second conv weight `[16, 4, 2, 2]`.
    pub const W2: usize = 28;
    /// Second conv bias `[16]`.
    pub const B2: usize = 284;
    /// Second LayerNorm2d weight `[16]`.
    pub const G2: usize = 300;
    /// Second LayerNorm2d bias `[16]`.
    pub const BE2: usize = 316;
    /// 1x1 conv weight `[256, 16, 1, 1]`.
    pub const W3: usize = 332;
    /// 1x1 conv bias `[256]`.
    pub const B3: usize = 4428;
    /// Total values.
    pub const LEN: usize = 4684;
    /// LayerNorm2d eps of the official module.
    pub const EPS: f32 = 1e-6;
}

/// Mirrors `MaskEmbedParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct MaskEmbedParams {
    mask: u64,
    params: u64,
    embedding: u64,
    y: u64,
    eps: f32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for MaskEmbedParams {}

/// Operands of [`launch_mask_embed`].
#[derive(Debug, Clone, Copy)]
pub struct MaskEmbedArgs {
    /// Prompts (grid.y).
    pub batch: usize,
    /// `[batch, 256, 256]` f32 low-res mask inputs.
    pub mask: DeviceRegion,
    /// `[mask_params::LEN]` f32 packed `mask_downscaling` parameters.
    pub params: DeviceRegion,
    /// `[4096, 256]` fp16 NHWC image embedding.
    pub embedding: DeviceRegion,
    /// `[batch, 4096, 256]` fp16 NHWC output: the embedding plus the dense mask embedding.
    pub y: DeviceRegion,
}

/// `y[b] = embedding + mask_downscaling(mask[b])` (NHWC fp16), `PromptEncoder._embed_masks` and
/// the decoder's `src = image_embeddings + dense_prompt_embeddings` in one kernel.
pub fn launch_mask_embed(gpu: &Gpu, a: &MaskEmbedArgs) -> Result<()> {
    const KERNEL: &str = "sam_mask_embed";
    if a.batch == 0 || a.batch > 65535 {
        return Err(launch_error(
            KERNEL,
            format!("batch {} must be 1..=65535", a.batch),
        ));
    }
    a.mask
        .check(KERNEL, "mask", Some(a.batch * MASK_INPUT_PIXELS * 4), 16)?;
    a.params
        .check(KERNEL, "parameters", Some(mask_params::LEN * 4), 4)?;
    a.embedding
        .check(KERNEL, "embedding", Some(EMBED_PIXELS * SAM_DIM * 2), 4)?;
    a.y.check(KERNEL, "y", Some(a.batch * EMBED_PIXELS * SAM_DIM * 2), 4)?;
    let params = MaskEmbedParams {
        mask: a.mask.ptr,
        params: a.params.ptr,
        embedding: a.embedding.ptr,
        y: a.y.ptr,
        eps: mask_params::EPS,
    };
    // One embedding row (64 pixels) of one prompt per block.
    let cfg = LaunchConfig {
        grid_dim: (EMBED_SIDE as u32, a.batch as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch_with_params(gpu, KERNEL, &gpu.kernels().sam_mask_embed, cfg, &params) }
}
