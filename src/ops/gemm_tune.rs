//! Measured GEMM tile (and split-K) selection, like TensorRT's tactic selection: the first
//! launch of a shape inside [`GemmTuner::tune`] times every candidate kernel with CUDA events
//! and caches the fastest; later launches of that shape (eager or captured into a graph) reuse
//! the choice. Outside tuning, and when the cache has no entry, the wave-quantisation model of
//! [`select_gemm_tile_for`] decides.
//!
//! Every candidate computes bit-identical results (see docs/KERNELS.md, "Measured tile
//! selection"): the choice changes speed only, never numbers. That holds because
//! - all three tiles accumulate each output element with the same sequence of
//!   `mma.m16n8k16` over K (k-steps of 32, two k16 halves each, from a zero accumulator) and
//!   share one epilogue;
//! - whether a shape uses the split-K kernels is a function of the shape alone
//!   ([`split_k_family`]), and within that family every tile and split count sums the same
//!   fixed K segments ([`split_k_segment`]) in the same order.
//!
//! `FINESAM_GEMM_TUNE=0` disables tuning (the model decides every launch).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::gemm::GemmTile;
use crate::error::{Error, Result};
use crate::gpu::{DeviceBuffer, DevicePtr, Gpu};

/// Blocks per SM the gemm.cu kernels reach on sm_90 (228 KiB shared memory, 64 K registers):
/// 128x128 80 KiB / 124 regs x 256 threads -> 2; 128x64 60 KiB / 140 x 128 -> 3; 64x64 40 KiB /
/// 91 x 128 -> 5. `Kernels` replaces these with the occupancy the driver reports.
pub const DEFAULT_BLOCKS_PER_SM: [u32; GemmTile::COUNT] = [2, 3, 5];

/// Most K segments of a split-K GEMM (and so most splits).
pub const SPLIT_K_MAX_SEGMENTS: usize = 16;
/// Smallest K segment (4 k-steps of 32).
pub const SPLIT_K_MIN_SEGMENT: usize = 128;
/// Shapes with at most this many 64x64 output tiles (times batch) and ...
pub const SPLIT_K_MAX_TILES: usize = 32;
/// ... at least this K use the split-K kernels.
pub const SPLIT_K_MIN_K: usize = 1024;
/// Split counts the tuner tries (those <= the segment count).
pub const SPLIT_K_CANDIDATES: [usize; 5] = [1, 2, 4, 8, 16];
/// fp32 elements of the shared split-K partial workspace: every split-K shape fits
/// (segments x batch x M x round_up(N, 2) <= 16 x 32 x 64 x 64), 8 MiB.
pub const SPLIT_K_WORKSPACE_FLOATS: usize = SPLIT_K_MAX_SEGMENTS * SPLIT_K_MAX_TILES * 64 * 64;

/// Timing: samples per candidate (the minimum is kept) and launches per sample.
const TUNE_SAMPLES: usize = 3;
const TUNE_LAUNCHES: usize = 4;

/// The K segment length of a split-K GEMM: K / 16 rounded up to whole k-steps of 32, at least
/// 128. A function of K only, so the segment sums (and the result bits) do not depend on the
/// split count.
pub fn split_k_segment(k: usize) -> usize {
    k.div_ceil(SPLIT_K_MAX_SEGMENTS)
        .div_ceil(32)
        .saturating_mul(32)
        .max(SPLIT_K_MIN_SEGMENT)
}

/// Segments of a split-K GEMM with reduction length `k`.
pub fn split_k_segments(k: usize) -> usize {
    k.div_ceil(split_k_segment(k))
}

/// Whether a (non-window) GEMM of this shape runs through the split-K kernels: few output
/// tiles (64x64 tiles x batch <= 32, far below one wave) and a long reduction (K >= 1024), the
/// mask decoder's MLP (M = 7 x prompts, N 256, K 2048). A function of the shape only, so the
/// result bits never depend on timing or on the device.
pub fn split_k_family(m: usize, n: usize, k: usize, batch: usize) -> bool {
    let tiles = GemmTile::T64x64.blocks(m, n, batch);
    k >= SPLIT_K_MIN_K && tiles > 0 && tiles <= SPLIT_K_MAX_TILES
}

