//! Launchers for `kernels/sam_tokens.cu`: the MobileSAM mask decoder's token-side tail ops with
//! their LayerNorm fused (official `TwoWayAttentionBlock` / `TwoWayTransformer`):
//!
//! - [`launch_token_linear`]: `y = LayerNorm(x @ W^T + b (+ residual))`, 256 output columns,
//!   K = 128 or 256: an attention's out_proj + residual + norm in one launch.
//! - [`launch_token_mlp`]: `y = LayerNorm(x + lin2(relu(lin1(x))))` (256 -> 2048 -> 256) in two
//!   launches: per-chunk partial products of the hidden dimension into a scratch buffer, then
//!   their fixed-order sum + bias + residual + LayerNorm (deterministic; no atomics).
//! - [`launch_head_fold`]: the per-head token factors of the folded cross attentions,
//!   `y[row * 8 + h] = scale * x[row, head h] @ M[head h rows]` (16 -> 256 per head), and
//!   optionally `scale * x[row, head h] . bias[head h]`; one or two folds per launch.
//!
//! Rows are `prompts x tokens`; all fp16 tensors are packed row-major and 16-byte aligned;
//! biases, gamma and beta are f32. Errors are `Error::Launch` naming the kernel and the problem.

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::{check_eps, launch_error, launch_with_params, overlaps, DeviceRegion};
use crate::error::Result;
use crate::gpu::Gpu;

/// Output columns of every token op (`transformer_dim`).
pub const TOKEN_DIM: usize = 256;
/// Hidden width of the two-way blocks' MLP.
pub const TOKEN_MLP_HIDDEN: usize = 2048;
/// Hidden chunks of [`launch_token_mlp`] (128 units each): partial products per row.
pub const TOKEN_MLP_CHUNKS: usize = 16;
/// Input widths [`launch_token_linear`] takes (the cross attentions' 128, the self attention's
/// 256).
pub const TOKEN_LINEAR_K: [usize; 2] = [128, 256];
/// Most rows of one launch.
pub const TOKEN_MAX_ROWS: usize = 1 << 19;

const THREADS: u32 = 256;
/// Rows per `sam_token_linear_ln` CTA.
const LINEAR_ROWS: usize = 16;
/// Dynamic shared memory of `sam_token_linear_ln`: a 4-slot ring of 256 x 40 halves, the x tile
/// (16 x 264 halves), bias / gamma / beta (static_assert in the kernel).
pub(crate) const TOKEN_LINEAR_SMEM_BYTES: u32 = 93_440;
/// Rows per `sam_token_mlp_norm` CTA (64 threads per row).
const NORM_ROWS: usize = 4;

/// One compiled `sam_token_mlp_<rows>` variant: rows per CTA and dynamic shared memory (the
/// ring, the x tile `rows x 264` and the h tile `rows x 136` halves; static_assert in the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MlpTile {
    pub(crate) kernel: &'static str,
    pub(crate) rows: usize,
    pub(crate) smem_bytes: u32,
}

/// The MLP's row tiles, smallest first. They compute bit-identical results (every element
/// takes the same mma chains and the same ordered sum), so the choice changes speed only.
pub(crate) const TOKEN_MLP_TILES: [MlpTile; 3] = [
    MlpTile {
        kernel: "sam_token_mlp_16",
        rows: 16,
        smem_bytes: 94_720,
    },
    MlpTile {
        kernel: "sam_token_mlp_32",
        rows: 32,
        smem_bytes: 107_520,
    },
    MlpTile {
        kernel: "sam_token_mlp_64",
        rows: 64,
        smem_bytes: 133_120,
    },
];

