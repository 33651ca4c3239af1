//! Minimum-cost assignment on the GPU: a batched epsilon-scaling auction (forward auction plus
//! reverse steps for rectangular problems) that is exactly optimal on its integer-quantised
//! costs, with small matrices solved exactly by shortest augmenting paths in f64 (scipy's
//! algorithm) in the same launch, D-FINE's `HungarianMatcher` cost fused in front of it, and an
//! IoU tracker built on it.
//! The algorithm, the optimality bound and the bad-input rules are in `docs/ASSIGN.md`.
//!
//! Layout: [`cpu`] is the step-for-step CPU model of `kernels/assign.cu` (same rounds, same
//! tie-breaking, same result), [`oracle`] an independent exact solver (shortest augmenting path
//! in f64, scipy's algorithm) both are checked against, [`solver`] the GPU launchers,
//! [`matcher`] the matching cost, [`tracker`] the frame-to-frame tracker.

pub mod cpu;
pub mod fixtures;
pub mod matcher;
pub mod oracle;
pub mod random;
pub mod solver;
pub mod tracker;

pub use matcher::{Matcher, MatcherConfig, MatcherInputs, MatcherShape, TopKMatches};
pub use solver::{assign, assign_batched, Assigner, DeviceBatch, DeviceMatrix, SolveProfile};
pub use tracker::{CpuTracker, GpuTracker, Track, TrackerConfig, TrackerDetections};

/// Largest cost range, in scaled integer units, the solver admits. Bids are packed as
/// `increment << 16 | bidder` in 64 bits; increments stay below 4x this (see docs/ASSIGN.md).
pub(crate) const SCALED_RANGE_LIMIT: u64 = 1 << 44;
/// Bids at or above this increment would not fit the packed key: reported as [`Status::Overflow`].
pub(crate) const MAX_INCREMENT: i64 = 1 << 47;
/// Objects (the larger side) per matrix: bidder ids are packed into 16 bits as `id + 1`.
pub const MAX_SIDE: usize = 65534;
/// Matrices of at most this many entries (and [`SHORTEST_PATH_MAX_OBJECTS`] on the larger side,
/// no +inf) are solved by exact shortest augmenting paths when
/// [`AssignConfig::shortest_path`] is on: their f32 costs fit shared memory (128 KiB).
pub const SHORTEST_PATH_MAX_ENTRIES: usize = 32768;
/// Larger side up to which the shortest-path solver applies (its launch then needs at most
/// 52 B x 1024 of state next to the 128 KiB of costs).
pub const SHORTEST_PATH_MAX_OBJECTS: usize = 1024;