/// What the tuner keys a launch by: everything that changes which kernel is fastest. M is
/// kept as its number of 64-row tiles (every tile config then launches the same grid), so
/// e.g. 1 to 9 prompts of 7 decoder tokens share one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmKey {
    /// ceil(M / 64).
    pub m_tiles: usize,
    /// Output columns.
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// Batch items (grid.y).
    pub batch: usize,
    /// Activation code (0 none, 1 GELU, 2 ReLU).
    pub activation: i32,
    /// Whether a bias is added.
    pub bias: bool,
    /// 0: no residual; 1: after the activation; 2: before it.
    pub residual: u8,
    /// Whether the 16-byte vector epilogue applies.
    pub vec_out: bool,
    /// Window scatter geometry (window, map height, map width); zeros when off.
    pub window: (i32, i32, i32),
}

impl GemmKey {
    /// Whether this shape uses the split-K kernels ([`split_k_family`]; never with a window
    /// scatter).
    pub fn split_k(&self) -> bool {
        self.window.0 == 0 && split_k_family(self.m_tiles * 64, self.n, self.k, self.batch)
    }
}

/// A kernel choice: the tile and, for split-K shapes, the split count (1 otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmChoice {
    /// Block tile.
    pub tile: GemmTile,
    /// Splits of K (grid.z); 1 for the plain kernels.
    pub splits: usize,
}

/// Cost of `tile` in the wave-quantisation model (arbitrary units; only comparisons matter).
///
/// A wave is `sms x blocks_per_sm` blocks. Full waves cost `blocks_per_sm` tiles of work per
/// SM; the last, partial wave costs the tiles its busiest SM holds but at least half a full
/// wave (a lone block does not run proportionally faster: latency floor). A tile's work is its
/// area times a per-tile factor (smaller tiles re-read more operands per FLOP). The factors
/// and the half-wave floor pick the faster tile at all three H200 sweeps of `bench_ops`
/// (2026-11-27): M16384 N512 K128 128x128 32.3 us < 64x64 34.7 < 128x64 38.5; M4096 N320
/// K1280 64x64 29.8 < 128x128 32.1; the neck conv M4096 N256 64x64 42.0 < 128x64 50.3.
pub fn tile_cost(tile: GemmTile, m: usize, n: usize, batch: usize, sms: u32, per_sm: u32) -> f64 {
    let sms = sms.max(1) as usize;
    let per_sm = per_sm.max(1) as usize;
    let blocks = tile.blocks(m, n, batch);
    let wave = sms * per_sm;
    let (full, tail) = (blocks / wave, blocks % wave);
    let mut tiles_on_busiest = (full * per_sm) as f64;
    if tail > 0 {
        tiles_on_busiest += (tail.div_ceil(sms) as f64).max(0.5 * per_sm as f64);
    }
    let factor = match tile {
        GemmTile::T128x128 => 1.0,
        GemmTile::T128x64 => 1.2,
        GemmTile::T64x64 => 1.15,
    };
    tiles_on_busiest * (tile.bm() * tile.bn()) as f64 * factor
}

/// The model's tile for an `m x n` output (times `batch`) on `sms` SMs running
/// `blocks_per_sm[tile.index()]` blocks of each tile at once.
pub fn select_gemm_tile_for(
    m: usize,
    n: usize,
    batch: usize,
    sms: u32,
    blocks_per_sm: [u32; GemmTile::COUNT],
) -> GemmTile {
    let cost = |t: GemmTile| tile_cost(t, m, n, batch, sms, blocks_per_sm[t.index()]);
    let mut best = GemmTile::T128x128;
    for tile in GemmTile::ALL {
        if cost(tile) < cost(best) {
            best = tile;
        }
    }
    best
}

