//! Launchers for `kernels/gemm.cu`: tensor-core GEMM with a fused epilogue,
//! `Y = act(alpha * X · W^T + bias) (+ R)` in fp16 with fp32 accumulation, W in PyTorch Linear
//! layout `[out, in]`, optionally batched with strides (grid.y).
//!
//! Operand rules (checked; violations are `Error::Launch`, never a panic or a fault):
//! - X `[batch][M, K]` and W `[batch][N, K]`: 16-byte aligned, row and batch strides multiples
//!   of 8 elements (the kernel copies 16-byte chunks), K % 8 == 0.
//! - Y and the residual `[batch][M, N]`: 2-byte aligned, any strides >= N; 16-byte aligned rows
//!   take the vectorised epilogue. Y may be the residual (in-place `x += f(x)`); Y must not
//!   overlap X or W.
//! - bias: `[N]` fp32 (folded BatchNorm biases keep their precision), shared by all batches.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

pub use super::gemm_tune::{
    select_gemm_tile_for, split_k_family, split_k_segment, split_k_segments, GemmChoice, GemmKey,
    GemmTuner, DEFAULT_BLOCKS_PER_SM,
};
use super::window::WindowGeometry;
use super::{launch_error, DeviceRegion};
use crate::error::Result;
use crate::gpu::Gpu;

const HALF: usize = 2;

/// The activation applied in the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `nn.GELU()`: the exact erf form `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    /// `nn.ReLU()`.
    Relu,
}

impl Activation {
    /// The code the kernels read (`finesam::Activation` in kernels/dense.cuh).
    pub(crate) fn code(self) -> i32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::Relu => 2,
        }
    }
}

/// A fp16 matrix (or a batch of them) in device memory: rows of `row_stride` elements, batch
/// items `batch_stride` elements apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matrix {
    /// Where the matrix lives and how many bytes are valid there.
    pub region: DeviceRegion,
    /// Elements between the starts of consecutive rows (>= the column count).
    pub row_stride: usize,
    /// Elements between consecutive batch items (unused when the batch is 1).
    pub batch_stride: usize,
}

impl Matrix {
    /// A densely packed matrix with `cols` columns (row stride = cols), no batch stride.
    pub fn packed(region: DeviceRegion, cols: usize) -> Matrix {
        Matrix {
            region,
            row_stride: cols,
            batch_stride: 0,
        }
    }

    /// The same matrix with `row_stride` elements between rows (e.g. a column slice of a
    /// wider tensor: offset `region.ptr` by the first column).
    pub fn with_row_stride(self, row_stride: usize) -> Matrix {
        Matrix { row_stride, ..self }
    }

    /// The same matrix with `batch_stride` elements between batch items.
    pub fn with_batch_stride(self, batch_stride: usize) -> Matrix {
        Matrix {
            batch_stride,
            ..self
        }
    }

    /// Bytes spanned by `batch` items of `rows x cols` (None on overflow).
    pub fn span_bytes(&self, rows: usize, cols: usize, batch: usize) -> Option<usize> {
        if rows == 0 || cols == 0 || batch == 0 {
            return Some(0);
        }
        let elements = (batch - 1)
            .checked_mul(self.batch_stride)?
            .checked_add((rows - 1).checked_mul(self.row_stride)?)?
            .checked_add(cols)?;
        elements.checked_mul(HALF)
    }

    /// Rows and batch items start on 16-byte boundaries.
    fn rows_16b_aligned(&self) -> bool {
        self.region.ptr % 16 == 0 && self.row_stride % 8 == 0 && self.batch_stride % 8 == 0
    }