/// Square matrices with sides in `SPARSE_MIN_SIDE..=SPARSE_MAX_SIDE` (and above the
/// shortest-path limit, no +inf) take the sparse path when [`AssignConfig::sparse`] is on: each
/// row keeps a few of its cheapest entries and the auction bids over those, with an exact check
/// against the full matrix at the end (docs/ASSIGN.md, "Sparse candidates").
pub const SPARSE_MIN_SIDE: usize = 128;
/// Largest side of the sparse path. Its shared-memory region holds 8 bytes per kept entry;
/// larger sides would have to keep fewer than [`SPARSE_SLOTS`] per row, and with 16 the CPU
/// model needs 2-9x the dense path's rounds (520x520: 11126 against 1256).
pub const SPARSE_MAX_SIDE: usize = 384;
/// Entries a row keeps at most on the sparse path.
pub const SPARSE_SLOTS: usize = 32;
/// The sparse path's round budget is `SPARSE_ROUNDS_PER_SIDE * n + SPARSE_ROUNDS_BASE`
/// (uniform costs need ~3n); past it the solve restarts on the dense path.
pub const SPARSE_ROUNDS_PER_SIDE: u32 = 8;
/// See [`SPARSE_ROUNDS_PER_SIDE`].
pub const SPARSE_ROUNDS_BASE: u32 = 2048;
/// On the sparse path a phase other than the last ends once at most this many bidders are
/// left; they stay unassigned and bid in the next phase's first round. The tail of a phase is
/// one or two persons displacing each other along long chains, and finer prices settle it
/// sooner: over 24 seeded 300x300 uniform matrices the CPU model counts 9951 rounds instead of
/// 27291 (1 gives 12715). The last phase (eps = 1) always runs to the end, so the optimality
/// argument is unchanged. Off where rows tie at their minimum (`cpu::Problem::phase_cut`), and
/// the dense path keeps whole phases (1000x1000 needed up to 2.3x the rounds with the cut).
/// A solve with the cut has the shorter budget of [`SPARSE_CUT_ROUNDS_PER_SIDE`].
pub const SPARSE_PHASE_CUT: usize = 2;
/// With the phase cut on, the sparse path first has a budget of
/// `SPARSE_CUT_ROUNDS_PER_SIDE * n + SPARSE_CUT_ROUNDS_BASE` rounds; past it the sparse solve
/// starts again with whole phases (and [`SPARSE_ROUNDS_PER_SIDE`]'s budget on top; the rounds so
/// far count). A person carried over a cut can start a price war at the next, finer epsilon:
/// over 200 seeded 300x300 uniform matrices the CPU model needs 443-1100 rounds for most, but
/// 2000-6000 for 8, two of which ran past the whole sparse budget into the dense fallback (a
/// batch waits for its slowest matrix). With this retry the worst of the 200 takes 2708 rounds,
/// all on the sparse path, and the total falls from 107255 to 103235.
pub const SPARSE_CUT_ROUNDS_PER_SIDE: u32 = 2;
/// See [`SPARSE_CUT_ROUNDS_PER_SIDE`].
pub const SPARSE_CUT_ROUNDS_BASE: u32 = 512;
/// Largest block of a launch that may take the sparse path (`assign_solve_512`).
pub const SPARSE_MAX_BLOCK_THREADS: u32 = 512;
/// Blocks per matrix of a launch that may take the sparse path (`kSparseCluster`): one thread
/// block cluster on sm_90 and newer, which runs the sparse matrix's pass 1 and candidate
/// selection (~105 us on one SM at 300x300) before block 0 solves alone or, with
/// [`AssignConfig::race`], all blocks race [`RACE_VARIANTS`]. Older cards use block 0 only.
pub const SPARSE_CLUSTER_BLOCKS: u32 = 8;

/// One epsilon schedule of the race ([`RACE_VARIANTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceVariant {
    /// Epsilon reduction factor between phases.
    pub theta: u32,
    /// The first epsilon is `range / (theta * divisor)` (at least 1).
    pub divisor: u32,
    /// A phase before the last ends once at most this many bidders are left (with the phase
    /// cut on, see [`SPARSE_PHASE_CUT`]); 1..=[`SPARSE_WARP_BIDDERS`] (warp 0's rounds end
    /// the phase).
    pub cut: usize,
}

