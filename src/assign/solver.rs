//! GPU launchers for `assign_solve` (kernels/assign.cu) and the workspace that keeps a solve
//! free of allocations: [`Assigner`] enqueues solves on the GPU's stream and leaves the results
//! in device buffers; [`Assigner::read`] downloads them only when the caller asks.

use bytemuck::{Pod, Zeroable};
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::{
    status_error, Algorithm, AssignConfig, AssignError, Assignment, Status, MAX_SIDE,
    SHORTEST_PATH_MAX_ENTRIES, SHORTEST_PATH_MAX_OBJECTS, SPARSE_CLUSTER_BLOCKS,
    SPARSE_MAX_BLOCK_THREADS, SPARSE_MAX_SIDE, SPARSE_MIN_SIDE, SPARSE_SLOTS,
};
use crate::error::{Error, Result};
use crate::gpu::{DeviceBuffer, DevicePtr, Gpu};

/// Shared-memory bytes the kernel needs per object (4 x i64 + 5 x i32 arrays).
pub(crate) const SMEM_PER_OBJECT: usize = 52;

/// Dynamic shared memory of one block: the auction state for `capacity` objects (rounded up
/// to 16 bytes, `state_bytes` in kernels/assign.cu), then room for `q_elems` quantised costs.
pub(crate) fn solve_smem_bytes(capacity: usize, q_elems: usize) -> usize {
    (capacity * SMEM_PER_OBJECT).next_multiple_of(16) + q_elems * 4
}

/// Candidate-cache widths tried when the quantised costs do not fit shared memory (each a
/// power of two, see `bid_scan` in kernels/assign.cu).
const CACHE_WIDTHS: [usize; 4] = [32, 16, 8, 4];

/// Shared-memory bytes of the bid-candidate cache: per person `width` candidates (an i64
/// benefit and an i32 object each) and an i64 bound.
fn cache_bytes(persons: usize, width: usize) -> usize {
    persons * (width * 12 + 8)
}

/// Slots between two persons' kept entries (the kernel's `kSparseStride`: one padding slot keeps
/// consecutive rows on different shared-memory banks).
const SPARSE_STRIDE: usize = SPARSE_SLOTS + 1;

/// Shared-memory bytes of the sparse path for square matrices of side up to `side`: per person
/// its kept entries (an i64 key each: benefit and rotated position; a u16 object each), its
/// floor and its dense flag.
fn sparse_region_bytes(side: usize) -> usize {
    side * (SPARSE_STRIDE * 10 + 8)
}

/// Mirrors `AssignProblem` in kernels/assign.cu: one matrix of a ragged batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct AssignProblem {
    /// Element offset of the matrix in the cost buffer.
    pub cost_offset: u64,
    /// Element offset of its quantised copy in the scratch buffer (needs rows * cols i32).
    pub scratch_offset: u64,
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub cols: u32,
    /// Row stride in elements.
    pub ld: u32,
    /// Offset of its rows in `row_to_col`.
    pub row_offset: u32,
    /// Offset of its columns in `col_to_row`.
    pub col_offset: u32,
    /// Zero.
    pub pad: u32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for AssignProblem {}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct AssignUniform {
    count: u32,
    rows: u32,
    cols: u32,
    ld: u32,
    stride: u64,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for AssignUniform {}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct AssignParams {
    theta: u32,
    levels: u32,
    max_rounds: u32,
    capacity: u32,
    /// Quantised costs the shared memory holds after the state (0: they live in `scratch`).
    q_capacity: u32,
    /// Bid candidates per person kept after the state when the costs live in `scratch`.
    cache_width: u32,
    /// Persons the candidate cache was sized for.
    cache_persons: u32,
    /// 1: matrices selected by `uses_shortest_path` are solved by shortest augmenting paths.
    shortest_path: u32,
    /// Square matrices up to this side take the sparse path (`uses_sparse`); 0: none.
    sparse_persons: u32,
    /// 1: the blocks of a sparse matrix's cluster race `RACE_VARIANTS` (`AssignConfig::race`).
    race: u32,
}

// SAFETY: plain-old-data with the kernel's layout.
unsafe impl DeviceRepr for AssignParams {}

/// Mirrors `AssignInfo`: what the kernel reports per matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub(crate) struct AssignInfo {
    pub total: f64,
    pub quantum: f64,
    pub status: u32,
    pub rounds: u32,
    pub phases: u32,
    pub unassigned: u32,
    /// Thread 0's clock64 cycles per stage (see [`SolveProfile`]).
    pub cycles: [u32; 10],
    /// Kernel globaltimer nanoseconds from entry to the result write.
    pub ns: u32,
    /// 0 auction, 1 shortest path ([`Algorithm`]).
    pub algorithm: u32,
    /// The race variant that produced the result (`Assignment::variant`).
    pub variant: u32,
    pub pad: u32,
}