    /// Checks a `[batch][rows, cols]` operand. `chunked`: the kernel reads it with cp.async in
    /// 16-byte chunks along the rows (X, W); otherwise element-wise or by 16-byte rows where
    /// aligned (Y, residual).
    fn check_operand(
        &self,
        kernel: &'static str,
        what: &str,
        (rows, cols, batch): (usize, usize, usize),
        chunked: bool,
    ) -> Result<()> {
        self.check_strides(kernel, what, cols)?;
        if chunked && (self.row_stride % 8 != 0 || (batch > 1 && self.batch_stride % 8 != 0)) {
            return Err(launch_error(
                kernel,
                format!(
                    "{what}: row stride {} and batch stride {} must be multiples of 8 elements",
                    self.row_stride, self.batch_stride
                ),
            ));
        }
        let align = if chunked { 16 } else { HALF as u64 };
        self.region
            .check(kernel, what, self.span_bytes(rows, cols, batch), align)
    }

    fn check_strides(&self, kernel: &'static str, what: &str, cols: usize) -> Result<()> {
        if self.row_stride < cols {
            return Err(launch_error(
                kernel,
                format!(
                    "{what}: row stride {} is less than its {cols} columns",
                    self.row_stride
                ),
            ));
        }
        if i64::try_from(self.row_stride).is_err() || i64::try_from(self.batch_stride).is_err() {
            return Err(launch_error(kernel, format!("{what}: stride too large")));
        }
        // A zero batch stride is allowed: inputs broadcast; `epilogue_params` keeps output
        // items apart.
        Ok(())
    }
}

/// Where the residual joins the epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResidualOrder {
    /// `act(v) + r`: a transformer's `x + mlp(x)`.
    #[default]
    AfterActivation,
    /// `act(v + r)`: TinyViT's MBConv (`x += shortcut; x = act3(x)`).
    BeforeActivation,
}

/// A residual added in the epilogue: `[batch][M, N]` fp16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residual {
    /// The residual matrix (may be the output itself).
    pub matrix: Matrix,
    /// Before or after the activation.
    pub order: ResidualOrder,
}

/// What happens to the accumulator before it is stored:
/// `y = act(alpha * acc + bias) + r` or `act(alpha * acc + bias + r)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epilogue {
    /// Scales the product (e.g. attention's 1/sqrt(d)).
    pub alpha: f32,
    /// `[N]` fp32, shared by all batch items.
    pub bias: Option<DeviceRegion>,
    /// The activation.
    pub activation: Activation,
    /// An optional residual.
    pub residual: Option<Residual>,
}

impl Default for Epilogue {
    fn default() -> Epilogue {
        Epilogue {
            alpha: 1.0,
            bias: None,
            activation: Activation::None,
            residual: None,
        }
    }
}

/// Problem size: `batch` products of `[M, K] x [K, N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmProblem {
    /// Output rows (tokens, or pixels of a 1x1 convolution).
    pub m: usize,
    /// Output columns (output features / channels).
    pub n: usize,
    /// Reduction length (input features); a multiple of 8.
    pub k: usize,
    /// Independent products (grid.y), at most 65535.
    pub batch: usize,
}

impl GemmProblem {
    /// One product of `[m, k] x [k, n]`.
    pub fn new(m: usize, n: usize, k: usize) -> GemmProblem {
        GemmProblem { m, n, k, batch: 1 }
    }

    /// Multiply-adds x 2.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }
}

/// The block tile configurations compiled in kernels/gemm.cu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GemmTile {
    /// 128 x 128, 8 warps (64x32 each), 4 stages: the throughput tile for large problems.
    T128x128,
    /// 128 x 64, 4 warps (64x32 each), 4 stages.
    T128x64,
    /// 64 x 64, 4 warps (32x32 each), 4 stages: more blocks for small problems.
    T64x64,
}

impl GemmTile {
    /// Number of configurations.
    pub const COUNT: usize = 3;
    /// Every configuration, in kernel-table order.
    pub const ALL: [GemmTile; GemmTile::COUNT] =
        [GemmTile::T128x128, GemmTile::T128x64, GemmTile::T64x64];

    /// Position in the kernel tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Block tile rows (M).
    pub fn bm(self) -> usize {
        match self {
            GemmTile::T128x128 | GemmTile::T128x64 => 128,
            GemmTile::T64x64 => 64,
        }
    }