/// On sm_90 and newer the blocks of a sparse matrix's cluster race after its preparation
/// ([`AssignConfig::race`]): block k runs the sparse auction with its own schedule (block 0:
/// `AssignConfig::theta`, divisor 1, cut [`SPARSE_PHASE_CUT`]; block k >= 1:
/// `RACE_VARIANTS[k - 1]`), and the result is that of the variant with the least *work* (rounds
/// weighted by their kind, [`RACE_WORK_FULL_ROUND`]...; ties to the lower block), a deterministic
/// choice. A block stops as soon as its work exceeds a finished variant's, so the solve takes
/// about as long as its fastest variant. Every variant ends with a whole phase at eps = 1, so
/// every one is optimal; they differ only in how many rounds they take, and no single schedule
/// is good for every matrix. Chosen with the CPU model (greedy, then swaps) among 392 schedules
/// (cut 2..16, theta 5..16, divisor 1..64) on 80 seeded 300x300 uniform matrices, not the
/// benchmark's, for the least mean + 0.05 x worst estimated time (per-round costs measured on
/// H100, the winners chosen by work as the kernel does): on 80 other seeds the mean falls from
/// 558 us (block 0 alone) to 199, the worst from 1791 to 370. All start 8-64 times finer,
/// scale by 5-7 and cut phases at 6-16 bidders. (Cuts up to 64 with theta 4 did no better on
/// 200 further seeds: mean 205 against 209, worst 1464 against 720.)
pub const RACE_VARIANTS: [RaceVariant; SPARSE_CLUSTER_BLOCKS as usize - 1] = [
    RaceVariant {
        theta: 7,
        divisor: 32,
        cut: 12,
    },
    RaceVariant {
        theta: 6,
        divisor: 64,
        cut: 8,
    },
    RaceVariant {
        theta: 5,
        divisor: 8,
        cut: 6,
    },
    RaceVariant {
        theta: 5,
        divisor: 64,
        cut: 16,
    },
    RaceVariant {
        theta: 5,
        divisor: 16,
        cut: 16,
    },
    RaceVariant {
        theta: 5,
        divisor: 32,
        cut: 16,
    },
    RaceVariant {
        theta: 6,
        divisor: 32,
        cut: 12,
    },
];
/// Sparse forward rounds of at most this many bidders run in warp 0 alone, without block
/// barriers (the kernel's `kSmallBidders`); larger ones take the whole block.
pub const SPARSE_WARP_BIDDERS: usize = 16;
/// Race work of a round in which every person is scanned (a phase's first round, a round after
/// the sparse check, a reverse part's first round), in units of a chain step: ~4.3 us at
/// 300x300 on H100. The weights follow the measured time of each kind, so that the least work
/// is the fastest variant and a beaten block stops about when the winner finishes.
pub const RACE_WORK_FULL_ROUND: u64 = 11;
/// Race work of a block-wide round (more than [`SPARSE_WARP_BIDDERS`] bidders on the sparse
/// path, 2 or more on the dense one, reverse rounds of several objects): ~2.0 us.
pub const RACE_WORK_BLOCK_ROUND: u64 = 5;
/// Race work of a sparse round in warp 0 of 2..=4, 5..=8 and 9..=[`SPARSE_WARP_BIDDERS`]
/// bidders (8, 4 and 2 lanes each): ~0.75, ~1.2 and ~1.9 us.
pub const RACE_WORK_WARP_ROUND: [u64; 3] = [2, 3, 5];
/// Race work of one step of a lone bidder's chain: ~0.38 us.
pub const RACE_WORK_CHAIN_STEP: u64 = 1;

// Warp 0 runs the rounds of up to SPARSE_WARP_BIDDERS bidders, which is where a cut applies.
const _: () = {
    let mut k = 0;
    while k < RACE_VARIANTS.len() {
        assert!(RACE_VARIANTS[k].cut >= 1 && RACE_VARIANTS[k].cut <= SPARSE_WARP_BIDDERS);
        k += 1;
    }
};

/// The schedule of race variant `rank` (see [`RACE_VARIANTS`]): block 0 runs the configured
/// theta from `range / theta` with the default cut.
pub fn race_variant(cfg: &AssignConfig, rank: usize) -> RaceVariant {
    match rank {
        0 => RaceVariant {
            theta: cfg.theta,
            divisor: 1,
            cut: SPARSE_PHASE_CUT,
        },
        k => RACE_VARIANTS[k - 1],
    }
}

/// The order of finished race variants: less work first, then the lower block (3 bits: the
/// cluster's 8 blocks; the kernel's RoundCount::key).
pub fn race_key(work: u64, rank: usize) -> u64 {
    const _: () = assert!(SPARSE_CLUSTER_BLOCKS == 8);
    (work << 3) | rank as u64
}

/// Which solver produced an [`Assignment`] (`AssignInfo::algorithm` in the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// The epsilon-scaling auction on quantised costs (also used for empty matrices).
    Auction,
    /// Shortest augmenting paths in f64 on the f32 costs (scipy's algorithm, exact).
    ShortestPath,
    /// The auction over each row's kept entries, checked against the full matrix (same
    /// optimality guarantee as [`Algorithm::Auction`]).
    SparseAuction,
}