/// The MLP row tile (index into the compiled variants) for `rows` on a device with `sm_count`
/// SMs and `smem_per_block` bytes of (opt-in) shared memory per block: the smallest tile whose
/// grid (16 chunks x row tiles) fits one CTA per SM, else the largest that fits the device (a
/// tile is 16 chunks x its rows of weight reuse; small tiles spread the weight reads, large
/// ones cut the L2 traffic when there are many rows). `None` if no tile fits the device.
pub fn select_token_mlp_tile(rows: usize, sm_count: usize, smem_per_block: usize) -> Option<usize> {
    let fits = |t: &MlpTile| t.smem_bytes as usize <= smem_per_block;
    TOKEN_MLP_TILES
        .iter()
        .position(|t| fits(t) && TOKEN_MLP_CHUNKS * rows.div_ceil(t.rows) <= sm_count)
        .or_else(|| TOKEN_MLP_TILES.iter().rposition(fits))
}

/// Rows of the compiled MLP tile `index` (see [`select_token_mlp_tile`]).
pub fn token_mlp_tile_rows(index: usize) -> usize {
    TOKEN_MLP_TILES[index].rows
}

/// Bytes of the scratch buffer [`launch_token_mlp`] needs for `rows` rows: `[16, rows, 256]`
/// f32 partial products.
pub fn token_mlp_scratch_bytes(rows: usize) -> usize {
    TOKEN_MLP_CHUNKS * rows * TOKEN_DIM * 4
}

/// Operands of [`launch_token_linear`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLinearArgs {
    /// Rows (prompts x tokens), 1..=[`TOKEN_MAX_ROWS`].
    pub rows: usize,
    /// Input width: 128 or 256 ([`TOKEN_LINEAR_K`]).
    pub k: usize,
    /// fp16 `[rows, k]`, packed.
    pub x: DeviceRegion,
    /// fp16 `[256, k]` (nn.Linear `[out, in]`).
    pub weight: DeviceRegion,
    /// f32 `[256]`.
    pub bias: DeviceRegion,
    /// fp16 `[rows, 256]` added before the norm, or None; may be `y` itself (in place).
    pub residual: Option<DeviceRegion>,
    /// LayerNorm weight and bias, f32 `[256]` each.
    pub norm: (DeviceRegion, DeviceRegion),
    /// LayerNorm eps (nn.LayerNorm: 1e-5).
    pub eps: f32,
    /// fp16 `[rows, 256]` output; must not overlap `x`, the weights or the norm parameters.
    pub y: DeviceRegion,
}

/// Operands of [`launch_token_mlp`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenMlpArgs {
    /// Rows (prompts x tokens), 1..=[`TOKEN_MAX_ROWS`].
    pub rows: usize,
    /// fp16 `[rows, 256]`: the MLP's input and the residual.
    pub x: DeviceRegion,
    /// lin1: fp16 `[2048, 256]` weight and f32 `[2048]` bias.
    pub lin1: (DeviceRegion, DeviceRegion),
    /// lin2: fp16 `[256, 2048]` weight and f32 `[256]` bias.
    pub lin2: (DeviceRegion, DeviceRegion),
    /// LayerNorm weight and bias, f32 `[256]` each.
    pub norm: (DeviceRegion, DeviceRegion),
    /// LayerNorm eps (nn.LayerNorm: 1e-5).
    pub eps: f32,
    /// f32 partial products, at least [`token_mlp_scratch_bytes`]`(rows)` bytes; overwritten.
    pub scratch: DeviceRegion,
    /// fp16 `[rows, 256]` output; may be `x` itself (in place), must not overlap anything else.
    pub y: DeviceRegion,
}

/// Heads and head width of the cross attentions a [`HeadFold`] expands (8 x 16 = 128).
pub const FOLD_HEADS: usize = 8;
pub const FOLD_HEAD_DIM: usize = 16;
/// Token rows per `sam_head_fold` CTA.
const FOLD_ROWS: usize = 8;