    /// Block tile columns (N).
    pub fn bn(self) -> usize {
        match self {
            GemmTile::T128x128 => 128,
            GemmTile::T128x64 | GemmTile::T64x64 => 64,
        }
    }

    /// Threads per block.
    pub fn threads(self) -> u32 {
        match self {
            GemmTile::T128x128 => 256,
            GemmTile::T128x64 | GemmTile::T64x64 => 128,
        }
    }

    /// Dynamic shared memory: the cp.async ring (4 stages of (BM + BN) rows of 40 halves) or
    /// the fp32 epilogue staging tile, whichever is larger (static_assert'ed in gemm.cu).
    pub fn smem_bytes(self) -> u32 {
        let (bm, bn) = (self.bm() as u32, self.bn() as u32);
        let ring = 4 * (bm + bn) * 40 * 2;
        let staging = bm * (bn + 8) * 4;
        ring.max(staging)
    }

    /// Blocks launched for a problem.
    pub fn blocks(self, m: usize, n: usize, batch: usize) -> usize {
        m.div_ceil(self.bm()) * n.div_ceil(self.bn()) * batch
    }

    pub(crate) fn gemm_kernel(self) -> &'static str {
        match self {
            GemmTile::T128x128 => "gemm_128x128",
            GemmTile::T128x64 => "gemm_128x64",
            GemmTile::T64x64 => "gemm_64x64",
        }
    }

    pub(crate) fn splitk_kernel(self) -> &'static str {
        match self {
            GemmTile::T128x128 => "gemm_splitk_128x128",
            GemmTile::T128x64 => "gemm_splitk_128x64",
            GemmTile::T64x64 => "gemm_splitk_64x64",
        }
    }

    pub(crate) fn conv_kernel(self) -> &'static str {
        match self {
            GemmTile::T128x128 => "conv_igemm_128x128",
            GemmTile::T128x64 => "conv_igemm_128x64",
            GemmTile::T64x64 => "conv_igemm_64x64",
        }
    }
}

/// Picks the tile for an `m x n` output (times `batch`) on a GPU with `sm_count` SMs, with the
/// sm_90 occupancy ([`DEFAULT_BLOCKS_PER_SM`]): the wave-quantisation model of
/// [`select_gemm_tile_for`]. Large problems get 128x128; problems that would leave SMs idle
/// get smaller tiles. [`launch_gemm`] uses the measured choice when one is cached
/// ([`GemmTuner`]) and the model with the device's own occupancy otherwise.
pub fn select_gemm_tile(m: usize, n: usize, batch: usize, sm_count: u32) -> GemmTile {
    select_gemm_tile_for(m, n, batch, sm_count, DEFAULT_BLOCKS_PER_SM)
}

/// Mirrors `GemmParams` in kernels/gemm.cu (passed by value; same field order).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct GemmParams {
    pub(crate) x: u64,
    pub(crate) w: u64,
    bias: u64,
    residual: u64,
    y: u64,
    ldx: i64,
    pub(crate) ldw: i64,
    ldr: i64,
    ldy: i64,
    bsx: i64,
    bsw: i64,
    bsr: i64,
    bsy: i64,
    m: i32,
    n: i32,
    k: i32,
    act: i32,
    residual_before_act: i32,
    vec_out: i32,
    alpha: f32,
    pub(crate) conv: ConvGeometry,
    scatter: WindowScatter,
    split: SplitK,
}

/// The split-K fields of `GemmParams` (zero for the other kernels).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct SplitK {
    ws: u64,
    counters: u64,
    seg_k: i32,
    segments: i32,
    splits: i32,
    ldws: i32,
}

/// The window-scatter fields of `GemmParams` (zero: rows are stored in order).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct WindowScatter {
    win: i32,
    map_h: i32,
    map_w: i32,
    windows_y: i32,
    windows_x: i32,
}

