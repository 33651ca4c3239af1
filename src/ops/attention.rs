//! Launcher for `kernels/attention.cu`: fused multi-head attention
//! `O = softmax(scale * Q K^T + bias) V` per (batch, head), fp16 storage, fp32 softmax.
//!
//! Q, K, V and O are described by [`HeadsTensor`]s (base address plus element strides for batch,
//! token and head; the head dimension is contiguous), so Q/K/V can be read straight out of a
//! packed qkv GEMM output and O written as `[B, L, H * D]` for the output projection.

use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};

use crate::error::{Error, Result};
use crate::gpu::{DevicePtr, Gpu};

const KERNEL: &str = "attention";
/// Query rows per CTA and keys per stage of the 4-warp shape; the split shape takes 16 rows.
const BLOCK_M: usize = 64;
const BLOCK_N: usize = 64;
const SPLIT_BLOCK_M: usize = 16;
const THREADS: u32 = 128;
/// The kernel moves Q/K/V/O in 16-byte chunks.
const ALIGN_BYTES: u64 = 16;
const ALIGN_ELEMS: usize = 8;

/// Aim for this many CTAs per SM when splitting keys across CTAs.
const CTAS_PER_SM_TARGET: usize = 2;

/// Head dimensions with a compiled kernel.
pub const HEAD_DIMS: [usize; 3] = [16, 32, 64];

/// One of Q, K, V or O: fp16 element `(b, token, head, d)` lives at
/// `ptr + 2 * (b * batch_stride + token * token_stride + head * head_stride + d)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadsTensor {
    /// Device address of element (0, 0, 0, 0); 16-byte aligned.
    pub ptr: DevicePtr,
    /// Bytes addressable from `ptr` (bounds check only).
    pub bytes: usize,
    /// Elements between batches (0 broadcasts one tensor over the batch; not allowed for O).
    pub batch_stride: usize,
    /// Elements between tokens.
    pub token_stride: usize,
    /// Elements between heads.
    pub head_stride: usize,
}

impl HeadsTensor {
    /// A contiguous `[batch, tokens, heads, head_dim]` tensor (= `[batch, tokens, heads * head_dim]`).
    pub fn contiguous(
        ptr: DevicePtr,
        bytes: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
    ) -> HeadsTensor {
        // Saturating: absurd sizes then fail `Attention::check` instead of wrapping.
        let token_stride = heads.saturating_mul(head_dim);
        HeadsTensor {
            ptr,
            bytes,
            batch_stride: tokens.saturating_mul(token_stride),
            token_stride,
            head_stride: head_dim,
        }
    }

    /// Part `which` (0 = q, 1 = k, 2 = v) of a packed qkv buffer `[batch, tokens, 3 * heads * head_dim]`.
    ///
    /// `per_head_interleaved` picks the feature order: `[heads, 3, head_dim]` as TinyViT's
    /// `qkv.view(B, N, heads, -1).split([d, d, d], dim=3)`, or `[3, heads, head_dim]` as
    /// `torch.nn.MultiheadAttention`'s packed `in_proj` (D-FINE).
    pub fn packed_qkv(
        ptr: DevicePtr,
        bytes: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        which: usize,
        per_head_interleaved: bool,
    ) -> HeadsTensor {
        let per_part = heads.saturating_mul(head_dim);
        let width = per_part.saturating_mul(3);
        let (offset, head_stride) = if per_head_interleaved {
            (which.saturating_mul(head_dim), head_dim.saturating_mul(3))
        } else {
            (which.saturating_mul(per_part), head_dim)
        };
        let offset_bytes = offset.saturating_mul(2);
        HeadsTensor {
            ptr: ptr.saturating_add(offset_bytes as u64),
            bytes: bytes.saturating_sub(offset_bytes),
            batch_stride: tokens.saturating_mul(width),
            token_stride: width,
            head_stride,
        }
    }
}

/// Element type of an additive bias table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasDtype {
    F32,
    F16,
}