/// One fold of [`launch_head_fold`]: for every token row and head h,
/// `y[row * 8 + h, c] = scale * sum_{d < 16} x[row, 16h + d] * weight[16h + d, c]` (c < 256,
/// fp32, rounded to fp16 once) and, with `bias`, `yb[row * 8 + h] = scale * sum_d
/// x[row, 16h + d] * bias[16h + d]` (f32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadFold {
    /// fp16 token rows of 128 halves (8 heads x 16) at `x_stride` halves apart.
    pub x: DeviceRegion,
    /// Halves between rows (>= 128).
    pub x_stride: usize,
    /// fp16 `[128, 256]` row-major: row 16h + d is head h's dim d.
    pub weight: DeviceRegion,
    /// f32 `[128]` and the f32 `[rows * 8]` output of the bias dots, or None.
    pub bias: Option<(DeviceRegion, DeviceRegion)>,
    pub scale: f32,
    /// fp16 `[rows * 8, 256]` output; must not overlap x or the weight.
    pub y: DeviceRegion,
}

/// Mirrors `HeadFold` in the kernel.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct HeadFoldRaw {
    x: u64,
    m: u64,
    bias: u64,
    y: u64,
    yb: u64,
    x_stride: i64,
    scale: f32,
    pad: u32,
}

/// Mirrors `HeadFoldParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct HeadFoldParams {
    fold: [HeadFoldRaw; 2],
    rows: i32,
}

/// Mirrors `TokenLinearParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct TokenLinearParams {
    x: u64,
    w: u64,
    bias: u64,
    residual: u64,
    gamma: u64,
    beta: u64,
    y: u64,
    rows: i32,
    k: i32,
    eps: f32,
}

/// Mirrors `TokenMlpParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct TokenMlpParams {
    x: u64,
    w1: u64,
    b1: u64,
    w2: u64,
    partial: u64,
    rows: i32,
}

/// Mirrors `TokenMlpNormParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct TokenMlpNormParams {
    partial: u64,
    b2: u64,
    residual: u64,
    gamma: u64,
    beta: u64,
    y: u64,
    rows: i32,
    eps: f32,
}

// SAFETY: plain-old-data with the kernels' layouts.
unsafe impl DeviceRepr for TokenLinearParams {}
unsafe impl DeviceRepr for TokenMlpParams {}
unsafe impl DeviceRepr for TokenMlpNormParams {}
unsafe impl DeviceRepr for HeadFoldParams {}

fn check_rows_eps(kernel: &'static str, rows: usize, eps: f32) -> Result<()> {
    if rows == 0 || rows > TOKEN_MAX_ROWS {
        return Err(launch_error(
            kernel,
            format!("rows {rows} must be in 1..={TOKEN_MAX_ROWS}"),
        ));
    }
    check_eps(kernel, eps)?;
    Ok(())
}

/// Checks the shared LayerNorm parameters (f32 `[256]`, 16-byte aligned).
fn check_norm(kernel: &'static str, norm: &(DeviceRegion, DeviceRegion)) -> Result<()> {
    norm.0
        .check(kernel, "norm weight", Some(TOKEN_DIM * 4), 16)?;
    norm.1.check(kernel, "norm bias", Some(TOKEN_DIM * 4), 16)
}

/// `Err` naming `what` if `y` (of `y_bytes`) shares a byte with it.
fn check_disjoint(
    kernel: &'static str,
    y: &DeviceRegion,
    y_bytes: usize,
    what: &str,
    other: &DeviceRegion,
    other_bytes: usize,
) -> Result<()> {
    if overlaps(y, y_bytes, other, other_bytes) {
        return Err(launch_error(kernel, format!("the output overlaps {what}")));
    }
    Ok(())
}

