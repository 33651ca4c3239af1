//! Launcher for `kernels/sam_folded_t2i.cu`: the MobileSAM decoder's token -> image attention
//! (official `Attention` with `downsample_rate` 2: 8 heads of dim 16) with the key projection
//! folded into the queries, so the 4096 image keys are never projected. Per prompt, token
//! `t < T <= 8` and head `h`, with the folded query row `Qf[t*8 + h] = q_{t,h} Wk_h` (256 wide,
//! formed by the caller; `bk` drops out of the softmax):
//! `p = softmax_j(scale Qf[t*8+h] . (x_j + pe_j))` and
//! `O[t, 16h..16h+16] = Wv_h (sum_j p_j x_j) + bv_h` (the heads' outputs before `out_proj`,
//! fp16 rows of 128).
//!
//! One CTA per SM streams one chunk of keys for all 64 (padded) query rows; with more than one
//! chunk per prompt the chunks' partial outputs go through a [`CrossAttentionWorkspace`] (the
//! same kind as `sam_cross_attention`'s, the same per-token layout) and the last CTA of a
//! prompt merges them in chunk order (bitwise deterministic; the arrival counters are left at
//! 0, so one workspace serves any later launch or graph replay on the same stream).
//! [`plan_folded_token_to_image`] picks the chunk count; size a workspace for several batch
//! sizes with [`folded_token_to_image_workspace`]. Errors are `Error::Launch` naming the kernel
//! and the problem.

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::sam_cross_attention::{
    bind_workspace, check_split_shape, rows_extent, workspace_for_plans, CrossAttentionPlan,
    CrossAttentionWorkspace, CrossRows,
};
use super::{check_smem_optin, launch_error, launch_with_params, overlaps, DeviceRegion};
use crate::error::Result;
use crate::gpu::Gpu;

const KERNEL: &str = "sam_folded_t2i";
/// Heads and head dimension of the attention (internal width 128).
pub const FOLDED_HEADS: usize = 8;
pub const FOLDED_HEAD_DIM: usize = 16;
/// Halves per output row (all heads).
pub const FOLDED_OUT: usize = FOLDED_HEADS * FOLDED_HEAD_DIM;
/// Halves per Qf, X and PE row (the decoder's embedding width).
pub const FOLDED_DIM: usize = 256;
/// Most query tokens (8 tokens x 8 heads = the kernel's 64 query rows).
pub const FOLDED_MAX_TOKENS: usize = 8;
/// Keys per pipeline stage: `keys` must be a multiple of it.
pub const FOLDED_STAGE_KEYS: usize = 64;
/// Most keys of one launch.
pub const FOLDED_MAX_KEYS: usize = 1 << 20;
/// Most prompts of one launch (grid.y).
pub const FOLDED_MAX_PROMPTS: usize = 65_535;
/// Most key chunks per prompt.
pub const FOLDED_MAX_CHUNKS: usize = 32;
/// Dynamic shared memory: 2 slots x (X + K tiles of 64 x 256 halves) + 32 KB for Q / the
/// pair exchange (row maxima, fp16 P) / the fp16 A rows (static_assert in the kernel): sm_80 and sm_90 offer it.
pub const FOLDED_T2I_SMEM_BYTES: u32 = 163_840;

const THREADS: u32 = 256;
/// One CTA per SM (160 KB of shared memory and 254 registers per thread each).
const CTAS_PER_SM_TARGET: usize = 1;
/// fp32 values per token of one chunk's partial result: 128 outputs, 8 (max, sum).
const PART_FLOATS: usize = FOLDED_OUT + 2 * FOLDED_HEADS;

/// Operands of [`launch_folded_token_to_image`]. Every region is 16-byte aligned and
/// bounds-checked; element offsets are in halves (floats for `bv`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FoldedTokenToImageArgs {
    /// Prompts, 1..=[`FOLDED_MAX_PROMPTS`].
    pub prompts: usize,
    /// Query tokens per prompt, 1..=[`FOLDED_MAX_TOKENS`].
    pub tokens: usize,
    /// Keys (image tokens) per prompt: a multiple of 64, 64..=[`FOLDED_MAX_KEYS`].
    pub keys: usize,
    /// Softmax scale (`1 / sqrt(16)` in SAM); finite and > 0.
    pub scale: f32,
    /// Folded queries, fp16: per prompt `8 T` rows of 256, row `t*8 + h`; element
    /// `(b, r, c)` at `qf + b * qf_batch_stride + r * 256 + c`.
    pub qf: DeviceRegion,
    /// Halves between prompts' Qf (a multiple of 8; `8 T * 256` when packed).
    pub qf_batch_stride: usize,
    /// Image tokens (keys and values), fp16 `[keys, 256]` per prompt: element `(b, j, c)` at
    /// `x + b * x_batch_stride + j * 256 + c`.
    pub x: DeviceRegion,
    /// Halves between prompts' X (a multiple of 8); 0: every prompt reads the same X.
    pub x_batch_stride: usize,
    /// Image positional encoding, fp16 `[keys, 256]`, shared by every prompt.
    pub pe: DeviceRegion,
    /// `v_proj.weight`, fp16 `[128, 256]` row-major.
    pub wv: DeviceRegion,
    /// `v_proj.bias`, f32 `[128]`.
    pub bv: DeviceRegion,
    /// Output `[prompts, tokens, 128]` fp16 (token stride >= 128, strides multiples of 8, the
    /// prompts' rows disjoint); only those elements are written. Must not overlap the inputs
    /// or the workspace.
    pub o: CrossRows,
    /// Split workspace; `None` runs one chunk per prompt (slower, no workspace needed).
    pub workspace: Option<CrossAttentionWorkspace>,
}