/// The implicit-GEMM convolution fields of `GemmParams` (zero for a plain GEMM).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct ConvGeometry {
    pub(crate) h: i32,
    pub(crate) w: i32,
    pub(crate) cin: i32,
    pub(crate) kh: i32,
    pub(crate) kw: i32,
    pub(crate) stride: i32,
    pub(crate) pad: i32,
    pub(crate) ho: i32,
    pub(crate) wo: i32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for GemmParams {}

fn to_i32(kernel: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| launch_error(kernel, format!("{what} = {v} exceeds i32")))
}

/// Checks the epilogue and output operands shared by GEMM and convolution and fills the
/// corresponding parameter fields (X and W are the caller's).
pub(crate) fn epilogue_params(
    kernel: &'static str,
    problem: &GemmProblem,
    y: &Matrix,
    epilogue: &Epilogue,
) -> Result<GemmParams> {
    epilogue_params_rows(kernel, problem, problem.m, y, epilogue)
}

/// [`epilogue_params`] for an output (and residual) of `out_rows` rows per batch item.
fn epilogue_params_rows(
    kernel: &'static str,
    problem: &GemmProblem,
    out_rows: usize,
    y: &Matrix,
    epilogue: &Epilogue,
) -> Result<GemmParams> {
    let GemmProblem { n, k, batch, .. } = *problem;
    let m = problem.m;
    if m == 0 || n == 0 || k == 0 || batch == 0 {
        return Err(launch_error(
            kernel,
            format!("empty problem M={m} N={n} K={k} batch={batch}"),
        ));
    }
    if batch > 65535 {
        return Err(launch_error(kernel, format!("batch {batch} exceeds 65535")));
    }
    if !epilogue.alpha.is_finite() {
        return Err(launch_error(kernel, "alpha is not finite"));
    }
    y.check_operand(kernel, "output Y", (out_rows, n, batch), false)?;
    if batch > 1 && y.batch_stride < y.span_bytes(out_rows, n, 1).unwrap_or(usize::MAX) / HALF {
        return Err(launch_error(
            kernel,
            format!(
                "output Y: batch stride {} overlaps the previous item ({m} rows x {n})",
                y.batch_stride
            ),
        ));
    }
    if let Some(bias) = &epilogue.bias {
        bias.check(kernel, "bias", n.checked_mul(4), 4)?;
    }
    let mut vec_out = y.rows_16b_aligned();
    let mut params = GemmParams {
        y: y.region.ptr,
        ldy: y.row_stride as i64,
        bsy: y.batch_stride as i64,
        m: to_i32(kernel, "M", m)?,
        n: to_i32(kernel, "N", n)?,
        k: to_i32(kernel, "K", k)?,
        act: epilogue.activation.code(),
        alpha: epilogue.alpha,
        bias: epilogue.bias.map_or(0, |b| b.ptr),
        ..GemmParams::default()
    };
    if let Some(residual) = &epilogue.residual {
        let r = &residual.matrix;
        r.check_operand(kernel, "residual", (out_rows, n, batch), false)?;
        vec_out &= r.rows_16b_aligned();
        params.residual = r.region.ptr;
        params.ldr = r.row_stride as i64;
        params.bsr = r.batch_stride as i64;
        params.residual_before_act = i32::from(residual.order == ResidualOrder::BeforeActivation);
    }
    params.vec_out = i32::from(vec_out);
    Ok(params)
}

/// The operands of a GEMM (see the module documentation for their rules).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmArgs {
    /// `[batch][M, K]`.
    pub x: Matrix,
    /// `[batch][N, K]` (PyTorch Linear layout); batch stride 0 shares one W.
    pub w: Matrix,
    /// `[batch][M, N]`.
    pub y: Matrix,
    /// Scale, bias, activation, residual.
    pub epilogue: Epilogue,
}