fn token_linear_params(a: &TokenLinearArgs) -> Result<(TokenLinearParams, u32)> {
    const KERNEL: &str = "sam_token_linear_ln";
    check_rows_eps(KERNEL, a.rows, a.eps)?;
    if !TOKEN_LINEAR_K.contains(&a.k) {
        return Err(launch_error(
            KERNEL,
            format!("k {} must be one of {TOKEN_LINEAR_K:?}", a.k),
        ));
    }
    let x_bytes = a.rows * a.k * 2;
    let w_bytes = TOKEN_DIM * a.k * 2;
    let y_bytes = a.rows * TOKEN_DIM * 2;
    a.x.check(KERNEL, "x", Some(x_bytes), 16)?;
    a.weight.check(KERNEL, "weight", Some(w_bytes), 16)?;
    a.bias.check(KERNEL, "bias", Some(TOKEN_DIM * 4), 16)?;
    check_norm(KERNEL, &a.norm)?;
    a.y.check(KERNEL, "y", Some(y_bytes), 16)?;
    if let Some(r) = &a.residual {
        r.check(KERNEL, "residual", Some(y_bytes), 16)?;
        if r.ptr != a.y.ptr {
            check_disjoint(
                KERNEL,
                &a.y,
                y_bytes,
                "the residual (in place needs y = residual)",
                r,
                y_bytes,
            )?;
        }
    }
    check_disjoint(KERNEL, &a.y, y_bytes, "x", &a.x, x_bytes)?;
    check_disjoint(KERNEL, &a.y, y_bytes, "the weight", &a.weight, w_bytes)?;
    for (what, p) in [
        ("the bias", &a.bias),
        ("the norm weight", &a.norm.0),
        ("the norm bias", &a.norm.1),
    ] {
        check_disjoint(KERNEL, &a.y, y_bytes, what, p, TOKEN_DIM * 4)?;
    }
    let params = TokenLinearParams {
        x: a.x.ptr,
        w: a.weight.ptr,
        bias: a.bias.ptr,
        residual: a.residual.map_or(0, |r| r.ptr),
        gamma: a.norm.0.ptr,
        beta: a.norm.1.ptr,
        y: a.y.ptr,
        rows: a.rows as i32,
        k: a.k as i32,
        eps: a.eps,
    };
    Ok((params, a.rows.div_ceil(LINEAR_ROWS) as u32))
}

/// Checks [`launch_token_linear`]'s arguments exactly as the launch does, without a GPU.
pub fn check_token_linear(args: &TokenLinearArgs) -> Result<()> {
    token_linear_params(args).map(|_| ())
}

/// `y = LayerNorm(x @ W^T + b (+ residual))` over the 256 columns of each row, one launch (the
/// pre-norm sum stays in fp32). 16 rows per CTA.
pub fn launch_token_linear(gpu: &Gpu, args: &TokenLinearArgs) -> Result<()> {
    const KERNEL: &str = "sam_token_linear_ln";
    let (params, blocks) = token_linear_params(args)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: TOKEN_LINEAR_SMEM_BYTES,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe {
        launch_with_params(
            gpu,
            KERNEL,
            &gpu.kernels().sam_token_linear_ln,
            cfg,
            &params,
        )
    }
}

