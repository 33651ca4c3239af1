//! Launcher for `kernels/attention.cu`: fused multi-head attention
//! `O = softmax(scale * Q K^T + bias) V` per (batch, head), fp16 storage, fp32 softmax.
//!
//! Q, K, V and O are described by [`HeadsTensor`]s (base address plus element strides for batch,
//! token and head; the head dimension is contiguous), so Q/K/V can be read straight out of a
//! packed qkv GEMM output and O written as `[B, L, H * D]` for the output projection.

use cudarc::driver::{sys, CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};

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

/// Additive score bias: element `(b, head, query, key)` at
/// `ptr + size * (b * batch_stride + head * head_stride + query * row_stride + key)`.
/// TinyViT's gathered `attention_biases` is `[H, N, N]` shared by every window: batch stride 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionBias {
    /// Device address of element (0, 0, 0, 0), aligned to the element size.
    pub ptr: DevicePtr,
    /// Bytes addressable from `ptr`.
    pub bytes: usize,
    pub dtype: BiasDtype,
    pub batch_stride: usize,
    pub head_stride: usize,
    pub row_stride: usize,
}

impl AttentionBias {
    /// A dense `[heads, q_len, kv_len]` table shared by every batch entry.
    pub fn shared(
        ptr: DevicePtr,
        bytes: usize,
        dtype: BiasDtype,
        q_len: usize,
        kv_len: usize,
    ) -> AttentionBias {
        AttentionBias {
            ptr,
            bytes,
            dtype,
            batch_stride: 0,
            head_stride: q_len * kv_len,
            row_stride: kv_len,
        }
    }
}

/// Scratch for splitting the keys of one attention across CTAs (see [`AttentionPlan`]): a
/// 16-byte aligned device buffer of at least `AttentionPlan::workspace_bytes`, **zeroed once
/// after allocation**. The kernel leaves it zeroed again, so one workspace serves any number of
/// launches (and graph replays) issued one after another on the same stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionWorkspace {
    pub ptr: DevicePtr,
    pub bytes: usize,
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
    /// Workspace bytes the split needs (0 when `key_splits == 1`).
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
            let elem = bias.dtype.bytes();
            if bias.ptr % elem as u64 != 0 {
                return Err(launch_error(format!(
                    "bias address {:#x} is not aligned to {elem} bytes",
                    bias.ptr
                )));
            }
            check_extent(
                "bias",
                bias.bytes,
                elem,
                [
                    (self.batch, bias.batch_stride),
                    (self.heads, bias.head_stride),
                    (self.q_len, bias.row_stride),
                ],
                self.kv_len,
            )?;
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
        let workspace_bytes = if key_splits > 1 {
            counters_bytes(groups) + groups * key_splits * partial_bytes(self.head_dim)
        } else {
            0
        };
        Ok(AttentionPlan {
            shape: AttentionShape::SplitKeys,
            q_tiles,
            key_splits,
            tiles_per_split,
            workspace_bytes,
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
        let (bias, bias_strides, bias_kind) = match &self.bias {
            None => (0, [0; 3], 0),
            Some(b) => (
                b.ptr,
                [
                    b.batch_stride as i64,
                    b.head_stride as i64,
                    b.row_stride as i64,
                ],
                match b.dtype {
                    BiasDtype::F32 => 1,
                    BiasDtype::F16 => 2,
                },
            ),
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
                (true, Some(ws)) => {
                    ws.ptr + counters_bytes(self.batch * self.heads * plan.q_tiles) as u64
                }
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

/// The GPU's SM count (sizes the grid).
pub fn sm_count(gpu: &Gpu) -> Result<usize> {
    let attribute = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
    let count = gpu
        .stream()
        .context()
        .attribute(attribute)
        .map_err(Error::cuda("querying the SM count"))?;
    Ok(count.max(1) as usize)
}

/// The plan `launch_attention` will follow on this GPU; size an [`AttentionWorkspace`] from
/// its `workspace_bytes`.
pub fn plan_attention(gpu: &Gpu, attention: &Attention) -> Result<AttentionPlan> {
    attention.plan(sm_count(gpu)?)
}

/// Launches the fused attention on the GPU's stream after [`Attention::plan`]. Keys are split
/// across CTAs only when a workspace of the planned size is given; one that is too small is
/// an error rather than a silent slowdown.
pub fn launch_attention(gpu: &Gpu, attention: &Attention) -> Result<()> {
    let plan = plan_attention(gpu, attention)?;
    let split = plan.key_splits > 1 && attention.workspace.is_some();
    if let (true, Some(ws)) = (split, &attention.workspace) {
        if ws.bytes < plan.workspace_bytes {
            return Err(launch_error(format!(
                "workspace has {} bytes, the plan needs {}",
                ws.bytes, plan.workspace_bytes
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
