//! Launcher for `kernels/sam_cross_attention.cu`: the MobileSAM decoder's token -> image
//! attention core (official `Attention` with `downsample_rate` 2, after its projections):
//! `O = softmax(Q K^T / sqrt(16)) V` per prompt and head, 8 heads of dim 16 concatenated into
//! 128-wide rows, T <= 80 query tokens against `keys` (a multiple of 64) key rows.
//!
//! Each CTA streams one chunk of key rows for all 8 heads; with more than one chunk per prompt
//! the chunks' partial results go through a [`CrossAttentionWorkspace`] and the last CTA of a
//! prompt merges them in chunk order (bitwise deterministic; the arrival counters are left at 0,
//! so one workspace serves any later launch or graph replay on the same stream).
//! [`plan_cross_attention`] picks the chunk count (about two CTAs per SM); size a workspace
//! for several batch sizes with [`cross_attention_workspace`]. Errors are `Error::Launch`
//! naming the kernel and the problem.

use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::{launch_error, launch_with_params, overlaps, DeviceRegion};
use crate::error::Result;
use crate::gpu::{DevicePtr, Gpu};

const KERNEL: &str = "sam_cross_attention";
/// Heads and head dimension (`num_heads` 8, internal width 256 / 2 = 128).
pub const CROSS_HEADS: usize = 8;
pub const CROSS_HEAD_DIM: usize = 16;
/// Halves per q/k/v/o row (all heads).
pub const CROSS_WIDTH: usize = CROSS_HEADS * CROSS_HEAD_DIM;
/// Most query tokens (5 compiled variants of 16-row tiles).
pub const CROSS_MAX_TOKENS: usize = 80;
/// Keys per pipeline stage: `keys` must be a multiple of it.
pub const CROSS_STAGE_KEYS: usize = 64;
/// Most keys of one launch.
pub const CROSS_MAX_KEYS: usize = 1 << 20;
/// Most prompts of one launch (grid.y).
pub const CROSS_MAX_PROMPTS: usize = 65_535;
/// Most key chunks per prompt.
pub const CROSS_MAX_CHUNKS: usize = 32;

const THREADS: u32 = 256;
/// Aim for this many CTAs per SM.
const CTAS_PER_SM_TARGET: usize = 2;
/// fp32 values per token of one chunk's partial result: 128 O values, 8 (max, sum).
const PART_FLOATS: usize = CROSS_WIDTH + 2 * CROSS_HEADS;
/// The merging CTA reads `chunks x T` partial rows: chunks are capped at this over T (32 at 7
/// tokens, 23 at 11, 4 at 69), which keeps the merge (~chunks x T x 576 B, one CTA) below the
/// chunk's own key streaming.
const MERGE_ROWS_BUDGET: usize = 256;

/// One compiled variant per number of 16-row query tiles: kernel name and dynamic shared
/// memory (Q tiles + two stages of 64 k and v rows; static_assert in the kernel).
pub(crate) const CROSS_ATTENTION_VARIANTS: [(&str, u32); 5] = [
    ("sam_cross_attention_q1", 69_632),
    ("sam_cross_attention_q2", 73_728),
    ("sam_cross_attention_q3", 77_824),
    ("sam_cross_attention_q4", 81_920),
    ("sam_cross_attention_q5", 86_016),
];

/// fp16 rows of 128 halves (8 heads x 16): element `(prompt, token, c)` at
/// `region.ptr + 2 * (prompt * batch_stride + token * token_stride + c)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossRows {
    /// The rows; 16-byte aligned, bytes bounds-checked.
    pub region: DeviceRegion,
    /// Halves between tokens (>= 128, a multiple of 8).
    pub token_stride: usize,
    /// Halves between prompts (a multiple of 8; 0 shares the rows over prompts, not for O).
    pub batch_stride: usize,
}

/// Arrival counters (`counter_slots` u32, padded to 16 bytes) followed by the chunks' fp32
/// partial results. Zero the counters once; the kernel leaves them at zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossAttentionWorkspace {
    pub ptr: DevicePtr,
    pub bytes: usize,
    /// Arrival counters at the start (>= every launch's prompts when it splits keys).
    pub counter_slots: usize,
}

/// How a launch splits the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrossAttentionPlan {
    /// Key chunks per prompt (grid.x); none is empty.
    pub chunks: usize,
    /// 64-key stages per chunk (the last chunk may have fewer).
    pub tiles_per_chunk: usize,
    /// Arrival counters the split needs (the prompts; 0 with one chunk).
    pub counter_slots: usize,
    /// Partial-result bytes the split needs (0 with one chunk).
    pub partial_bytes: usize,
}