/// The model's choice for a launch: the tile of [`select_gemm_tile_for`]; for split-K shapes
/// the 64x64 tile with the largest power-of-two split count (<= the segments) that keeps
/// tiles x splits within one block per SM.
pub fn heuristic_choice(
    key: &GemmKey,
    sms: u32,
    blocks_per_sm: [u32; GemmTile::COUNT],
) -> GemmChoice {
    let m = key.m_tiles * 64;
    if key.split_k() {
        let tiles = GemmTile::T64x64.blocks(m, key.n, key.batch).max(1);
        let segments = split_k_segments(key.k);
        let splits = SPLIT_K_CANDIDATES
            .iter()
            .copied()
            .filter(|&s| s <= segments && tiles * s <= sms.max(1) as usize)
            .max()
            .unwrap_or(1);
        return GemmChoice {
            tile: GemmTile::T64x64,
            splits,
        };
    }
    GemmChoice {
        tile: select_gemm_tile_for(m, key.n, key.batch, sms, blocks_per_sm),
        splits: 1,
    }
}

/// Every candidate the tuner times for `key`: each tile, times each split count <= the
/// segments for split-K shapes.
pub fn candidates(key: &GemmKey) -> Vec<GemmChoice> {
    let splits: Vec<usize> = if key.split_k() {
        let segments = split_k_segments(key.k);
        SPLIT_K_CANDIDATES
            .iter()
            .copied()
            .filter(|&s| s <= segments)
            .collect()
    } else {
        vec![1]
    };
    GemmTile::ALL
        .iter()
        .flat_map(|&tile| {
            splits
                .iter()
                .map(move |&splits| GemmChoice { tile, splits })
        })
        .collect()
}

/// The split-K workspace: fp32 partials and one arrival counter per output tile (kept zero
/// between launches by the kernel).
pub(crate) struct SplitKWorkspace {
    partials: DeviceBuffer,
    counters: DeviceBuffer,
}

impl SplitKWorkspace {
    /// (partials address, partial floats, counters address, counters).
    pub(crate) fn parts(&self) -> (DevicePtr, usize, DevicePtr, usize) {
        (
            self.partials.ptr(),
            self.partials.len() / 4,
            self.counters.ptr(),
            self.counters.len() / 4,
        )
    }
}

/// The per-GPU cache of measured GEMM choices, the tuning switch and the split-K workspace.
/// Lives in [`Gpu`] (`gpu.gemm_tuner()`), so every launcher sees it.
pub struct GemmTuner {
    enabled: bool,
    tuning: AtomicBool,
    cache: Mutex<HashMap<GemmKey, GemmChoice>>,
    forced: Mutex<Option<GemmChoice>>,
    workspace: Mutex<Option<SplitKWorkspace>>,
}

impl GemmTuner {
    /// A tuner; `enabled: false` makes [`GemmTuner::tune`] run nothing.
    pub fn new(enabled: bool) -> GemmTuner {
        GemmTuner {
            enabled,
            tuning: AtomicBool::new(false),
            cache: Mutex::new(HashMap::new()),
            forced: Mutex::new(None),
            workspace: Mutex::new(None),
        }
    }

    /// Enabled unless `FINESAM_GEMM_TUNE` is `0`, `off` or `false`.
    pub fn from_env() -> GemmTuner {
        GemmTuner::new(tuning_enabled(
            std::env::var("FINESAM_GEMM_TUNE").ok().as_deref(),
        ))
    }

    /// Whether tuning runs at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a [`GemmTuner::tune`] body is running (launches of new shapes are timed).
    pub fn is_tuning(&self) -> bool {
        self.tuning.load(Ordering::Relaxed)
    }

    /// Runs `body` (typically one eager forward of a model) with tuning on: each launch of a
    /// shape not yet in the cache times every candidate (a few eager launches each, CUDA
    /// events) and caches the fastest; then synchronises. Skipped entirely when disabled.
    ///
    /// Timing repeats launches, so a GEMM whose output is its own residual (in-place
    /// `x += f(x)`) accumulates several times: everything `body` computes is garbage and a
    /// clean run must follow (a graph replay or a new forward), never `body`'s results.
    pub fn tune(&self, gpu: &Gpu, body: impl FnOnce() -> Result<()>) -> Result<()> {
        if !self.enabled || gpu.is_capturing()? {
            return Ok(());
        }
        let was = self.tuning.swap(true, Ordering::Relaxed);
        let result = body();
        self.tuning.store(was, Ordering::Relaxed);
        result?;
        gpu.synchronize()
    }

    /// The cached choice for `key`.
    pub fn cached(&self, key: &GemmKey) -> Option<GemmChoice> {
        self.lock_cache().get(key).copied()
    }