/// Where one solve's time went inside the kernel (diagnostics; from `assign_solve`'s thread 0,
/// SM clock cycles between stage marks, so stages sum to the kernel's in-block time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SolveProfile {
    /// Pass 1 over the costs (range, flags); the shortest-path solver's setup too.
    pub scan_cycles: u32,
    /// Pass 2 (quantise) and the state initialisation.
    pub quantise_cycles: u32,
    /// The sparse path's selection of kept entries.
    pub select_cycles: u32,
    /// Per-phase bookkeeping: price shift (min reduction, only once a price reached 2^48) and
    /// lambda (min reduction).
    pub phase_cycles: u32,
    /// The first round of each phase (a full scan per person, eps-CS check, bids).
    pub forward_first_cycles: u32,
    /// Later forward rounds run by the whole block (resolve + bids).
    pub forward_cycles: u32,
    /// Later forward rounds of 2..16 bidders, run by warp 0 alone (sparse path).
    pub small_cycles: u32,
    /// Single-bidder displacement chains (warp 0).
    pub chain_cycles: u32,
    /// Reverse parts (rectangular only), or the sparse path's final check and what follows it.
    pub reverse_cycles: u32,
    /// The final sum and writes.
    pub finish_cycles: u32,
    /// Kernel time from the block's entry to its result write, globaltimer nanoseconds.
    pub ns: u32,
}

impl SolveProfile {
    fn from_info(info: &AssignInfo) -> SolveProfile {
        let c = info.cycles;
        SolveProfile {
            scan_cycles: c[0],
            quantise_cycles: c[1],
            select_cycles: c[2],
            phase_cycles: c[3],
            forward_first_cycles: c[4],
            forward_cycles: c[5],
            small_cycles: c[6],
            chain_cycles: c[7],
            reverse_cycles: c[8],
            finish_cycles: c[9],
            ns: info.ns,
        }
    }

    /// All stages' cycles.
    pub fn total_cycles(&self) -> u64 {
        [
            self.scan_cycles,
            self.quantise_cycles,
            self.select_cycles,
            self.phase_cycles,
            self.forward_first_cycles,
            self.forward_cycles,
            self.small_cycles,
            self.chain_cycles,
            self.reverse_cycles,
            self.finish_cycles,
        ]
        .iter()
        .map(|&c| c as u64)
        .sum()
    }
}

/// A row-major f32 cost matrix in device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMatrix {
    /// Address of element (0, 0).
    pub ptr: DevicePtr,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride in elements (>= cols).
    pub ld: usize,
}

impl DeviceMatrix {
    /// A densely packed matrix (ld = cols).
    pub fn new(ptr: DevicePtr, rows: usize, cols: usize) -> DeviceMatrix {
        DeviceMatrix {
            ptr,
            rows,
            cols,
            ld: cols,
        }
    }
}

/// `count` equally shaped matrices, `stride` elements apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceBatch {
    /// Address of the first matrix.
    pub ptr: DevicePtr,
    /// Matrices.
    pub count: usize,
    /// Rows of each.
    pub rows: usize,
    /// Columns of each.
    pub cols: usize,
    /// Row stride in elements (>= cols).
    pub ld: usize,
    /// Elements from one matrix to the next (>= (rows - 1) * ld + cols).
    pub stride: usize,
}

