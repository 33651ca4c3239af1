//! Launcher for `kernels/sam_folded_i2t.cu`: the MobileSAM decoder's image -> token cross
//! attention with the q projection folded into the tokens (`Kf`, `kb`, `Vf`, computed per prompt
//! by the caller), its out_proj, the residual and norm4 in one kernel. The 4096 image rows are
//! never projected to 128 dims (see the kernel's header for the algebra).

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::{
    check_eps, check_smem_optin, launch_error, launch_with_params, overlaps, DeviceRegion,
};
use crate::error::Result;
use crate::gpu::Gpu;

/// Channels of X, PE, Kf, Vf and Y.
pub const FOLDED_DIM: usize = 256;
/// Heads of the cross attention: rows per token of Kf / Vf.
pub const FOLDED_HEADS: usize = 8;
/// Most tokens per prompt the kernel takes.
pub const FOLDED_MAX_TOKENS: usize = 8;
/// Pixels per tile: `pixels` must be a multiple of it.
pub const FOLDED_TILE: usize = 64;
/// Pixels of one warp's unit of work in `sam_folded_image_to_token` (a CTA's 8 warps each take
/// 16-pixel units of its contiguous range in turn).
pub const FOLDED_UNIT: usize = 16;
/// Warps of a `sam_folded_image_to_token` CTA.
pub const FOLDED_I2T_WARPS: usize = 8;
/// Dynamic shared memory of `sam_folded_image_to_token`: Kf and Vf (64 rows of 264 halves
/// each, shared by the CTA), each warp's X and PE slabs (16 rows of 264 halves each), kb (64 f32)
/// and bo, gamma, beta (256 f32 each). Mirrors `kSmemBytes` in the kernel.
pub const FOLDED_I2T_SMEM_BYTES: u32 = ((2 * FOLDED_HEADS * FOLDED_MAX_TOKENS
    + 2 * FOLDED_I2T_WARPS * FOLDED_UNIT)
    * (FOLDED_DIM + 8)
    * 2
    + FOLDED_HEADS * FOLDED_MAX_TOKENS * 4
    + 3 * FOLDED_DIM * 4) as u32;

/// Mirrors `FoldedI2tParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct FoldedI2tParams {
    x: u64,
    pe: u64,
    kf: u64,
    kb: u64,
    vf: u64,
    bo: u64,
    gamma: u64,
    beta: u64,
    y: u64,
    x_batch: i64,
    f_batch: i64,
    kb_batch: i64,
    prompts: i32,
    tokens: i32,
    pixels: i32,
    eps: f32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for FoldedI2tParams {}

/// Operands of [`launch_folded_image_to_token`] (strides in elements; a batch stride 0 shares
/// one tensor between all prompts).
#[derive(Debug, Clone, Copy)]
pub struct FoldedImageToTokenArgs {
    /// Prompts B (1..=65535).
    pub prompts: usize,
    /// Tokens T per prompt (1..=[`FOLDED_MAX_TOKENS`]).
    pub tokens: usize,
    /// Pixels N per prompt (a positive multiple of [`FOLDED_TILE`]; the decoder's 4096).
    pub pixels: usize,
    /// fp16 `[N, 256]` per prompt at `x + b * x_batch` (the keys, also the residual).
    pub x: DeviceRegion,
    /// Elements between prompts' X (0: shared; a multiple of 8).
    pub x_batch: usize,
    /// fp16 `[N, 256]` image positional encoding, shared by the prompts.
    pub pe: DeviceRegion,
    /// fp16 folded keys, per prompt `8T` rows of 256 (row `t * 8 + h`) at `kf + b * f_batch`:
    /// `scale * Wq_h^T k_{t,h}`.
    pub kf: DeviceRegion,
    /// f32 folded score biases, per prompt `8T` values at `kb + b * kb_batch`:
    /// `scale * bq_h . k_{t,h}`.
    pub kb: DeviceRegion,
    /// Elements between prompts' kb.
    pub kb_batch: usize,
    /// fp16 folded values, the layout of `kf`: `Wo_h v_{t,h}`.
    pub vf: DeviceRegion,
    /// Elements between prompts' Kf (and Vf) rows (a multiple of 8).
    pub f_batch: usize,
    /// out_proj bias `[256]` f32.
    pub out_bias: DeviceRegion,
    /// LayerNorm (norm4) `[256]` f32 weight and bias.
    pub norm: (DeviceRegion, DeviceRegion),
    /// LayerNorm eps.
    pub eps: f32,
    /// fp16 `[B, N, 256]` output (the new keys). May be `x` itself when `x_batch` is `N * 256`
    /// (in place); must not overlap any input otherwise.
    pub y: DeviceRegion,
    /// SMs to leave without a CTA of this launch, for work issued on another stream at the same
    /// time (the kernel takes a whole SM's shared memory per CTA); 0 uses every SM. At least
    /// one SM is always used.
    pub spare_sms: usize,
}