impl CrossAttentionPlan {
    /// Bytes of a workspace for this launch alone (counters, then partials; 0 with one chunk).
    pub fn workspace_bytes(&self) -> usize {
        if self.chunks == 1 {
            0
        } else {
            counters_bytes(self.counter_slots) + self.partial_bytes
        }
    }
}

/// Operands of [`launch_cross_attention`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossAttentionArgs {
    /// Prompts, 1..=[`CROSS_MAX_PROMPTS`].
    pub prompts: usize,
    /// Query tokens per prompt, 1..=[`CROSS_MAX_TOKENS`].
    pub tokens: usize,
    /// Keys per prompt: a multiple of 64, 64..=[`CROSS_MAX_KEYS`].
    pub keys: usize,
    /// Softmax scale (`1 / sqrt(16)` in SAM); finite and > 0.
    pub scale: f32,
    /// Queries `[prompts, tokens, 128]`.
    pub q: CrossRows,
    /// Keys and values `[prompts, keys, 128]`, read with the same strides (`kv_token_stride`,
    /// `kv_batch_stride`; batch stride 0: the same keys for every prompt).
    pub k: DeviceRegion,
    pub v: DeviceRegion,
    pub kv_token_stride: usize,
    pub kv_batch_stride: usize,
    /// Output `[prompts, tokens, 128]`; must not overlap the inputs or the workspace.
    pub o: CrossRows,
    /// Split workspace; `None` runs one chunk per prompt (slower, no workspace needed).
    pub workspace: Option<CrossAttentionWorkspace>,
}

/// Mirrors `CrossAttentionParams` in the kernel.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct CrossAttentionParams {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    partial: u64,
    counters: u64,
    q_batch: i64,
    q_token: i64,
    kv_batch: i64,
    kv_token: i64,
    o_batch: i64,
    o_token: i64,
    tokens: i32,
    keys: i32,
    chunks: i32,
    tiles_per_chunk: i32,
    scale_log2: f32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for CrossAttentionParams {}

/// One u32 arrival counter per prompt, padded to 16 bytes.
pub(crate) fn counters_bytes(slots: usize) -> usize {
    (slots * 4).div_ceil(16) * 16
}

fn check_shape(prompts: usize, tokens: usize, keys: usize) -> Result<()> {
    check_split_shape(
        KERNEL,
        (prompts, CROSS_MAX_PROMPTS),
        (tokens, CROSS_MAX_TOKENS),
        (keys, CROSS_MAX_KEYS),
        CROSS_STAGE_KEYS,
    )
}

/// The shape checks of a key-split token->image attention launch of `kernel`: prompts, tokens
/// and keys each `(value, most)`; keys a multiple of `stage_keys`.
pub(crate) fn check_split_shape(
    kernel: &'static str,
    (prompts, max_prompts): (usize, usize),
    (tokens, max_tokens): (usize, usize),
    (keys, max_keys): (usize, usize),
    stage_keys: usize,
) -> Result<()> {
    if prompts == 0 || prompts > max_prompts {
        return Err(launch_error(
            kernel,
            format!("prompts {prompts} must be in 1..={max_prompts}"),
        ));
    }
    if tokens == 0 || tokens > max_tokens {
        return Err(launch_error(
            kernel,
            format!("tokens {tokens} must be in 1..={max_tokens}"),
        ));
    }
    if keys == 0 || keys > max_keys || keys % stage_keys != 0 {
        return Err(launch_error(
            kernel,
            format!("keys {keys} must be a multiple of {stage_keys} in {stage_keys}..={max_keys}"),
        ));
    }
    Ok(())
}