/// Validates a GEMM launch (rows scattered by `window` if given) and returns its kernel
/// parameters.
fn gemm_params(
    problem: &GemmProblem,
    args: &GemmArgs,
    window: Option<&WindowGeometry>,
) -> Result<GemmParams> {
    const KERNEL: &str = "gemm";
    let GemmArgs { x, w, y, epilogue } = args;
    let mut params = match window {
        None => epilogue_params(KERNEL, problem, y, epilogue)?,
        Some(g) => {
            let padded = g.windows().checked_mul(g.tokens());
            if g.window == 0
                || problem.batch != 1
                || padded != Some(problem.m)
                || g.channels != problem.n
            {
                return Err(launch_error(
                    KERNEL,
                    format!("window scatter {g:?} does not match the problem {problem:?}"),
                ));
            }
            let pixels = g
                .batch
                .checked_mul(g.height)
                .and_then(|p| p.checked_mul(g.width));
            let pixels = pixels.ok_or_else(|| launch_error(KERNEL, "window map overflows"))?;
            let mut params = epilogue_params_rows(KERNEL, problem, pixels, y, epilogue)?;
            let (windows_y, windows_x) = g.grid();
            params.scatter = WindowScatter {
                win: to_i32(KERNEL, "window", g.window)?,
                map_h: to_i32(KERNEL, "map height", g.height)?,
                map_w: to_i32(KERNEL, "map width", g.width)?,
                windows_y: to_i32(KERNEL, "windows", windows_y)?,
                windows_x: to_i32(KERNEL, "windows", windows_x)?,
            };
            params
        }
    };
    let GemmProblem { m, n, k, batch } = *problem;
    if k % 8 != 0 {
        return Err(launch_error(
            KERNEL,
            format!("K = {k} must be a multiple of 8 (16-byte rows)"),
        ));
    }
    x.check_operand(KERNEL, "input X", (m, k, batch), true)?;
    w.check_operand(KERNEL, "weight W", (n, k, batch), true)?;
    params.x = x.region.ptr;
    params.w = w.region.ptr;
    params.ldx = x.row_stride as i64;
    params.ldw = w.row_stride as i64;
    params.bsx = x.batch_stride as i64;
    params.bsw = w.batch_stride as i64;
    Ok(params)
}

/// Checks a GEMM's arguments exactly as [`launch_gemm`] does, without a GPU.
pub fn check_gemm(problem: &GemmProblem, args: &GemmArgs) -> Result<()> {
    gemm_params(problem, args, None).map(|_| ())
}

/// A GEMM whose M rows are TinyViT's window-partitioned tokens of `window` (M = windows x
/// tokens, N = `window.channels`, batch 1): row m is stored at its pixel of the unpartitioned
/// `[batch, height, width, N]` map Y, padding tokens are dropped, and the residual is read at
/// the same pixel. With a residual after the (no) activation this is the attention's proj,
/// window reverse, crop and `res_x + x` of `TinyViTBlock.forward` in one launch.
pub fn launch_gemm_window_scatter(
    gpu: &Gpu,
    window: &WindowGeometry,
    problem: &GemmProblem,
    args: &GemmArgs,
) -> Result<()> {
    let params = gemm_params(problem, args, Some(window))?;
    launch_tuned(gpu, problem, &params)
}

/// Checks a window-scatter GEMM's arguments as [`launch_gemm_window_scatter`] does.
pub fn check_gemm_window_scatter(
    window: &WindowGeometry,
    problem: &GemmProblem,
    args: &GemmArgs,
) -> Result<()> {
    gemm_params(problem, args, Some(window)).map(|_| ())
}

/// `Y = act(alpha * X · W^T + bias) (+ R)` with the kernel the GPU's [`GemmTuner`] chose for
/// this shape (measured while tuning, else the model of [`select_gemm_tile_for`]); shapes of
/// [`split_k_family`] run the split-K kernels.
pub fn launch_gemm(gpu: &Gpu, problem: &GemmProblem, args: &GemmArgs) -> Result<()> {
    let params = gemm_params(problem, args, None)?;
    launch_tuned(gpu, problem, &params)
}

/// The key the tuner files this launch under (validates the arguments like [`launch_gemm`]).
pub fn gemm_key(problem: &GemmProblem, args: &GemmArgs) -> Result<GemmKey> {
    Ok(key_of(problem, &gemm_params(problem, args, None)?))
}