impl BiasDtype {
    fn bytes(self) -> usize {
        match self {
            BiasDtype::F32 => 4,
            BiasDtype::F16 => 2,
        }
    }
}

/// How a bias table is laid out (beyond its batch and head strides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasLayout {
    /// Element `(b, head, query, key)` at
    /// `b * batch_stride + head * head_stride + query * row_stride + key`.
    Dense { row_stride: usize },
    /// The order [`fragment_bias`] produces (per head [`fragment_bias_len`] elements): every
    /// thread reads its own scores' bias with 16-byte loads. Best for constant tables such as
    /// TinyViT's, converted once at load. Needs 16-byte alignment of the address and strides.
    Fragments,
}

/// Additive score bias, added to `scale * Q K^T` before the softmax. TinyViT's gathered
/// `attention_biases` is `[H, N, N]` shared by every window: batch stride 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionBias {
    /// Device address of element (0, 0, 0, 0), aligned to the element size.
    pub ptr: DevicePtr,
    /// Bytes addressable from `ptr`.
    pub bytes: usize,
    pub dtype: BiasDtype,
    pub layout: BiasLayout,
    /// Elements between batch entries (0 = one table for all).
    pub batch_stride: usize,
    /// Elements between heads.
    pub head_stride: usize,
}

impl AttentionBias {
    /// A `[heads, q_len, kv_len]` table shared by every batch entry, dense (`fragments` false)
    /// or in [`fragment_bias`] order.
    pub fn shared(
        ptr: DevicePtr,
        bytes: usize,
        dtype: BiasDtype,
        q_len: usize,
        kv_len: usize,
        fragments: bool,
    ) -> AttentionBias {
        let (layout, head_stride) = if fragments {
            (BiasLayout::Fragments, fragment_bias_len(q_len, kv_len))
        } else {
            let dense = BiasLayout::Dense { row_stride: kv_len };
            (dense, q_len.saturating_mul(kv_len))
        };
        AttentionBias {
            ptr,
            bytes,
            dtype,
            layout,
            batch_stride: 0,
            head_stride,
        }
    }
}

/// Query rows and keys of one block of a fragment-ordered bias.
const FRAGMENT_ROWS: usize = 16;
const FRAGMENT_KEYS: usize = 64;

/// Elements per head of a fragment-ordered bias: blocks of 16 query rows x 64 keys.
pub fn fragment_bias_len(q_len: usize, kv_len: usize) -> usize {
    q_len
        .div_ceil(FRAGMENT_ROWS)
        .saturating_mul(kv_len.div_ceil(FRAGMENT_KEYS))
        .saturating_mul(FRAGMENT_ROWS * FRAGMENT_KEYS)
}