fn token_mlp_params(a: &TokenMlpArgs) -> Result<(TokenMlpParams, TokenMlpNormParams)> {
    const KERNEL: &str = "sam_token_mlp";
    check_rows_eps(KERNEL, a.rows, a.eps)?;
    let x_bytes = a.rows * TOKEN_DIM * 2;
    let w_bytes = TOKEN_MLP_HIDDEN * TOKEN_DIM * 2;
    let scratch_bytes = token_mlp_scratch_bytes(a.rows);
    a.x.check(KERNEL, "x", Some(x_bytes), 16)?;
    a.lin1.0.check(KERNEL, "lin1 weight", Some(w_bytes), 16)?;
    a.lin1
        .1
        .check(KERNEL, "lin1 bias", Some(TOKEN_MLP_HIDDEN * 4), 16)?;
    a.lin2.0.check(KERNEL, "lin2 weight", Some(w_bytes), 16)?;
    a.lin2
        .1
        .check(KERNEL, "lin2 bias", Some(TOKEN_DIM * 4), 16)?;
    check_norm(KERNEL, &a.norm)?;
    a.scratch
        .check(KERNEL, "scratch", Some(scratch_bytes), 16)?;
    a.y.check(KERNEL, "y", Some(x_bytes), 16)?;
    if a.y.ptr != a.x.ptr {
        check_disjoint(
            KERNEL,
            &a.y,
            x_bytes,
            "x (in place needs y = x)",
            &a.x,
            x_bytes,
        )?;
    }
    let params_f32 = [
        ("the lin1 bias", &a.lin1.1, TOKEN_MLP_HIDDEN * 4),
        ("the lin2 bias", &a.lin2.1, TOKEN_DIM * 4),
        ("the norm weight", &a.norm.0, TOKEN_DIM * 4),
        ("the norm bias", &a.norm.1, TOKEN_DIM * 4),
    ];
    for (what, p, bytes) in [
        ("the scratch", &a.scratch, scratch_bytes),
        ("the lin1 weight", &a.lin1.0, w_bytes),
        ("the lin2 weight", &a.lin2.0, w_bytes),
    ]
    .into_iter()
    .chain(params_f32)
    {
        check_disjoint(KERNEL, &a.y, x_bytes, what, p, bytes)?;
    }
    // The partials are written while x and the weights are read.
    for (what, p, bytes) in [
        ("x", &a.x, x_bytes),
        ("the lin1 weight", &a.lin1.0, w_bytes),
        ("the lin2 weight", &a.lin2.0, w_bytes),
    ]
    .into_iter()
    .chain(params_f32)
    {
        if overlaps(&a.scratch, scratch_bytes, p, bytes) {
            return Err(launch_error(KERNEL, format!("the scratch overlaps {what}")));
        }
    }
    let mlp = TokenMlpParams {
        x: a.x.ptr,
        w1: a.lin1.0.ptr,
        b1: a.lin1.1.ptr,
        w2: a.lin2.0.ptr,
        partial: a.scratch.ptr,
        rows: a.rows as i32,
    };
    let norm = TokenMlpNormParams {
        partial: a.scratch.ptr,
        b2: a.lin2.1.ptr,
        residual: a.x.ptr,
        gamma: a.norm.0.ptr,
        beta: a.norm.1.ptr,
        y: a.y.ptr,
        rows: a.rows as i32,
        eps: a.eps,
    };
    Ok((mlp, norm))
}

/// Checks [`launch_token_mlp`]'s arguments exactly as the launch does, without a GPU (the row
/// tile, chosen from the device, is not part of it).
pub fn check_token_mlp(args: &TokenMlpArgs) -> Result<()> {
    token_mlp_params(args).map(|_| ())
}