const KERNEL: &str = "sam_folded_image_to_token";

/// The argument checks of [`launch_folded_image_to_token`] (no GPU needed): `Error::Launch`
/// naming the problem, or the number of 64-pixel tiles.
pub fn check_folded_image_to_token(a: &FoldedImageToTokenArgs) -> Result<usize> {
    folded_params(a).map(|(_, tiles)| tiles)
}

fn folded_params(a: &FoldedImageToTokenArgs) -> Result<(FoldedI2tParams, usize)> {
    if a.prompts == 0 || a.prompts > 65535 || a.tokens == 0 || a.tokens > FOLDED_MAX_TOKENS {
        return Err(launch_error(
            KERNEL,
            format!(
                "prompts {} must be 1..=65535 and tokens {} 1..={FOLDED_MAX_TOKENS}",
                a.prompts, a.tokens
            ),
        ));
    }
    let tiles = (a.pixels / FOLDED_TILE)
        .checked_mul(a.prompts)
        .filter(|&t| t <= i32::MAX as usize);
    if a.pixels == 0 || a.pixels % FOLDED_TILE != 0 || tiles.is_none() {
        return Err(launch_error(
            KERNEL,
            format!(
                "pixels {} must be a positive multiple of {FOLDED_TILE} (prompts x tiles within i32)",
                a.pixels
            ),
        ));
    }
    let tiles = tiles.unwrap_or(0);
    if a.x_batch % 8 != 0 || a.f_batch % 8 != 0 {
        return Err(launch_error(
            KERNEL,
            format!(
                "X batch stride {} and Kf/Vf batch stride {} must be multiples of 8",
                a.x_batch, a.f_batch
            ),
        ));
    }
    check_eps(KERNEL, a.eps)?;
    // Bytes spanned by `prompts` items of `per` elements of `elem` bytes, `batch` apart.
    let span = |batch: usize, per: usize, elem: usize| {
        (a.prompts - 1)
            .checked_mul(batch)
            .and_then(|v| v.checked_add(per))
            .and_then(|v| v.checked_mul(elem))
    };
    let plane = a.pixels * FOLDED_DIM;
    let rows = FOLDED_HEADS * a.tokens;
    let x_bytes = span(a.x_batch, plane, 2);
    let f_bytes = span(a.f_batch, rows * FOLDED_DIM, 2);
    let kb_bytes = span(a.kb_batch, rows, 4);
    let y_bytes = a.prompts.checked_mul(plane).and_then(|v| v.checked_mul(2));
    a.x.check(KERNEL, "X", x_bytes, 16)?;
    a.pe.check(KERNEL, "PE", Some(plane * 2), 16)?;
    a.kf.check(KERNEL, "Kf", f_bytes, 16)?;
    a.vf.check(KERNEL, "Vf", f_bytes, 16)?;
    a.kb.check(KERNEL, "kb", kb_bytes, 4)?;
    let param_bytes = Some(FOLDED_DIM * 4);
    a.out_bias.check(KERNEL, "out_proj bias", param_bytes, 16)?;
    a.norm.0.check(KERNEL, "norm weight", param_bytes, 16)?;
    a.norm.1.check(KERNEL, "norm bias", param_bytes, 16)?;
    a.y.check(KERNEL, "Y", y_bytes, 16)?;
    // The checks above proved every size; none of these is None.
    let (x_bytes, f_bytes, kb_bytes, y_bytes) = (
        x_bytes.unwrap_or(0),
        f_bytes.unwrap_or(0),
        kb_bytes.unwrap_or(0),
        y_bytes.unwrap_or(0),
    );
    let in_place = a.y.ptr == a.x.ptr && a.x_batch == plane;
    let inputs = [
        ("X", &a.x, if in_place { 0 } else { x_bytes }),
        ("PE", &a.pe, plane * 2),
        ("Kf", &a.kf, f_bytes),
        ("Vf", &a.vf, f_bytes),
        ("kb", &a.kb, kb_bytes),
        ("the out_proj bias", &a.out_bias, FOLDED_DIM * 4),
        ("the norm weight", &a.norm.0, FOLDED_DIM * 4),
        ("the norm bias", &a.norm.1, FOLDED_DIM * 4),
    ];
    for (what, region, bytes) in inputs {
        if overlaps(&a.y, y_bytes, region, bytes) {
            return Err(launch_error(
                KERNEL,
                format!("Y overlaps {what} (only X itself with x_batch = pixels x 256 may be Y)"),
            ));
        }
    }
    let params = FoldedI2tParams {
        x: a.x.ptr,
        pe: a.pe.ptr,
        kf: a.kf.ptr,
        kb: a.kb.ptr,
        vf: a.vf.ptr,
        bo: a.out_bias.ptr,
        gamma: a.norm.0.ptr,
        beta: a.norm.1.ptr,
        y: a.y.ptr,
        x_batch: a.x_batch as i64,
        f_batch: a.f_batch as i64,
        kb_batch: a.kb_batch as i64,
        prompts: a.prompts as i32,
        tokens: a.tokens as i32,
        pixels: a.pixels as i32,
        eps: a.eps,
    };
    Ok((params, tiles))
}