/// Mirrors `FoldedT2iParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct FoldedT2iParams {
    qf: u64,
    x: u64,
    pe: u64,
    wv: u64,
    bv: u64,
    o: u64,
    partial: u64,
    counters: u64,
    qf_batch: i64,
    x_batch: i64,
    o_batch: i64,
    o_token: i64,
    tokens: i32,
    keys: i32,
    chunks: i32,
    tiles_per_chunk: i32,
    scale_log2: f32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for FoldedT2iParams {}

fn check_shape(prompts: usize, tokens: usize, keys: usize) -> Result<()> {
    check_split_shape(
        KERNEL,
        (prompts, FOLDED_MAX_PROMPTS),
        (tokens, FOLDED_MAX_TOKENS),
        (keys, FOLDED_MAX_KEYS),
        FOLDED_STAGE_KEYS,
    )
}

/// The key split of `prompts` prompts of `tokens` tokens against `keys` keys on a GPU with
/// `sm_count` SMs: about one CTA per SM, at most [`FOLDED_MAX_CHUNKS`] chunks, no empty chunk.
/// 132 SMs, 4096 keys: 1-4 prompts 32 chunks (2 stages each), 8 prompts 16 chunks (4 stages),
/// 16 prompts 8, 32 prompts 4 (16 stages), 133+ prompts one chunk.
pub fn plan_folded_token_to_image(
    prompts: usize,
    tokens: usize,
    keys: usize,
    sm_count: usize,
) -> Result<CrossAttentionPlan> {
    check_shape(prompts, tokens, keys)?;
    let tiles = keys / FOLDED_STAGE_KEYS;
    let wanted =
        (CTAS_PER_SM_TARGET * sm_count.max(1) / prompts).clamp(1, FOLDED_MAX_CHUNKS.min(tiles));
    let tiles_per_chunk = tiles.div_ceil(wanted);
    let chunks = tiles.div_ceil(tiles_per_chunk);
    let (counter_slots, partial_bytes) = if chunks > 1 {
        (prompts, prompts * chunks * tokens * PART_FLOATS * 4)
    } else {
        (0, 0)
    };
    Ok(CrossAttentionPlan {
        chunks,
        tiles_per_chunk,
        counter_slots,
        partial_bytes,
    })
}

/// `(counter_slots, bytes)` of one workspace that serves every launch of 1..=`max_prompts`
/// prompts with `tokens` and `keys` on a GPU with `sm_count` SMs (0 bytes if none splits).
pub fn folded_token_to_image_workspace(
    max_prompts: usize,
    tokens: usize,
    keys: usize,
    sm_count: usize,
) -> Result<(usize, usize)> {
    workspace_for_plans(max_prompts, |prompts| {
        plan_folded_token_to_image(prompts, tokens, keys, sm_count)
    })
}

fn check_batch_stride(what: &str, stride: usize) -> Result<()> {
    if stride % 8 != 0 || stride > i32::MAX as usize {
        return Err(launch_error(
            KERNEL,
            format!("{what} batch stride {stride} must be a multiple of 8 halves within i32"),
        ));
    }
    Ok(())
}