/// `y = LayerNorm(x + lin2(relu(lin1(x))))` in two launches: `sam_token_mlp_<tile>` (grid 16
/// hidden chunks x row tiles; tile from [`select_token_mlp_tile`]) writes each chunk's f32
/// partial product to `scratch`, then `sam_token_mlp_norm` sums them in chunk order, adds the
/// bias and x, and normalises. Bitwise deterministic; the same bits for every row tile.
pub fn launch_token_mlp(gpu: &Gpu, args: &TokenMlpArgs) -> Result<()> {
    let (mlp, norm) = token_mlp_params(args)?;
    let kernels = gpu.kernels();
    let tile = select_token_mlp_tile(
        args.rows,
        kernels.sm_count() as usize,
        kernels.smem_per_block_optin,
    )
    .ok_or_else(|| {
        launch_error(
            "sam_token_mlp",
            format!(
                "every row tile needs more than the {} bytes of shared memory a block may use",
                kernels.smem_per_block_optin
            ),
        )
    })?;
    let t = TOKEN_MLP_TILES[tile];
    let cfg = LaunchConfig {
        grid_dim: (
            TOKEN_MLP_CHUNKS as u32,
            args.rows.div_ceil(t.rows) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: t.smem_bytes,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch_with_params(gpu, t.kernel, &kernels.sam_token_mlp[tile], cfg, &mlp) }?;

    const NORM: &str = "sam_token_mlp_norm";
    let cfg = LaunchConfig {
        grid_dim: (args.rows.div_ceil(NORM_ROWS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: as above.
    unsafe { launch_with_params(gpu, NORM, &kernels.sam_token_mlp_norm, cfg, &norm) }
}

fn head_fold_params(rows: usize, folds: &[HeadFold]) -> Result<HeadFoldParams> {
    const KERNEL: &str = "sam_head_fold";
    if rows == 0 || rows > TOKEN_MAX_ROWS {
        return Err(launch_error(
            KERNEL,
            format!("rows {rows} must be in 1..={TOKEN_MAX_ROWS}"),
        ));
    }
    if folds.is_empty() || folds.len() > 2 {
        return Err(launch_error(
            KERNEL,
            format!("{} folds given, 1 or 2 per launch", folds.len()),
        ));
    }
    let width = FOLD_HEADS * FOLD_HEAD_DIM;
    let mut raw = [HeadFoldRaw::default(); 2];
    for (f, r) in folds.iter().zip(raw.iter_mut()) {
        if f.x_stride < width {
            return Err(launch_error(
                KERNEL,
                format!("x row stride {} is below {width} halves", f.x_stride),
            ));
        }
        if !f.scale.is_finite() {
            return Err(launch_error(
                KERNEL,
                format!("scale {} is not finite", f.scale),
            ));
        }
        let x_bytes = ((rows - 1) * f.x_stride + width) * 2;
        let w_bytes = width * TOKEN_DIM * 2;
        let y_bytes = rows * FOLD_HEADS * TOKEN_DIM * 2;
        f.x.check(KERNEL, "x", Some(x_bytes), 2)?;
        f.weight.check(KERNEL, "weight", Some(w_bytes), 2)?;
        f.y.check(KERNEL, "y", Some(y_bytes), 2)?;
        check_disjoint(KERNEL, &f.y, y_bytes, "x", &f.x, x_bytes)?;
        check_disjoint(KERNEL, &f.y, y_bytes, "the weight", &f.weight, w_bytes)?;
        if let Some((bias, yb)) = &f.bias {
            bias.check(KERNEL, "bias", Some(width * 4), 4)?;
            yb.check(KERNEL, "bias output", Some(rows * FOLD_HEADS * 4), 4)?;
            check_disjoint(KERNEL, yb, rows * FOLD_HEADS * 4, "y", &f.y, y_bytes)?;
            check_disjoint(KERNEL, yb, rows * FOLD_HEADS * 4, "x", &f.x, x_bytes)?;
        }
        *r = HeadFoldRaw {
            x: f.x.ptr,
            m: f.weight.ptr,
            bias: f.bias.map_or(0, |b| b.0.ptr),
            y: f.y.ptr,
            yb: f.bias.map_or(0, |b| b.1.ptr),
            x_stride: f.x_stride as i64,
            scale: f.scale,
            pad: 0,
        };
    }
    Ok(HeadFoldParams {
        fold: raw,
        rows: rows as i32,
    })
}

/// Checks [`launch_head_fold`]'s arguments exactly as the launch does, without a GPU.
pub fn check_head_fold(rows: usize, folds: &[HeadFold]) -> Result<()> {
    head_fold_params(rows, folds).map(|_| ())
}

/// Expands `rows` token rows per head through a `[128, 256]` weight for one or two folds in one
/// launch (see [`HeadFold`]).
pub fn launch_head_fold(gpu: &Gpu, rows: usize, folds: &[HeadFold]) -> Result<()> {
    const KERNEL: &str = "sam_head_fold";
    let params = head_fold_params(rows, folds)?;
    let cfg = LaunchConfig {
        grid_dim: (
            rows.div_ceil(FOLD_ROWS) as u32,
            folds.len() as u32,
            FOLD_HEADS as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was checked above.
    unsafe { launch_with_params(gpu, KERNEL, &gpu.kernels().sam_head_fold, cfg, &params) }
}