impl DeviceBatch {
    /// `count` densely packed `rows x cols` matrices back to back.
    pub fn packed(ptr: DevicePtr, count: usize, rows: usize, cols: usize) -> DeviceBatch {
        DeviceBatch {
            ptr,
            count,
            rows,
            cols,
            ld: cols,
            stride: rows * cols,
        }
    }

    fn single(m: &DeviceMatrix) -> DeviceBatch {
        DeviceBatch {
            ptr: m.ptr,
            count: 1,
            rows: m.rows,
            cols: m.cols,
            ld: m.ld,
            stride: m.rows.saturating_sub(1) * m.ld + m.cols,
        }
    }
}

/// Everything one `assign_solve` launch needs (crate-internal: the matcher and the tracker
/// launch ragged batches described on the device).
pub(crate) struct SolveLaunch {
    pub costs: DevicePtr,
    /// Device array of [`AssignProblem`]; 0 for a uniform batch.
    pub problems: DevicePtr,
    pub count: usize,
    /// Shape of a uniform batch (ignored with `problems`).
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
    pub stride: usize,
    pub scratch: DevicePtr,
    pub row_to_col: DevicePtr,
    pub col_to_row: DevicePtr,
    pub info: DevicePtr,
    /// Largest side the shared memory must hold (objects).
    pub capacity: usize,
    /// Largest smaller side (persons) expected, to size the block.
    pub persons: usize,
}

fn launch_error(message: String) -> Error {
    Error::Launch {
        kernel: "assign_solve",
        message,
    }
}

/// Threads per block: one warp per bidder, within 128..=1024. Persons bid forward; in a
/// rectangular problem up to `objects - persons` unassigned objects bid in the first reverse
/// round of a phase, so those get a warp each too (300x10: 32 warps, not 10).
pub(crate) fn block_threads(cfg: &AssignConfig, persons: usize, objects: usize) -> u32 {
    if cfg.block_threads != 0 {
        return cfg.block_threads;
    }
    let bidders = persons.max(objects.saturating_sub(persons));
    (bidders.saturating_mul(32)).clamp(128, 1024) as u32
}