/// The key split of `prompts` prompts of `tokens` queries against `keys` keys on a GPU with
/// `sm_count` SMs: about two CTAs per SM, at most [`CROSS_MAX_CHUNKS`] chunks and at most
/// 256 / T (at least 4), no empty chunk. 132 SMs, T = 7: 1-8 prompts 32 chunks, 16 prompts 16,
/// 32 prompts 8.
pub fn plan_cross_attention(
    prompts: usize,
    tokens: usize,
    keys: usize,
    sm_count: usize,
) -> Result<CrossAttentionPlan> {
    check_shape(prompts, tokens, keys)?;
    let tiles = keys / CROSS_STAGE_KEYS;
    let cap = (MERGE_ROWS_BUDGET / tokens).clamp(4, CROSS_MAX_CHUNKS);
    let wanted = (CTAS_PER_SM_TARGET * sm_count.max(1) / prompts).clamp(1, cap.min(tiles));
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
pub fn cross_attention_workspace(
    max_prompts: usize,
    tokens: usize,
    keys: usize,
    sm_count: usize,
) -> Result<(usize, usize)> {
    workspace_for_plans(max_prompts, |prompts| {
        plan_cross_attention(prompts, tokens, keys, sm_count)
    })
}

/// `(counter_slots, bytes)` of one workspace that serves the key-split plans `plan(prompts)` of
/// every prompt count 1..=`max_prompts` (0 bytes if none splits); shared by the token->image
/// attentions.
pub(crate) fn workspace_for_plans(
    max_prompts: usize,
    plan: impl Fn(usize) -> Result<CrossAttentionPlan>,
) -> Result<(usize, usize)> {
    let (mut slots, mut partial) = (0, 0);
    for prompts in 1..=max_prompts {
        let plan = plan(prompts)?;
        slots = slots.max(plan.counter_slots);
        partial = partial.max(plan.partial_bytes);
    }
    Ok(if slots == 0 {
        (0, 0)
    } else {
        (slots, counters_bytes(slots) + partial)
    })
}

/// Bytes from the first to one past the last element of `prompts` blocks of `rows` rows of
/// `width` halves (row stride `row_stride`, block stride `batch_stride`); None on overflow.
pub(crate) fn rows_extent(
    prompts: usize,
    rows: usize,
    row_stride: usize,
    width: usize,
    batch_stride: usize,
) -> Option<usize> {
    (prompts - 1)
        .checked_mul(batch_stride)?
        .checked_add((rows - 1).checked_mul(row_stride)?)?
        .checked_add(width)?
        .checked_mul(2)
}

fn check_strides(what: &str, token_stride: usize, batch_stride: usize) -> Result<()> {
    if token_stride < CROSS_WIDTH || token_stride % 8 != 0 || batch_stride % 8 != 0 {
        return Err(launch_error(
            KERNEL,
            format!(
                "{what} strides (token {token_stride}, batch {batch_stride}) must be multiples \
                 of 8 halves, the token stride >= {CROSS_WIDTH}"
            ),
        ));
    }
    // The kernel takes strides as i64 and forms `stride * index` in i64.
    if token_stride > i32::MAX as usize || batch_stride > i32::MAX as usize {
        return Err(launch_error(KERNEL, format!("{what} strides exceed i32")));
    }
    Ok(())
}

fn cross_attention_params(
    a: &CrossAttentionArgs,
    sm_count: usize,
) -> Result<(CrossAttentionParams, CrossAttentionPlan)> {
    let plan = plan_cross_attention(a.prompts, a.tokens, a.keys, sm_count)?;
    if !(a.scale.is_finite() && a.scale > 0.0) {
        return Err(launch_error(
            KERNEL,
            format!("scale {} must be finite and > 0", a.scale),
        ));
    }
    check_strides("q", a.q.token_stride, a.q.batch_stride)?;
    check_strides("k/v", a.kv_token_stride, a.kv_batch_stride)?;
    check_strides("o", a.o.token_stride, a.o.batch_stride)?;
    let q_bytes = rows_extent(
        a.prompts,
        a.tokens,
        a.q.token_stride,
        CROSS_WIDTH,
        a.q.batch_stride,
    );
    let kv_bytes = rows_extent(
        a.prompts,
        a.keys,
        a.kv_token_stride,
        CROSS_WIDTH,
        a.kv_batch_stride,
    );
    let o_bytes = rows_extent(
        a.prompts,
        a.tokens,
        a.o.token_stride,
        CROSS_WIDTH,
        a.o.batch_stride,
    );
    a.q.region.check(KERNEL, "q", q_bytes, 16)?;
    a.k.check(KERNEL, "k", kv_bytes, 16)?;
    a.v.check(KERNEL, "v", kv_bytes, 16)?;
    a.o.region.check(KERNEL, "o", o_bytes, 16)?;
    // Distinct output rows must not overlap (a zero batch stride would race).
    if a.prompts > 1 && a.o.batch_stride < (a.tokens - 1) * a.o.token_stride + CROSS_WIDTH {
        return Err(launch_error(
            KERNEL,
            format!(
                "o batch stride {} overlaps the previous prompt's {} rows of stride {}",
                a.o.batch_stride, a.tokens, a.o.token_stride
            ),
        ));
    }
    // Every extent was checked above, so these are Some.
    let (q_bytes, kv_bytes, o_bytes) = (
        q_bytes.unwrap_or(0),
        kv_bytes.unwrap_or(0),
        o_bytes.unwrap_or(0),
    );
    let inputs = [
        ("q", &a.q.region, q_bytes),
        ("k", &a.k, kv_bytes),
        ("v", &a.v, kv_bytes),
    ];
    for (what, r, bytes) in inputs {
        if overlaps(&a.o.region, o_bytes, r, bytes) {
            return Err(launch_error(KERNEL, format!("the output overlaps {what}")));
        }
    }
    let (plan, counters, partial) = bind_workspace(
        KERNEL,
        plan,
        a.keys / CROSS_STAGE_KEYS,
        a.workspace.as_ref(),
        &[inputs[0], inputs[1], inputs[2], ("o", &a.o.region, o_bytes)],
    )?;
    let params = CrossAttentionParams {
        q: a.q.region.ptr,
        k: a.k.ptr,
        v: a.v.ptr,
        o: a.o.region.ptr,
        partial,
        counters,
        q_batch: a.q.batch_stride as i64,
        q_token: a.q.token_stride as i64,
        kv_batch: a.kv_batch_stride as i64,
        kv_token: a.kv_token_stride as i64,
        o_batch: a.o.batch_stride as i64,
        o_token: a.o.token_stride as i64,
        tokens: a.tokens as i32,
        keys: a.keys as i32,
        chunks: plan.chunks as i32,
        tiles_per_chunk: plan.tiles_per_chunk as i32,
        scale_log2: a.scale * std::f32::consts::LOG2_E,
    };
    Ok((params, plan))
}

/// Checks [`launch_cross_attention`]'s arguments exactly as the launch does on a GPU with
/// `sm_count` SMs, without a GPU; returns the plan it would follow (one chunk without a
/// workspace).
pub fn check_cross_attention(
    args: &CrossAttentionArgs,
    sm_count: usize,
) -> Result<CrossAttentionPlan> {
    cross_attention_params(args, sm_count).map(|(_, plan)| plan)
}

/// `O = softmax(scale Q K^T) V` per prompt and head, one launch: grid (chunks, prompts) of
/// 256 threads, the variant with `ceil(T / 16)` query tiles. Returns the plan it followed.
pub fn launch_cross_attention(gpu: &Gpu, args: &CrossAttentionArgs) -> Result<CrossAttentionPlan> {
    let kernels = gpu.kernels();
    let (params, plan) = cross_attention_params(args, kernels.sm_count() as usize)?;
    let variant = args.tokens.div_ceil(16) - 1;
    let (name, smem) = CROSS_ATTENTION_VARIANTS[variant];
    let cfg = LaunchConfig {
        grid_dim: (plan.chunks as u32, args.prompts as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem,
    };
    // SAFETY: parameters mirror the kernel's; every buffer was bounds-, alignment- and
    // overlap-checked above, the workspace against the plan.
    unsafe {
        launch_with_params(
            gpu,
            name,
            &kernels.sam_cross_attention[variant],
            cfg,
            &params,
        )
    }?;
    Ok(plan)
}

/// Binds a key-split workspace to `plan` for a launch of `kernel` (shared by the token->image
/// attentions): with a workspace and more than one chunk, checks it (non-null, 16-byte aligned,
/// enough arrival counters and partial bytes, overlapping none of `operands`) and returns the
/// plan with the counters' and partials' addresses; otherwise one chunk per prompt of `tiles`
/// stages, written directly (addresses 0).
pub(crate) fn bind_workspace(
    kernel: &'static str,
    plan: CrossAttentionPlan,
    tiles: usize,
    workspace: Option<&CrossAttentionWorkspace>,
    operands: &[(&str, &DeviceRegion, usize)],
) -> Result<(CrossAttentionPlan, u64, u64)> {
    let ws = match workspace {
        Some(ws) if plan.chunks > 1 => ws,
        _ => {
            let direct = CrossAttentionPlan {
                chunks: 1,
                tiles_per_chunk: tiles,
                counter_slots: 0,
                partial_bytes: 0,
            };
            return Ok((direct, 0, 0));
        }
    };
    if ws.ptr == 0 || ws.ptr % 16 != 0 {
        return Err(launch_error(
            kernel,
            format!(
                "workspace at {:#x} must be non-null and 16-byte aligned",
                ws.ptr
            ),
        ));
    }
    if ws.counter_slots < plan.counter_slots {
        return Err(launch_error(
            kernel,
            format!(
                "workspace has {} arrival counters, the plan needs {}",
                ws.counter_slots, plan.counter_slots
            ),
        ));
    }
    let offset = counters_bytes(ws.counter_slots);
    let needed = offset.saturating_add(plan.partial_bytes);
    if ws.bytes < needed {
        return Err(launch_error(
            kernel,
            format!(
                "workspace has {} bytes, the plan needs {needed} ({} counters, then {} bytes of \
                 partials)",
                ws.bytes, ws.counter_slots, plan.partial_bytes
            ),
        ));
    }
    let region = DeviceRegion::new(ws.ptr, needed);
    for &(what, r, bytes) in operands {
        if overlaps(&region, needed, r, bytes) {
            return Err(launch_error(
                kernel,
                format!("the workspace overlaps {what}"),
            ));
        }
    }
    Ok((plan, ws.ptr, ws.ptr + offset as u64))
}