fn folded_params(
    a: &FoldedTokenToImageArgs,
    sm_count: usize,
) -> Result<(FoldedT2iParams, CrossAttentionPlan)> {
    let plan = plan_folded_token_to_image(a.prompts, a.tokens, a.keys, sm_count)?;
    if !(a.scale.is_finite() && a.scale > 0.0) {
        return Err(launch_error(
            KERNEL,
            format!("scale {} must be finite and > 0", a.scale),
        ));
    }
    check_batch_stride("qf", a.qf_batch_stride)?;
    check_batch_stride("x", a.x_batch_stride)?;
    check_batch_stride("o", a.o.batch_stride)?;
    let (ot, ob) = (a.o.token_stride, a.o.batch_stride);
    if ot < FOLDED_OUT || ot % 8 != 0 || ot > i32::MAX as usize {
        return Err(launch_error(
            KERNEL,
            format!("o token stride {ot} must be a multiple of 8 halves, >= {FOLDED_OUT}"),
        ));
    }
    // Distinct output rows must not overlap (a zero batch stride would race).
    if a.prompts > 1 && ob < (a.tokens - 1) * ot + FOLDED_OUT {
        return Err(launch_error(
            KERNEL,
            format!(
                "o batch stride {ob} overlaps the previous prompt's {} rows of stride {ot}",
                a.tokens
            ),
        ));
    }
    let rows = a.tokens * FOLDED_HEADS;
    let qf_bytes = rows_extent(a.prompts, rows, FOLDED_DIM, FOLDED_DIM, a.qf_batch_stride);
    let x_bytes = rows_extent(a.prompts, a.keys, FOLDED_DIM, FOLDED_DIM, a.x_batch_stride);
    let pe_bytes = a.keys * FOLDED_DIM * 2; // keys <= 2^20: no overflow
    let wv_bytes = FOLDED_OUT * FOLDED_DIM * 2;
    let bv_bytes = FOLDED_OUT * 4;
    let o_bytes = rows_extent(a.prompts, a.tokens, ot, FOLDED_OUT, ob);
    a.qf.check(KERNEL, "qf", qf_bytes, 16)?;
    a.x.check(KERNEL, "x", x_bytes, 16)?;
    a.pe.check(KERNEL, "pe", Some(pe_bytes), 16)?;
    a.wv.check(KERNEL, "wv", Some(wv_bytes), 16)?;
    a.bv.check(KERNEL, "bv", Some(bv_bytes), 16)?;
    a.o.region.check(KERNEL, "o", o_bytes, 16)?;
    // Every extent was checked above, so these are Some.
    let o_bytes = o_bytes.unwrap_or(0);
    let inputs = [
        ("qf", &a.qf, qf_bytes.unwrap_or(0)),
        ("x", &a.x, x_bytes.unwrap_or(0)),
        ("pe", &a.pe, pe_bytes),
        ("wv", &a.wv, wv_bytes),
        ("bv", &a.bv, bv_bytes),
    ];
    for (what, r, bytes) in inputs {
        if overlaps(&a.o.region, o_bytes, r, bytes) {
            return Err(launch_error(KERNEL, format!("the output overlaps {what}")));
        }
    }
    let (plan, counters, partial) = bind_workspace(
        KERNEL,
        plan,
        a.keys / FOLDED_STAGE_KEYS,
        a.workspace.as_ref(),
        &[
            inputs[0],
            inputs[1],
            inputs[2],
            inputs[3],
            inputs[4],
            ("o", &a.o.region, o_bytes),
        ],
    )?;
    let params = FoldedT2iParams {
        qf: a.qf.ptr,
        x: a.x.ptr,
        pe: a.pe.ptr,
        wv: a.wv.ptr,
        bv: a.bv.ptr,
        o: a.o.region.ptr,
        partial,
        counters,
        qf_batch: a.qf_batch_stride as i64,
        x_batch: a.x_batch_stride as i64,
        o_batch: ob as i64,
        o_token: ot as i64,
        tokens: a.tokens as i32,
        keys: a.keys as i32,
        chunks: plan.chunks as i32,
        tiles_per_chunk: plan.tiles_per_chunk as i32,
        scale_log2: a.scale * std::f32::consts::LOG2_E,
    };
    Ok((params, plan))
}

/// Checks [`launch_folded_token_to_image`]'s arguments exactly as the launch does on a GPU
/// with `sm_count` SMs, without a GPU; returns the plan it would follow (one chunk without a
/// workspace).
pub fn check_folded_token_to_image(
    args: &FoldedTokenToImageArgs,
    sm_count: usize,
) -> Result<CrossAttentionPlan> {
    folded_params(args, sm_count).map(|(_, plan)| plan)
}

/// The folded token -> image attention, one launch: grid (chunks, prompts) of 256 threads,
/// 160 KB of dynamic shared memory (sm_90). The chunk plan is
/// [`check_folded_token_to_image`]'s.
pub fn launch_folded_token_to_image(gpu: &Gpu, args: &FoldedTokenToImageArgs) -> Result<()> {
    let kernels = gpu.kernels();
    let (params, plan) = folded_params(args, kernels.sm_count() as usize)?;
    check_smem_optin(kernels, KERNEL, FOLDED_T2I_SMEM_BYTES)?;
    let cfg = LaunchConfig {
        grid_dim: (plan.chunks as u32, args.prompts as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: FOLDED_T2I_SMEM_BYTES,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was bounds-, alignment- and
    // overlap-checked above, the workspace against the plan.
    unsafe { launch_with_params(gpu, KERNEL, &kernels.sam_folded_t2i, cfg, &params) }
}