impl Algorithm {
    pub(crate) fn from_code(code: u32) -> Algorithm {
        match code {
            1 => Algorithm::ShortestPath,
            2 => Algorithm::SparseAuction,
            _ => Algorithm::Auction,
        }
    }
}

/// Whether a `persons x objects` matrix (persons = the smaller side) goes to the shortest-path
/// solver: the rule the kernel applies when its launch allows shortest paths (every launch on
/// GPUs that grant 128 KiB + the state of shared memory per block, e.g. A100, H100, H200).
pub fn uses_shortest_path(
    cfg: &AssignConfig,
    persons: usize,
    objects: usize,
    has_inf: bool,
) -> bool {
    cfg.shortest_path
        && !has_inf
        && objects <= SHORTEST_PATH_MAX_OBJECTS
        && persons * objects <= SHORTEST_PATH_MAX_ENTRIES
}

/// Whether a `persons x objects` matrix starts on the sparse path (the kernel's rule; it applies
/// on GPUs whose blocks may opt in to the state plus the kept entries in shared memory: at most
/// 384 x (52 + 338) bytes, true on A100, H100 and H200). It falls back to the dense path when
/// its kept entries leave a column to the diagonal alone or its round budget runs out.
pub fn uses_sparse(cfg: &AssignConfig, persons: usize, objects: usize, has_inf: bool) -> bool {
    cfg.sparse
        && !has_inf
        && persons == objects
        && (SPARSE_MIN_SIDE..=SPARSE_MAX_SIDE).contains(&persons)
        && (cfg.block_threads == 0 || cfg.block_threads <= SPARSE_MAX_BLOCK_THREADS)
        && !uses_shortest_path(cfg, persons, objects, has_inf)
}

/// The sparse path's round budget for `n` persons (whole phases), within the configured cap.
pub fn sparse_round_cap(cfg: &AssignConfig, n: usize) -> u32 {
    round_budget(cfg, n, SPARSE_ROUNDS_PER_SIDE, SPARSE_ROUNDS_BASE)
}

/// The sparse path's first budget when the phase cut is on ([`SPARSE_CUT_ROUNDS_PER_SIDE`]).
pub fn sparse_cut_round_cap(cfg: &AssignConfig, n: usize) -> u32 {
    round_budget(cfg, n, SPARSE_CUT_ROUNDS_PER_SIDE, SPARSE_CUT_ROUNDS_BASE)
}

/// `per_side * n + base` rounds, within the configured cap.
fn round_budget(cfg: &AssignConfig, n: usize, per_side: u32, base: u32) -> u32 {
    cfg.max_rounds
        .min((n as u32).saturating_mul(per_side).saturating_add(base))
}

/// Tuning of the auction. The defaults are what the tests and benchmarks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignConfig {
    /// Epsilon reduction factor between scaling phases (2..=64).
    pub theta: u32,
    /// Quantisation levels K for float costs: finite costs are mapped onto the integers 0..=K
    /// over their range (fewer when +inf entries or large matrices need the headroom).
    pub levels: u32,
    /// Cap on bidding rounds per matrix (forward + reverse; row scans of the shortest-path
    /// solver). Reaching it is reported as
    /// [`AssignError::IterationLimit`]; it bounds the run time of any input.
    pub max_rounds: u32,
    /// Threads per block (a multiple of 32, 64..=1024); 0 picks from the problem size.
    pub block_threads: u32,
    /// Solve small matrices without +inf entries (see [`uses_shortest_path`]) by exact
    /// shortest augmenting paths instead of the auction: for thin problems (300x10, 300x100,
    /// the matcher's 300 x targets) that is a few hundred dependent row scans instead of the
    /// auction's phases. Off: the auction solves everything.
    pub shortest_path: bool,
    /// Solve square matrices of [`SPARSE_MIN_SIDE`]..=[`SPARSE_MAX_SIDE`] (see [`uses_sparse`])
    /// by the auction over each row's cheapest entries, checked exactly against the full matrix
    /// at the end: the same guarantee, bids that never leave shared memory. Off: the dense
    /// auction.
    pub sparse: bool,
    /// On the sparse path, race the epsilon schedules of [`RACE_VARIANTS`] on the cluster's
    /// blocks and keep the least-work result (sm_90 and newer; older cards run block 0's
    /// schedule only). Off: the configured theta alone.
    pub race: bool,
}