/// Enqueues one `assign_solve` launch (no allocation, no synchronisation).
pub(crate) fn launch_solve(gpu: &Gpu, cfg: &AssignConfig, l: &SolveLaunch) -> Result<()> {
    cfg.validate()?;
    if l.count == 0 {
        return Ok(());
    }
    if l.capacity > MAX_SIDE {
        return Err(AssignError::TooLarge {
            matrix: 0,
            message: format!("{} objects exceed the limit of {MAX_SIDE}", l.capacity),
        }
        .into());
    }
    let capacity = l.capacity.max(1);
    let limit = gpu.kernels().assign_smem_limit;
    let state = solve_smem_bytes(capacity, 0);
    if state > limit {
        return Err(AssignError::TooLarge {
            matrix: 0,
            message: format!(
                "{capacity} objects need {state} bytes of shared memory, more than this GPU grants ({limit})"
            ),
        }
        .into());
    }
    // The quantised matrices (at most persons x capacity each) live in shared memory when they
    // fit: every bid then scans shared memory instead of L2.
    // Otherwise each person keeps its best candidates from its last full scan there, which
    // decides most bids without reading the costs.
    // The shortest-path solver needs its matrices' costs there too (at most
    // SHORTEST_PATH_MAX_ENTRIES); a matrix too large for the region uses the candidate cache,
    // which shares it.
    let persons = l.persons.max(1);
    let q_elems = capacity.saturating_mul(persons);
    let sp_elems = if cfg.shortest_path && capacity <= SHORTEST_PATH_MAX_OBJECTS {
        q_elems.min(SHORTEST_PATH_MAX_ENTRIES)
    } else {
        0
    };
    let (smem, q_capacity, cache_width) = if solve_smem_bytes(capacity, q_elems) <= limit {
        (solve_smem_bytes(capacity, q_elems), q_elems, 0)
    } else {
        let (cache_region, width) = CACHE_WIDTHS
            .iter()
            .map(|&w| (cache_bytes(persons, w), w))
            .find(|&(bytes, _)| state + bytes.max(sp_elems * 4) <= limit)
            .unwrap_or((0, 0));
        let q = if state + sp_elems * 4 <= limit {
            sp_elems
        } else {
            0
        };
        (state + cache_region.max(q * 4), q, width)
    };
    let shortest_path = sp_elems > 0 && q_capacity >= sp_elems;
    // The sparse path (uses_sparse) shares the region too; it needs assign_solve_512, so the
    // launch's blocks shrink to 512 threads when some matrix may take it.
    // A uniform batch has one shape: only a square one in range may take the sparse path (a
    // 1000x1000 solve keeps its 1024-thread blocks). A ragged batch may hold any shape.
    let sparse_side = persons.min(capacity).min(SPARSE_MAX_SIDE);
    let sparse_region = sparse_region_bytes(sparse_side);
    let square_in_range = l.problems != 0
        || (l.rows == l.cols && (SPARSE_MIN_SIDE..=SPARSE_MAX_SIDE).contains(&l.rows));
    let sparse = cfg.sparse
        && square_in_range
        && sparse_side >= SPARSE_MIN_SIDE
        && (cfg.block_threads == 0 || cfg.block_threads <= SPARSE_MAX_BLOCK_THREADS)
        && state + sparse_region <= limit;
    let (smem, threads, func, blocks_per_matrix) = if sparse {
        (
            smem.max(state + sparse_region),
            block_threads(cfg, l.persons, capacity).min(SPARSE_MAX_BLOCK_THREADS),
            &gpu.kernels().assign_solve_512,
            SPARSE_CLUSTER_BLOCKS,
        )
    } else {
        (
            smem,
            block_threads(cfg, l.persons, capacity),
            &gpu.kernels().assign_solve,
            1,
        )
    };
    let to_u32 = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| launch_error(format!("{what} {v} exceeds u32")))
    };
    let uniform = AssignUniform {
        count: to_u32(l.count, "count")?,
        rows: to_u32(l.rows, "rows")?,
        cols: to_u32(l.cols, "cols")?,
        ld: to_u32(l.ld, "ld")?,
        stride: l.stride as u64,
    };
    let params = AssignParams {
        theta: cfg.theta,
        levels: cfg.levels,
        max_rounds: cfg.max_rounds,
        capacity: capacity as u32,
        q_capacity: q_capacity as u32,
        cache_width: cache_width as u32,
        cache_persons: persons as u32,
        shortest_path: shortest_path as u32,
        sparse_persons: if sparse { sparse_side as u32 } else { 0 },
        race: cfg.race as u32,
    };
    let blocks = uniform
        .count
        .checked_mul(blocks_per_matrix)
        .ok_or_else(|| launch_error(format!("{} matrices exceed the grid", uniform.count)))?;
    let launch_cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    let stream = gpu.stream();
    let mut launch = stream.launch_builder(func);
    launch
        .arg(&l.costs)
        .arg(&l.problems)
        .arg(&uniform)
        .arg(&l.scratch)
        .arg(&l.row_to_col)
        .arg(&l.col_to_row)
        .arg(&l.info)
        .arg(&params);
    // SAFETY: argument order and types match the kernel; the callers size every buffer for
    // `count` matrices of at most the stated shape (checked in Assigner / matcher / tracker).
    unsafe { launch.launch(launch_cfg) }.map_err(|e| launch_error(e.to_string()))?;
    Ok(())
}

/// Downloads `len` plain values from `src` (asynchronous; valid after a synchronize).
pub(crate) fn download_into<T: Pod>(gpu: &Gpu, dst: &mut [T], src: DevicePtr) -> Result<()> {
    if dst.is_empty() {
        return Ok(());
    }
    gpu.download(bytemuck::cast_slice_mut(dst), src)
}