fn key_of(problem: &GemmProblem, params: &GemmParams) -> GemmKey {
    GemmKey {
        m_tiles: problem.m.div_ceil(64),
        n: problem.n,
        k: problem.k,
        batch: problem.batch,
        activation: params.act,
        bias: params.bias != 0,
        residual: match (params.residual, params.residual_before_act) {
            (0, _) => 0,
            (_, 0) => 1,
            _ => 2,
        },
        vec_out: params.vec_out != 0,
        window: (
            params.scatter.win,
            params.scatter.map_h,
            params.scatter.map_w,
        ),
    }
}

fn launch_tuned(gpu: &Gpu, problem: &GemmProblem, params: &GemmParams) -> Result<()> {
    let key = key_of(problem, params);
    let split = key.split_k();
    let launch = |choice: GemmChoice| launch_choice(gpu, choice, split, problem, params);
    let choice = gpu.gemm_tuner().choose(gpu, &key, launch)?;
    launch(choice)
}

/// Issues `choice`: the split-K kernel for split-K shapes once a plan reserved the workspace
/// ([`GemmTuner::reserve_split_k`]), else the plain kernel. Nothing is allocated here, so a
/// launch's kernel (and its result bits) never depends on whether it is captured or eager.
fn launch_choice(
    gpu: &Gpu,
    choice: GemmChoice,
    split: bool,
    problem: &GemmProblem,
    params: &GemmParams,
) -> Result<()> {
    if split {
        if let Some(ws) = gpu.gemm_tuner().reserved_split_k_workspace() {
            return launch_split(gpu, choice.tile, choice.splits, problem, params, ws);
        }
    }
    launch_plain(gpu, choice.tile, problem, params)
}

/// The single-pass GEMM kernel of `tile` on validated parameters.
fn launch_plain(
    gpu: &Gpu,
    tile: GemmTile,
    problem: &GemmProblem,
    params: &GemmParams,
) -> Result<()> {
    let f = &gpu.kernels().gemm[tile.index()];
    launch_tiled(gpu, f, tile.gemm_kernel(), tile, problem, params, 1)
}

/// [`launch_gemm`] with an explicit tile and the plain (single-pass) kernel (tests, tuning).
pub fn launch_gemm_tile(
    gpu: &Gpu,
    tile: GemmTile,
    problem: &GemmProblem,
    args: &GemmArgs,
) -> Result<()> {
    let params = gemm_params(problem, args, None)?;
    launch_plain(gpu, tile, problem, &params)
}

/// [`launch_gemm`] through the split-K kernel with an explicit tile and split count (1 ..=
/// [`split_k_segments`]`(K)`), for any shape whose partials fit the GPU's split-K workspace
/// (allocated on first use; not during graph capture). The result is bit-identical for every
/// tile and split count (K is summed in the same fixed segments), but differs in rounding from
/// the single-pass kernel unless K fits one segment.
pub fn launch_gemm_split(
    gpu: &Gpu,
    tile: GemmTile,
    splits: usize,
    problem: &GemmProblem,
    args: &GemmArgs,
) -> Result<()> {
    let params = gemm_params(problem, args, None)?;
    let ws = gpu.gemm_tuner().split_k_workspace(gpu)?.ok_or_else(|| {
        launch_error(
            "gemm_splitk",
            "no split-K workspace: reserve it (GemmTuner::reserve_split_k) before capture",
        )
    })?;
    launch_split(gpu, tile, splits, problem, &params, ws)
}