/// `Y = LayerNorm(X + sum_r softmax_t((X + PE) Kf^T + kb) Vf + bo)` per prompt: a two-way
/// block's image -> token attention with q folded into the tokens, out_proj, residual and norm4.
/// One CTA of 8 warps per SM walks a contiguous range of the prompts' 16-pixel units
/// ([`folded_grid`]).
pub fn launch_folded_image_to_token(gpu: &Gpu, a: &FoldedImageToTokenArgs) -> Result<()> {
    let (params, tiles) = folded_params(a)?;
    check_smem_optin(gpu.kernels(), KERNEL, FOLDED_I2T_SMEM_BYTES)?;
    let cfg = LaunchConfig {
        grid_dim: (
            folded_grid(
                tiles,
                gpu.kernels()
                    .sm_count()
                    .saturating_sub(a.spare_sms.min(u32::MAX as usize) as u32),
            ),
            1,
            1,
        ),
        block_dim: (32 * FOLDED_I2T_WARPS as u32, 1, 1),
        shared_mem_bytes: FOLDED_I2T_SMEM_BYTES,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe {
        launch_with_params(
            gpu,
            KERNEL,
            &gpu.kernels().sam_folded_image_to_token,
            cfg,
            &params,
        )
    }
}

/// CTAs of a launch over `tiles` 64-pixel tiles on `sm_count` SMs: one per SM (its shared
/// memory allows one), at most one per 16-pixel unit (4 a tile); each takes a contiguous,
/// balanced range of units, its warps taking them in turn.
pub fn folded_grid(tiles: usize, sm_count: u32) -> u32 {
    tiles
        .saturating_mul(FOLDED_TILE / FOLDED_UNIT)
        .min(sm_count.max(1) as usize)
        .max(1) as u32
}