/// Shape and output offsets of one solved matrix, to read its result back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SolvedShape {
    pub rows: usize,
    pub cols: usize,
    pub row_offset: usize,
    pub col_offset: usize,
}

/// Builds host results from downloaded outputs.
pub(crate) fn assemble(
    shapes: &[SolvedShape],
    info: &[AssignInfo],
    row_to_col: &[i32],
    col_to_row: &[i32],
) -> Vec<Result<Assignment, AssignError>> {
    shapes
        .iter()
        .zip(info)
        .enumerate()
        .map(|(matrix, (shape, info))| {
            let status = Status::from_code(info.status).ok_or(AssignError::UnknownStatus {
                matrix,
                code: info.status,
            })?;
            if let Some(err) = status_error(matrix, status, info.rounds, shape.rows.max(shape.cols))
            {
                return Err(err);
            }
            let rows = &row_to_col[shape.row_offset..shape.row_offset + shape.rows];
            let cols = &col_to_row[shape.col_offset..shape.col_offset + shape.cols];
            Ok(Assignment {
                rows: shape.rows,
                cols: shape.cols,
                row_to_col: rows.to_vec(),
                col_to_row: cols.to_vec(),
                total_cost: info.total,
                unassigned: info.unassigned as usize,
                quantum: info.quantum,
                rounds: info.rounds,
                phases: info.phases,
                algorithm: Algorithm::from_code(info.algorithm),
                variant: info.variant,
            })
        })
        .collect()
}

/// Device workspace and outputs for batches of up to `max_count` matrices of up to
/// `max_rows x max_cols`. Solving allocates nothing and never synchronises.
pub struct Assigner {
    cfg: AssignConfig,
    max_count: usize,
    max_rows: usize,
    max_cols: usize,
    scratch: DeviceBuffer,
    row_to_col: DeviceBuffer,
    col_to_row: DeviceBuffer,
    info: DeviceBuffer,
    last: Option<(usize, usize, usize)>,
}