    /// Records `choice` for `key` (tests, or a choice measured elsewhere).
    pub fn insert(&self, key: GemmKey, choice: GemmChoice) {
        self.lock_cache().insert(key, choice);
    }

    /// Entries in the cache.
    pub fn len(&self) -> usize {
        self.lock_cache().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every measured choice.
    pub fn clear(&self) {
        self.lock_cache().clear();
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<GemmKey, GemmChoice>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts).
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every later launch use `choice`'s tile (and, for split-K shapes, its split count,
    /// capped at the shape's segments), ahead of the cache and the model; `None` restores
    /// normal selection. For tests that check that every choice gives the same bits through a
    /// whole model.
    pub fn force(&self, choice: Option<GemmChoice>) {
        *self.forced.lock().unwrap_or_else(|e| e.into_inner()) = choice;
    }

    /// The choice for a launch: forced, else cached, else measured (while tuning, outside
    /// graph capture), else the model's. `launch` issues the GEMM with a given choice.
    pub(crate) fn choose(
        &self,
        gpu: &Gpu,
        key: &GemmKey,
        mut launch: impl FnMut(GemmChoice) -> Result<()>,
    ) -> Result<GemmChoice> {
        let forced = *self.forced.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(choice) = forced {
            let splits = if key.split_k() {
                choice.splits.clamp(1, split_k_segments(key.k))
            } else {
                1
            };
            return Ok(GemmChoice { splits, ..choice });
        }
        if let Some(choice) = self.cached(key) {
            return Ok(choice);
        }
        let kernels = gpu.kernels();
        let fallback = heuristic_choice(key, kernels.sm_count, kernels.gemm_blocks_per_sm);
        if !self.is_tuning() || gpu.is_capturing()? {
            return Ok(fallback);
        }
        let mut best = (f64::INFINITY, fallback);
        for choice in candidates(key) {
            launch(choice)?; // warm-up (and instruction cache)
            let mut ms = f64::INFINITY;
            for _ in 0..TUNE_SAMPLES {
                ms = ms.min(gpu.time_ms(TUNE_LAUNCHES, || launch(choice))?);
            }
            if ms < best.0 {
                best = (ms, choice);
            }
        }
        self.insert(*key, best.1);
        Ok(best.1)
    }

    /// Allocates the split-K workspace once (8 MiB of partials, counters zeroed); later calls
    /// do nothing. Call it at plan time, before capturing graphs that hold split-K GEMMs.
    pub fn reserve_split_k(&self, gpu: &Gpu) -> Result<()> {
        match self.split_k_workspace(gpu)? {
            Some(_) => Ok(()),
            None => Err(Error::Plan(
                "the split-K workspace cannot be allocated during graph capture".into(),
            )),
        }
    }

    /// The split-K workspace if [`GemmTuner::reserve_split_k`] (or an explicit split-K launch)
    /// allocated it.
    pub(crate) fn reserved_split_k_workspace(
        &self,
    ) -> Option<(DevicePtr, usize, DevicePtr, usize)> {
        let workspace = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        workspace.as_ref().map(|ws| ws.parts())
    }

    /// The split-K workspace (partials, floats, counters, counters), allocated on first use
    /// outside graph capture; None while capturing before it exists.
    pub(crate) fn split_k_workspace(
        &self,
        gpu: &Gpu,
    ) -> Result<Option<(DevicePtr, usize, DevicePtr, usize)>> {
        let mut workspace = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ws) = workspace.as_ref() {
            return Ok(Some(ws.parts()));
        }
        if gpu.is_capturing()? {
            return Ok(None);
        }
        let partials = gpu.alloc(SPLIT_K_WORKSPACE_FLOATS * 4)?;
        let counters = gpu.alloc(SPLIT_K_MAX_TILES * 4)?;
        gpu.memset(counters.ptr(), 0, counters.len())?;
        let ws = SplitKWorkspace { partials, counters };
        let parts = ws.parts();
        *workspace = Some(ws);
        Ok(Some(parts))
    }
}

/// How `FINESAM_GEMM_TUNE` is read: unset or anything but `0`/`off`/`false` enables tuning.
pub fn tuning_enabled(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "off" | "false")
    )
}