impl Default for AssignConfig {
    fn default() -> Self {
        AssignConfig {
            theta: 8,
            levels: 1 << 24,
            max_rounds: 1 << 20,
            block_threads: 0,
            shortest_path: true,
            sparse: true,
            race: true,
        }
    }
}

impl AssignConfig {
    /// Checks the ranges documented on the fields.
    pub fn validate(&self) -> Result<(), AssignError> {
        if !(2..=64).contains(&self.theta) {
            return Err(AssignError::Config(format!(
                "theta {} outside 2..=64",
                self.theta
            )));
        }
        if self.levels == 0 || self.levels > i32::MAX as u32 {
            return Err(AssignError::Config(format!(
                "levels {} outside 1..=2^31-1",
                self.levels
            )));
        }
        if self.max_rounds == 0 {
            return Err(AssignError::Config("max_rounds must be positive".into()));
        }
        let t = self.block_threads;
        if t != 0 && (t % 32 != 0 || !(64..=1024).contains(&t)) {
            return Err(AssignError::Config(format!(
                "block_threads {t} is not a multiple of 32 in 64..=1024"
            )));
        }
        Ok(())
    }
}

/// Per-matrix outcome code, shared with the kernel (`AssignInfo::status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Every row (or every column, whichever side is smaller) is assigned optimally.
    Optimal = 0,
    /// +inf entries left some of the smaller side unassigned: the result is a maximum-cardinality
    /// matching of minimum cost among those (scipy raises "cost matrix is infeasible" here).
    Infeasible = 1,
    /// The cost holds NaN or -inf.
    InvalidCost = 2,
    /// The round cap was reached.
    IterationLimit = 3,
    /// The larger side exceeds the launch's shared-memory capacity or [`MAX_SIDE`].
    TooLarge = 4,
    /// A bid increment left the packed range (cannot happen within the documented limits).
    Overflow = 5,
    /// A race variant stopped because another one finished with less work (never reported).
    Aborted = 6,
}

impl Status {
    pub(crate) fn from_code(code: u32) -> Option<Status> {
        Some(match code {
            0 => Status::Optimal,
            1 => Status::Infeasible,
            2 => Status::InvalidCost,
            3 => Status::IterationLimit,
            4 => Status::TooLarge,
            5 => Status::Overflow,
            6 => Status::Aborted,
            _ => return None,
        })
    }
}

/// Why an assignment has no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AssignError {
    /// NaN or -inf in the cost (scipy: "matrix contains invalid numeric entries").
    #[error("matrix {matrix}: the cost holds NaN or -inf")]
    InvalidCost { matrix: usize },
    /// The round cap ([`AssignConfig::max_rounds`]) was reached.
    #[error(
        "matrix {matrix}: no result within {rounds} bidding rounds (AssignConfig::max_rounds)"
    )]
    IterationLimit { matrix: usize, rounds: u32 },
    /// The matrix is larger than the solver's capacity.
    #[error("matrix {matrix}: {message}")]
    TooLarge { matrix: usize, message: String },
    /// A bid left the packed integer range.
    #[error("matrix {matrix}: bid increment overflow")]
    Overflow { matrix: usize },
    /// Returned by [`Assignment::require_complete`] like scipy's "cost matrix is infeasible".
    #[error("matrix {matrix}: cost matrix is infeasible ({unassigned} of the smaller side cannot be assigned)")]
    Infeasible { matrix: usize, unassigned: usize },
    /// Inconsistent shapes or buffers.
    #[error("bad shape: {0}")]
    Shape(String),
    /// An [`AssignConfig`] or tracker/matcher setting out of range.
    #[error("bad config: {0}")]
    Config(String),
    /// The kernel reported a status code this build does not know.
    #[error("matrix {matrix}: unknown status code {code}")]
    UnknownStatus { matrix: usize, code: u32 },
}