impl Assigner {
    /// Allocates the workspace.
    pub fn new(
        gpu: &Gpu,
        cfg: AssignConfig,
        max_count: usize,
        max_rows: usize,
        max_cols: usize,
    ) -> Result<Assigner> {
        cfg.validate()?;
        if max_rows.max(max_cols) > MAX_SIDE {
            return Err(AssignError::TooLarge {
                matrix: 0,
                message: format!("{max_rows}x{max_cols} exceeds the limit of {MAX_SIDE} per side"),
            }
            .into());
        }
        let elems = max_count * max_rows * max_cols;
        Ok(Assigner {
            cfg,
            max_count,
            max_rows,
            max_cols,
            scratch: gpu.alloc(elems * 4)?,
            row_to_col: gpu.alloc(max_count * max_rows * 4)?,
            col_to_row: gpu.alloc(max_count * max_cols * 4)?,
            info: gpu.alloc(max_count * std::mem::size_of::<AssignInfo>())?,
            last: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AssignConfig {
        &self.cfg
    }

    /// Enqueues the solve of one matrix.
    pub fn solve(&mut self, gpu: &Gpu, cost: &DeviceMatrix) -> Result<()> {
        self.solve_batch(gpu, &DeviceBatch::single(cost))
    }

    /// Enqueues the solve of a batch: one block per matrix, all in one launch.
    pub fn solve_batch(&mut self, gpu: &Gpu, batch: &DeviceBatch) -> Result<()> {
        let b = batch;
        if b.count > self.max_count || b.rows > self.max_rows || b.cols > self.max_cols {
            return Err(AssignError::Shape(format!(
                "batch of {} x {}x{} exceeds the workspace ({} x {}x{})",
                b.count, b.rows, b.cols, self.max_count, self.max_rows, self.max_cols
            ))
            .into());
        }
        if b.rows > 0 && b.cols > 0 && (b.ld < b.cols || b.stride < (b.rows - 1) * b.ld + b.cols) {
            return Err(AssignError::Shape(format!(
                "{}x{} with row stride {} and matrix stride {} overlaps",
                b.rows, b.cols, b.ld, b.stride
            ))
            .into());
        }
        launch_solve(
            gpu,
            &self.cfg,
            &SolveLaunch {
                costs: b.ptr,
                problems: 0,
                count: b.count,
                rows: b.rows,
                cols: b.cols,
                ld: b.ld,
                stride: b.stride,
                scratch: self.scratch.ptr(),
                row_to_col: self.row_to_col.ptr(),
                col_to_row: self.col_to_row.ptr(),
                info: self.info.ptr(),
                capacity: b.rows.max(b.cols),
                persons: b.rows.min(b.cols),
            },
        )?;
        self.last = Some((b.count, b.rows, b.cols));
        Ok(())
    }

    /// Device `row_to_col` of the last solve: matrix b's rows start at `b * rows` (i32, -1 =
    /// unassigned).
    pub fn row_to_col(&self) -> DevicePtr {
        self.row_to_col.ptr()
    }

    /// Device `col_to_row` of the last solve: matrix b's columns start at `b * cols`.
    pub fn col_to_row(&self) -> DevicePtr {
        self.col_to_row.ptr()
    }

    /// Downloads the last solve's results (synchronises), one entry per matrix.
    pub fn read_each(&self, gpu: &Gpu) -> Result<Vec<Result<Assignment, AssignError>>> {
        let Some((count, rows, cols)) = self.last else {
            return Ok(Vec::new());
        };
        let mut info = vec![AssignInfo::default(); count];
        let mut r2c = vec![0i32; count * rows];
        let mut c2r = vec![0i32; count * cols];
        download_into(gpu, &mut info, self.info.ptr())?;
        download_into(gpu, &mut r2c, self.row_to_col.ptr())?;
        download_into(gpu, &mut c2r, self.col_to_row.ptr())?;
        gpu.synchronize()?;
        let shapes: Vec<SolvedShape> = (0..count)
            .map(|b| SolvedShape {
                rows,
                cols,
                row_offset: b * rows,
                col_offset: b * cols,
            })
            .collect();
        Ok(assemble(&shapes, &info, &r2c, &c2r))
    }

    /// Downloads the last solve's in-kernel stage profile (synchronises), one per matrix.
    pub fn read_profile(&self, gpu: &Gpu) -> Result<Vec<SolveProfile>> {
        let Some((count, _, _)) = self.last else {
            return Ok(Vec::new());
        };
        let mut info = vec![AssignInfo::default(); count];
        download_into(gpu, &mut info, self.info.ptr())?;
        gpu.synchronize()?;
        Ok(info.iter().map(SolveProfile::from_info).collect())
    }

    /// Downloads the last solve's results; the first failed matrix is the error.
    pub fn read(&self, gpu: &Gpu) -> Result<Vec<Assignment>> {
        self.read_each(gpu)?
            .into_iter()
            .map(|r| r.map_err(Error::from))
            .collect()
    }
}

/// Solves one device matrix and reads the result back (allocates a workspace; for repeated
/// solves keep an [`Assigner`]).
pub fn assign(gpu: &Gpu, cost: &DeviceMatrix, cfg: &AssignConfig) -> Result<Assignment> {
    let mut assigner = Assigner::new(gpu, *cfg, 1, cost.rows, cost.cols)?;
    assigner.solve(gpu, cost)?;
    assigner
        .read(gpu)?
        .pop()
        .ok_or_else(|| AssignError::Shape("no result".into()).into())
}

/// Solves a batch of device matrices in one launch and reads the results back.
pub fn assign_batched(
    gpu: &Gpu,
    batch: &DeviceBatch,
    cfg: &AssignConfig,
) -> Result<Vec<Assignment>> {
    let mut assigner = Assigner::new(gpu, *cfg, batch.count, batch.rows, batch.cols)?;
    assigner.solve_batch(gpu, batch)?;
    assigner.read(gpu)
}