/// Checks the split-K geometry of a launch against a workspace of `ws_floats` partials and
/// `ws_counters` counters and returns the split fields (addresses left 0).
fn split_params(
    tile: GemmTile,
    splits: usize,
    problem: &GemmProblem,
    (ws_floats, ws_counters): (usize, usize),
) -> Result<SplitK> {
    const KERNEL: &str = "gemm_splitk";
    let GemmProblem { m, n, k, batch } = *problem;
    let seg_k = split_k_segment(k);
    let segments = split_k_segments(k);
    if splits == 0 || splits > segments {
        return Err(launch_error(
            KERNEL,
            format!("{splits} splits: K = {k} has {segments} segments of {seg_k}"),
        ));
    }
    let ldws = n.div_ceil(2) * 2;
    let floats = segments
        .checked_mul(batch)
        .and_then(|v| v.checked_mul(m))
        .and_then(|v| v.checked_mul(ldws));
    if floats.is_none_or(|f| f > ws_floats) {
        return Err(launch_error(
            KERNEL,
            format!("{segments} segments of M={m} x N={n} x batch {batch} exceed the workspace of {ws_floats} floats"),
        ));
    }
    let tiles = tile.blocks(m, n, batch);
    if tiles > ws_counters {
        return Err(launch_error(
            KERNEL,
            format!("{tiles} output tiles exceed the workspace's {ws_counters} counters"),
        ));
    }
    Ok(SplitK {
        ws: 0,
        counters: 0,
        seg_k: to_i32(KERNEL, "segment", seg_k)?,
        segments: to_i32(KERNEL, "segments", segments)?,
        splits: to_i32(KERNEL, "splits", splits)?,
        ldws: to_i32(KERNEL, "N", ldws)?,
    })
}

/// Checks a split-K launch (tile, splits) against the workspace the GPU reserves, without a
/// GPU.
pub fn check_gemm_split(
    tile: GemmTile,
    splits: usize,
    problem: &GemmProblem,
    args: &GemmArgs,
) -> Result<()> {
    gemm_params(problem, args, None)?;
    let capacity = (
        super::gemm_tune::SPLIT_K_WORKSPACE_FLOATS,
        super::gemm_tune::SPLIT_K_MAX_TILES,
    );
    split_params(tile, splits, problem, capacity).map(|_| ())
}

fn launch_split(
    gpu: &Gpu,
    tile: GemmTile,
    splits: usize,
    problem: &GemmProblem,
    params: &GemmParams,
    (ws, ws_floats, counters, ws_counters): (u64, usize, u64, usize),
) -> Result<()> {
    let mut params = *params;
    if params.scatter.win != 0 {
        return Err(launch_error(
            "gemm_splitk",
            "split-K does not scatter windows",
        ));
    }
    params.split = SplitK {
        ws,
        counters,
        ..split_params(tile, splits, problem, (ws_floats, ws_counters))?
    };
    let f = &gpu.kernels().gemm_splitk[tile.index()];
    launch_tiled(
        gpu,
        f,
        tile.splitk_kernel(),
        tile,
        problem,
        &params,
        splits as u32,
    )
}

/// Launches a gemm.cu kernel (GEMM, implicit-GEMM convolution or split-K GEMM with `splits`
/// as grid.z; 1 for the others) on validated parameters.
pub(crate) fn launch_tiled(
    gpu: &Gpu,
    f: &cudarc::driver::CudaFunction,
    name: &'static str,
    tile: GemmTile,
    problem: &GemmProblem,
    params: &GemmParams,
    splits: u32,
) -> Result<()> {
    let tiles = problem.m.div_ceil(tile.bm()) * problem.n.div_ceil(tile.bn());
    let grid_x = u32::try_from(tiles)
        .ok()
        .filter(|&t| t <= i32::MAX as u32)
        .ok_or_else(|| launch_error(name, format!("{tiles} tiles exceed the grid limit")))?;
    let cfg = LaunchConfig {
        grid_dim: (grid_x, problem.batch as u32, splits),
        block_dim: (tile.threads(), 1, 1),
        shared_mem_bytes: tile.smem_bytes(),
    };
    let mut launch = gpu.stream().launch_builder(f);
    launch.arg(params);
    // SAFETY: the parameter struct mirrors the kernel's; every pointer was checked to be
    // non-null, aligned and large enough for the extents the kernel touches.
    unsafe { launch.launch(cfg) }.map_err(|e| launch_error(name, e.to_string()))?;
    Ok(())
}