/// Reorders a dense `[heads, q_len, kv_len]` bias into the kernel's fragment order: per head,
/// row-major blocks of 16 query rows x 64 keys; inside a block, for each of the 32 lanes of a
/// warp, the 8 n-tiles x 4 values of its m16n8 accumulators (lane = 4 g + t holds rows g and
/// g + 8, keys 8 j + 2 t and 8 j + 2 t + 1). Padding past `q_len`/`kv_len` is 0.
pub fn fragment_bias(dense: &[f32], heads: usize, q_len: usize, kv_len: usize) -> Result<Vec<f32>> {
    let per_head = q_len.saturating_mul(kv_len);
    if heads == 0 || per_head == 0 || Some(dense.len()) != heads.checked_mul(per_head) {
        return Err(Error::Plan(format!(
            "dense bias has {} values, expected {heads} heads x {q_len} x {kv_len}",
            dense.len()
        )));
    }
    let mut out = Vec::with_capacity(heads * fragment_bias_len(q_len, kv_len));
    for table in dense.chunks_exact(per_head) {
        for row_block in 0..q_len.div_ceil(FRAGMENT_ROWS) {
            for key_block in 0..kv_len.div_ceil(FRAGMENT_KEYS) {
                for lane in 0..32 {
                    // (n-tile j, accumulator e) in the order the kernel's s[j][e] reads them.
                    for (j, e) in (0..8).flat_map(|j| (0..4).map(move |e| (j, e))) {
                        let row = row_block * FRAGMENT_ROWS + lane / 4 + 8 * (e / 2);
                        let key = key_block * FRAGMENT_KEYS + 8 * j + 2 * (lane % 4) + e % 2;
                        let inside = row < q_len && key < kv_len;
                        out.push(if inside {
                            table[row * kv_len + key]
                        } else {
                            0.0
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Scratch for splitting the keys of one attention across CTAs (see [`AttentionPlan`]): a
/// 16-byte aligned device buffer, **zeroed once after allocation**. Its first
/// `counter_slots` u32 (padded to 16 bytes) are the arrival counters, the rest holds the
/// splits' partial results. The kernel leaves the counters at zero, so one workspace serves
/// any number of launches (and graph replays) issued one after another on the same stream,
/// of any shapes whose plans fit it ([`WorkspaceNeed`] sizes one for several): the counter
/// region is fixed per workspace, so no launch's partials land on another launch's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionWorkspace {
    pub ptr: DevicePtr,
    pub bytes: usize,
    /// Arrival counters at the start of the workspace (>= every launch's `counter_slots`).
    pub counter_slots: usize,
}

impl AttentionWorkspace {
    /// Byte offset of the partial results.
    fn partial_offset(&self) -> usize {
        counters_bytes(self.counter_slots)
    }
}

/// What one workspace must hold to serve a set of launches: the most counters and the
/// largest partial area of any of them (they run one after another).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkspaceNeed {
    /// Arrival counters (the largest `counter_slots` of the plans added).
    pub counter_slots: usize,
    /// Partial-result bytes (the largest `partial_bytes` of the plans added).
    pub partial_bytes: usize,
}

impl WorkspaceNeed {
    /// Makes room for `plan` as well.
    pub fn add(&mut self, plan: &AttentionPlan) {
        self.counter_slots = self.counter_slots.max(plan.counter_slots);
        self.partial_bytes = self.partial_bytes.max(plan.partial_bytes);
    }

    /// Bytes of a workspace laid out for this need (0 when no launch splits its keys).
    pub fn bytes(&self) -> usize {
        if self.counter_slots == 0 {
            0
        } else {
            counters_bytes(self.counter_slots) + self.partial_bytes
        }
    }
}

/// One attention launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attention {
    pub batch: usize,
    pub heads: usize,
    /// Query tokens (Lq >= 1).
    pub q_len: usize,
    /// Key/value tokens (Lk >= 1).
    pub kv_len: usize,
    /// 16, 32 or 64.
    pub head_dim: usize,
    /// Multiplies Q K^T before the bias; usually `head_dim^-0.5`.
    pub scale: f32,
    pub q: HeadsTensor,
    pub k: HeadsTensor,
    pub v: HeadsTensor,
    pub o: HeadsTensor,
    pub bias: Option<AttentionBias>,
    /// Lets short-query launches spread their keys over more CTAs; `None` keeps one CTA per
    /// (batch, head, query tile).
    pub workspace: Option<AttentionWorkspace>,
}

/// Which compiled kernel shape a launch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionShape {
    /// 4 warps x 16 query rows, each warp over every key.
    Rows,
    /// 16 query rows, the 4 warps split the keys and merge (Lq <= 16, or too few CTAs).
    SplitKeys,
}

/// How a launch is laid out on a GPU with a given number of SMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionPlan {
    pub shape: AttentionShape,
    /// Query tiles per (batch, head).
    pub q_tiles: usize,
    /// CTAs sharing the keys of one query tile when a workspace is given (1 = no split).
    pub key_splits: usize,
    /// Key tiles each split covers.
    pub tiles_per_split: usize,
    /// Arrival counters the split needs, one per (batch, head, query tile) (0 when
    /// `key_splits == 1`).
    pub counter_slots: usize,
    /// Partial-result bytes the split needs (0 when `key_splits == 1`).
    pub partial_bytes: usize,
    /// Bytes of a workspace for this launch alone (counters, then partials).
    pub workspace_bytes: usize,
}

/// Mirrors `AttentionParams` in the kernel (passed by value).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct AttentionParams {
    q: u64,
    k: u64,
    v: u64,
    o: u64,
    bias: u64,
    q_strides: [i64; 3],
    k_strides: [i64; 3],
    v_strides: [i64; 3],
    o_strides: [i64; 3],
    bias_strides: [i64; 3],
    partial: u64,
    counters: u64,
    splits: i32,
    tiles_per_split: i32,
    batch: i32,
    heads: i32,
    lq: i32,
    lk: i32,
    bias_kind: i32,
    scale_log2: f32,
    inv_scale: f32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for AttentionParams {}

fn launch_error(message: String) -> Error {
    Error::Launch {
        kernel: KERNEL,
        message,
    }
}

/// Useful floating-point operations of one attention (2 GEMMs, 2 flops per multiply-add).
pub fn attention_flops(batch: usize, heads: usize, q_len: usize, kv_len: usize, d: usize) -> f64 {
    4.0 * batch as f64 * heads as f64 * q_len as f64 * kv_len as f64 * d as f64
}

/// Checks that the largest element a view can touch lies inside its buffer; returns nothing on
/// success so every view/bias shares one rule.
fn check_extent(
    what: &str,
    bytes: usize,
    elem: usize,
    extents: [(usize, usize); 3],
    row: usize,
) -> Result<()> {
    let mut last = row
        .checked_sub(1)
        .ok_or_else(|| launch_error(format!("{what}: empty row")))?;
    for (count, stride) in extents {
        let add = (count - 1)
            .checked_mul(stride)
            .ok_or_else(|| launch_error(format!("{what}: offsets overflow")))?;
        last = last
            .checked_add(add)
            .ok_or_else(|| launch_error(format!("{what}: offsets overflow")))?;
    }
    let need = last
        .checked_add(1)
        .and_then(|n| n.checked_mul(elem))
        .ok_or_else(|| launch_error(format!("{what}: offsets overflow")))?;
    if need > bytes {
        return Err(launch_error(format!(
            "{what} reaches byte {need} but only {bytes} bytes are addressable"
        )));
    }
    // The kernel takes strides as i64.
    if need > i64::MAX as usize {
        return Err(launch_error(format!("{what}: {need} bytes exceed i64")));
    }
    Ok(())
}

impl Attention {
    /// Validates shapes, strides, alignment and bounds.
    pub fn check(&self) -> Result<()> {
        let d = self.head_dim;
        if !HEAD_DIMS.contains(&d) {
            return Err(launch_error(format!(
                "head_dim {d} has no kernel (supported: {HEAD_DIMS:?})"
            )));
        }
        for (name, value) in [
            ("batch", self.batch),
            ("heads", self.heads),
            ("q_len", self.q_len),
            ("kv_len", self.kv_len),
        ] {
            if value == 0 {
                return Err(launch_error(format!("{name} is 0")));
            }
            if value > i32::MAX as usize {
                return Err(launch_error(format!("{name} {value} exceeds i32")));
            }
        }
        // Grid: x = query tiles, y = heads, z = batch.
        if self.heads > 65535 || self.batch > 65535 {
            return Err(launch_error(format!(
                "heads {} and batch {} must each be <= 65535",
                self.heads, self.batch
            )));
        }
        if !self.scale.is_finite() {
            return Err(launch_error(format!("scale {} is not finite", self.scale)));
        }
        let views = [
            ("Q", &self.q, self.q_len),
            ("K", &self.k, self.kv_len),
            ("V", &self.v, self.kv_len),
            ("O", &self.o, self.q_len),
        ];
        for (name, view, tokens) in views {
            if view.ptr % ALIGN_BYTES != 0 {
                return Err(launch_error(format!(
                    "{name} address {:#x} is not 16-byte aligned",
                    view.ptr
                )));
            }
            let strides = [view.batch_stride, view.token_stride, view.head_stride];
            if strides.iter().any(|s| s % ALIGN_ELEMS != 0) {
                return Err(launch_error(format!(
                    "{name} strides {strides:?} must be multiples of 8 elements (16 bytes)"
                )));
            }
            check_extent(
                name,
                view.bytes,
                2,
                [
                    (self.batch, view.batch_stride),
                    (tokens, view.token_stride),
                    (self.heads, view.head_stride),
                ],
                d,
            )?;
        }
        // Distinct output rows must not overlap (a zero stride would race).
        let o = &self.o;
        for (name, count, stride) in [
            ("batch", self.batch, o.batch_stride),
            ("token", self.q_len, o.token_stride),
            ("head", self.heads, o.head_stride),
        ] {
            if count > 1 && stride < d {
                return Err(launch_error(format!(
                    "O {name} stride {stride} is below head_dim {d}: outputs would overlap"
                )));
            }
        }
        if let Some(bias) = &self.bias {
            self.check_bias(bias)?;
        }
        if let Some(ws) = &self.workspace {
            if ws.ptr % ALIGN_BYTES != 0 {
                return Err(launch_error(format!(
                    "workspace address {:#x} is not 16-byte aligned",
                    ws.ptr
                )));
            }
        }
        Ok(())
    }

    fn check_bias(&self, bias: &AttentionBias) -> Result<()> {
        // The bias is seeded into the Q K^T accumulators divided by the scale.
        if self.scale == 0.0 {
            return Err(launch_error("scale 0 with a bias is not supported".into()));
        }
        let elem = bias.dtype.bytes();
        let align = match bias.layout {
            BiasLayout::Dense { .. } => elem,
            BiasLayout::Fragments => ALIGN_BYTES as usize,
        };
        if bias.ptr % align as u64 != 0 {
            return Err(launch_error(format!(
                "bias address {:#x} is not aligned to {align} bytes",
                bias.ptr
            )));
        }
        match bias.layout {
            BiasLayout::Dense { row_stride } => check_extent(
                "bias",
                bias.bytes,
                elem,
                [
                    (self.batch, bias.batch_stride),
                    (self.heads, bias.head_stride),
                    (self.q_len, row_stride),
                ],
                self.kv_len,
            ),
            BiasLayout::Fragments => {
                let strides = [bias.batch_stride, bias.head_stride];
                if strides.iter().any(|s| (s * elem) % align != 0) {
                    return Err(launch_error(format!(
                        "fragment bias strides {strides:?} must be multiples of 16 bytes"
                    )));
                }
                check_extent(
                    "bias",
                    bias.bytes,
                    elem,
                    [
                        (self.batch, bias.batch_stride),
                        (self.heads, bias.head_stride),
                        (1, 0),
                    ],
                    fragment_bias_len(self.q_len, self.kv_len),
                )
            }
        }
    }

    /// Checks the launch and lays it out for a GPU with `sm_count` SMs: the 4-warp shape
    /// unless the queries are few (Lq <= 16) or it would leave SMs idle, and for the split
    /// shape as many key splits as bring the grid to about two CTAs per SM.
    pub fn plan(&self, sm_count: usize) -> Result<AttentionPlan> {
        self.check()?;
        let pairs = self.batch * self.heads;
        let rows_ctas = pairs * self.q_len.div_ceil(BLOCK_M);
        if self.q_len > SPLIT_BLOCK_M && rows_ctas >= sm_count {
            return Ok(AttentionPlan {
                shape: AttentionShape::Rows,
                q_tiles: self.q_len.div_ceil(BLOCK_M),
                key_splits: 1,
                tiles_per_split: self.kv_len.div_ceil(BLOCK_N),
                counter_slots: 0,
                partial_bytes: 0,
                workspace_bytes: 0,
            });
        }
        let q_tiles = self.q_len.div_ceil(SPLIT_BLOCK_M);
        let stage_keys = split_stage_keys(self.head_dim);
        let tiles = self.kv_len.div_ceil(stage_keys);
        let groups = pairs * q_tiles;
        let wanted = (CTAS_PER_SM_TARGET * sm_count)
            .div_ceil(groups)
            .clamp(1, tiles);
        let tiles_per_split = tiles.div_ceil(wanted);
        let key_splits = tiles.div_ceil(tiles_per_split); // no empty split
        let mut need = WorkspaceNeed::default();
        if key_splits > 1 {
            need.counter_slots = groups;
            need.partial_bytes = groups * key_splits * partial_bytes(self.head_dim);
        }
        Ok(AttentionPlan {
            shape: AttentionShape::SplitKeys,
            q_tiles,
            key_splits,
            tiles_per_split,
            counter_slots: need.counter_slots,
            partial_bytes: need.partial_bytes,
            workspace_bytes: need.bytes(),
        })
    }

    fn params(&self, plan: &AttentionPlan, split: bool) -> AttentionParams {
        let strides = |v: &HeadsTensor| {
            [
                v.batch_stride as i64,
                v.token_stride as i64,
                v.head_stride as i64,
            ]
        };
        // Kernel BiasKind: 1/2 dense fp32/fp16, 3/4 fragment-ordered fp32/fp16.
        let (bias, bias_strides, bias_kind) = match &self.bias {
            None => (0, [0; 3], 0),
            Some(b) => {
                let (row_stride, kind) = match b.layout {
                    BiasLayout::Dense { row_stride } => (row_stride, 1),
                    BiasLayout::Fragments => (0, 3),
                };
                let dtype = match b.dtype {
                    BiasDtype::F32 => 0,
                    BiasDtype::F16 => 1,
                };
                let strides = [b.batch_stride, b.head_stride, row_stride].map(|s| s as i64);
                (b.ptr, strides, kind + dtype)
            }
        };
        AttentionParams {
            q: self.q.ptr,
            k: self.k.ptr,
            v: self.v.ptr,
            o: self.o.ptr,
            bias,
            q_strides: strides(&self.q),
            k_strides: strides(&self.k),
            v_strides: strides(&self.v),
            o_strides: strides(&self.o),
            bias_strides,
            partial: match (split, &self.workspace) {
                (true, Some(ws)) => ws.ptr + ws.partial_offset() as u64,
                _ => 0,
            },
            counters: match (split, &self.workspace) {
                (true, Some(ws)) => ws.ptr,
                _ => 0,
            },
            splits: if split { plan.key_splits as i32 } else { 1 },
            tiles_per_split: if split {
                plan.tiles_per_split as i32
            } else {
                i32::MAX
            },
            batch: self.batch as i32,
            heads: self.heads as i32,
            lq: self.q_len as i32,
            lk: self.kv_len as i32,
            bias_kind,
            scale_log2: self.scale * std::f32::consts::LOG2_E,
            inv_scale: 1.0 / self.scale,
        }
    }
}

/// Keys per pipeline stage of the split shape (the kernels' `4 * KW`).
fn split_stage_keys(head_dim: usize) -> usize {
    if head_dim == 64 {
        64
    } else {
        128
    }
}

/// One u32 arrival counter per (batch, head, query tile), padded to 16 bytes.
fn counters_bytes(groups: usize) -> usize {
    (groups * 4).div_ceil(16) * 16
}

/// One split's partial result: [16 x D] fp32 O, 16 maxima, 16 sums.
fn partial_bytes(head_dim: usize) -> usize {
    16 * (head_dim + 2) * 4
}

/// The plan `launch_attention` will follow on this GPU; size an [`AttentionWorkspace`] from
/// its `workspace_bytes` and `counter_slots` (or a [`WorkspaceNeed`] over several plans).
pub fn plan_attention(gpu: &Gpu, attention: &Attention) -> Result<AttentionPlan> {
    attention.plan(gpu.kernels().sm_count() as usize)
}

/// Launches the fused attention on the GPU's stream after [`Attention::plan`]. Keys are split
/// across CTAs only when a workspace of the planned size is given; one that is too small is
/// an error rather than a silent slowdown.
pub fn launch_attention(gpu: &Gpu, attention: &Attention) -> Result<()> {
    let plan = plan_attention(gpu, attention)?;
    let split = plan.key_splits > 1 && attention.workspace.is_some();
    if let (true, Some(ws)) = (split, &attention.workspace) {
        if ws.counter_slots < plan.counter_slots {
            return Err(launch_error(format!(
                "workspace has {} arrival counters, the plan needs {}",
                ws.counter_slots, plan.counter_slots
            )));
        }
        let needed = ws.partial_offset().saturating_add(plan.partial_bytes);
        if ws.bytes < needed {
            return Err(launch_error(format!(
                "workspace has {} bytes, the plan needs {needed} ({} counters, then {} bytes of partials)",
                ws.bytes, ws.counter_slots, plan.partial_bytes
            )));
        }
    }
    let kernels = gpu.kernels();
    let function: &CudaFunction = match (plan.shape, attention.head_dim) {
        (AttentionShape::Rows, 16) => &kernels.attention_d16,
        (AttentionShape::Rows, 32) => &kernels.attention_d32,
        (AttentionShape::Rows, _) => &kernels.attention_d64,
        (AttentionShape::SplitKeys, 16) => &kernels.attention_split_d16,
        (AttentionShape::SplitKeys, 32) => &kernels.attention_split_d32,
        (AttentionShape::SplitKeys, _) => &kernels.attention_split_d64,
    };
    let splits = if split { plan.key_splits } else { 1 };
    let grid_x = u32::try_from(plan.q_tiles * splits)
        .map_err(|_| launch_error(format!("{} x {splits} CTAs exceed the grid", plan.q_tiles)))?;
    let cfg = LaunchConfig {
        grid_dim: (grid_x, attention.heads as u32, attention.batch as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let params = attention.params(&plan, split);
    let stream = gpu.stream();
    let mut launch = stream.launch_builder(function);
    launch.arg(&params);
    // SAFETY: the kernel takes one AttentionParams by value; every address it derives was
    // bounds- and alignment-checked by `check`, the workspace size against the plan above.
    unsafe { launch.launch(cfg) }.map_err(|e| launch_error(e.to_string()))?;
    Ok(())
}

/// The official `attention_bias_idxs` of a TinyViT `Attention` with a `window x window`
/// resolution, row-major `[N, N]` with `N = window^2`.
///
/// The official loop numbers offsets `(|dy|, |dx|)` in order of first appearance while
/// iterating `itertools.product` points; the first point (0, 0) already meets every offset, in
/// the order `dy * window + dx`, so that is the index (checked against the loop in the tests).
pub fn tinyvit_bias_indices(window: usize) -> Vec<usize> {
    let n = window * window;
    let mut idxs = Vec::with_capacity(n * n);
    for p1 in 0..n {
        let (y1, x1) = (p1 / window, p1 % window);
        for p2 in 0..n {
            let (y2, x2) = (p2 / window, p2 % window);
            idxs.push(y1.abs_diff(y2) * window + x1.abs_diff(x2));
        }
    }
    idxs
}

/// The dense per-head bias `attention_biases[:, attention_bias_idxs]` ([H, N, N], row-major)
/// from `attention_biases` ([H, window^2] row-major, as in the state dict).
pub fn tinyvit_dense_bias(biases: &[f32], heads: usize, window: usize) -> Result<Vec<f32>> {
    let offsets = window * window;
    if heads == 0 || window == 0 || biases.len() != heads * offsets {
        return Err(Error::Plan(format!(
            "attention_biases has {} values, expected heads {heads} x {offsets} offsets \
             (window {window})",
            biases.len()
        )));
    }
    let idxs = tinyvit_bias_indices(window);
    let mut dense = Vec::with_capacity(heads * idxs.len());
    for head in biases.chunks_exact(offsets) {
        dense.extend(idxs.iter().map(|&i| head[i]));
    }
    Ok(dense)
}