/// One solved matrix, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Rows of the cost matrix.
    pub rows: usize,
    /// Columns of the cost matrix.
    pub cols: usize,
    /// Column of each row, -1 when unassigned.
    pub row_to_col: Vec<i32>,
    /// Row of each column, -1 when unassigned.
    pub col_to_row: Vec<i32>,
    /// Sum of the original (f32) costs of the assigned pairs, accumulated in f64.
    pub total_cost: f64,
    /// Members of the smaller side left unassigned because only +inf entries remained.
    pub unassigned: usize,
    /// Quantisation step 1/S of this matrix; 0 when the costs were used exactly (integer costs
    /// whose range fits the levels). The guarantee is `total_cost <= optimum + gap_bound()`.
    pub quantum: f64,
    /// Bidding rounds used (forward + reverse, all phases); row scans for
    /// [`Algorithm::ShortestPath`].
    pub rounds: u32,
    /// Epsilon-scaling phases used (0 for [`Algorithm::ShortestPath`]).
    pub phases: u32,
    /// The solver that produced it.
    pub algorithm: Algorithm,
    /// The race variant whose result this is (block of the cluster, see [`RACE_VARIANTS`]); 0
    /// without a race.
    pub variant: u32,
}

impl Assignment {
    /// An assignment with nothing assigned.
    pub(crate) fn empty(rows: usize, cols: usize) -> Assignment {
        Assignment {
            rows,
            cols,
            row_to_col: vec![-1; rows],
            col_to_row: vec![-1; cols],
            total_cost: 0.0,
            unassigned: 0,
            quantum: 0.0,
            rounds: 0,
            phases: 0,
            algorithm: Algorithm::Auction,
            variant: 0,
        }
    }

    /// Assigned (row, col) pairs in row order, like scipy's `linear_sum_assignment`.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        self.row_to_col
            .iter()
            .enumerate()
            .filter(|(_, &c)| c >= 0)
            .map(|(r, &c)| (r, c as usize))
            .collect()
    }

    /// Number of assigned pairs.
    pub fn assigned(&self) -> usize {
        self.row_to_col.iter().filter(|&&c| c >= 0).count()
    }

    /// Whether every member of the smaller side is assigned.
    pub fn is_complete(&self) -> bool {
        self.unassigned == 0
    }

    /// The proven bound: `total_cost` exceeds the true optimum of the f32 costs (over
    /// maximum-cardinality matchings) by at most this much. 0 in exact integer mode.
    pub fn gap_bound(&self) -> f64 {
        self.assigned() as f64 * self.quantum
    }

    /// Fails like scipy when the matrix admits no complete assignment.
    pub fn require_complete(self, matrix: usize) -> Result<Assignment, AssignError> {
        if self.is_complete() {
            Ok(self)
        } else {
            Err(AssignError::Infeasible {
                matrix,
                unassigned: self.unassigned,
            })
        }
    }
}

/// Maps a non-optimal status to its error (Infeasible is a result, not an error).
pub(crate) fn status_error(
    matrix: usize,
    status: Status,
    rounds: u32,
    objects: usize,
) -> Option<AssignError> {
    match status {
        Status::Optimal | Status::Infeasible => None,
        Status::InvalidCost => Some(AssignError::InvalidCost { matrix }),
        Status::IterationLimit => Some(AssignError::IterationLimit { matrix, rounds }),
        Status::TooLarge => Some(AssignError::TooLarge {
            matrix,
            message: format!(
                "the larger side ({objects}) exceeds the launch capacity or {MAX_SIDE}"
            ),
        }),
        Status::Overflow => Some(AssignError::Overflow { matrix }),
        Status::Aborted => Some(AssignError::UnknownStatus {
            matrix,
            code: Status::Aborted as u32,
        }),
    }
}
