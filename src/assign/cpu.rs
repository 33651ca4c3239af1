//! CPU model of `kernels/assign.cu`'s `assign_solve`, step for step: the same quantisation,
//! the same Jacobi rounds (every bid of a round sees the prices of the round's start, the
//! highest packed key wins), the same rotated tie-breaking and epsilon schedule. It therefore
//! returns the same assignment as the GPU, which the GPU tests check, and it is what the CI
//! tests check against the exact [`super::oracle`].
//!
//! Matrices that [`super::uses_shortest_path`] selects are solved as the kernel solves them:
//! by [`super::oracle`]'s shortest augmenting paths on the flushed costs (same f64 operations,
//! same tie rules, so the same result).
//!
//! Terms: the smaller side of the matrix are the *persons* (they bid), the larger side the
//! *objects* (they carry prices). Rows are persons unless rows > cols (then the matrix is used
//! transposed). Benefits are `a = -(n + 1) * q` for quantised integer costs `q`, `n` persons.

use super::{
    oracle, race_key, race_variant, sparse_cut_round_cap, sparse_round_cap, status_error,
    uses_shortest_path, uses_sparse, Algorithm, AssignConfig, AssignError, Assignment, Status,
    MAX_INCREMENT, MAX_SIDE, RACE_VARIANTS, RACE_WORK_BLOCK_ROUND, RACE_WORK_CHAIN_STEP,
    RACE_WORK_FULL_ROUND, RACE_WORK_WARP_ROUND, SCALED_RANGE_LIMIT, SPARSE_SLOTS,
    SPARSE_WARP_BIDDERS,
};

/// Subnormal costs are zero: the kernels run with flush-to-zero, and the model must agree.
pub fn flush_subnormal(c: f32) -> f32 {
    if c.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        c
    }
}

/// What one pass over a cost matrix finds (the kernel's first pass).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CostScan {
    /// NaN or -inf somewhere.
    Invalid,
    /// No finite entry (every entry is +inf).
    NoFinite,
    /// Range and flags of the finite entries.
    Finite {
        cmin: f32,
        cmax: f32,
        has_forbidden: bool,
        all_integer: bool,
    },
}

/// Scans `rows x cols` costs with row stride `ld`.
pub fn scan_costs(cost: &[f32], rows: usize, cols: usize, ld: usize) -> CostScan {
    let (mut cmin, mut cmax) = (f32::INFINITY, f32::NEG_INFINITY);
    let (mut has_forbidden, mut all_integer, mut any_finite) = (false, true, false);
    for r in 0..rows {
        for &raw in &cost[r * ld..r * ld + cols] {
            let c = flush_subnormal(raw);
            if c.is_nan() || c == f32::NEG_INFINITY {
                return CostScan::Invalid;
            }
            if c == f32::INFINITY {
                has_forbidden = true;
                continue;
            }
            any_finite = true;
            cmin = cmin.min(c);
            cmax = cmax.max(c);
            all_integer &= c.trunc() == c;
        }
    }
    if !any_finite {
        return CostScan::NoFinite;
    }
    CostScan::Finite {
        cmin,
        cmax,
        has_forbidden,
        all_integer,
    }
}

/// How one matrix's float costs become integers (the kernel computes the same on thread 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    /// Smallest finite cost: quantised to 0.
    pub cmin: f32,
    /// Multiplier S: `q = round_half_even((c - cmin) * S)`, clamped to `0..=levels`.
    pub scale: f64,
    /// K: the largest quantised finite cost.
    pub levels: i64,
    /// 1/S when quantised, 0 when exact.
    pub quantum: f64,
    /// n + 1 for n persons: benefits are `-(n + 1) * q`, which makes epsilon = 1 exact.
    pub mult: i64,
    /// Benefit magnitude of a forbidden (+inf) pair, `(n * K + 1) * mult`; 0 without any.
    pub big: i64,
    /// The scaled range of the benefits, `mult * levels` (`mult * (n K + 1)` with +inf
    /// entries): the first epsilon is a fraction of it ([`Scaling::first_epsilon`]).
    pub range: i64,
}

impl Scaling {
    /// Chooses the scaling of a matrix with `persons` on its smaller side.
    pub fn choose(
        cmin: f32,
        cmax: f32,
        has_forbidden: bool,
        all_integer: bool,
        persons: usize,
        cfg: &AssignConfig,
    ) -> Scaling {
        let n = persons as u64;
        let range = cmax as f64 - cmin as f64;
        let denom = (n + 1) * if has_forbidden { n + 1 } else { 1 };
        let kcap = (cfg.levels as u64).min(SCALED_RANGE_LIMIT / denom).max(1);
        let (scale, levels, quantum) = if range == 0.0 {
            (0.0, 0i64, 0.0)
        } else if all_integer && range <= kcap as f64 {
            (1.0, range as i64, 0.0)
        } else {
            (kcap as f64 / range, kcap as i64, range / kcap as f64)
        };
        let mult = n as i64 + 1;
        let big_q = if has_forbidden {
            n as i64 * levels + 1
        } else {
            0
        };
        let range_scaled = mult * if has_forbidden { big_q } else { levels };
        Scaling {
            cmin,
            scale,
            levels,
            quantum,
            mult,
            big: big_q * mult,
            range: range_scaled,
        }
    }

    /// The first epsilon of a schedule with factor theta started `divisor` times finer:
    /// `max(1, range / (theta divisor))` (divisor 1 unless racing, see `RACE_VARIANTS`).
    pub fn first_epsilon(&self, theta: u32, divisor: u32) -> i64 {
        (self.range / (theta as i64 * divisor as i64)).max(1)
    }

    /// The quantised cost of one entry; -1 marks a forbidden (+inf) pair.
    pub fn quantize(&self, c: f32) -> i32 {
        let c = flush_subnormal(c);
        if c == f32::INFINITY {
            return -1;
        }
        let d = (c as f64 - self.cmin as f64) * self.scale;
        (d.round_ties_even() as i64).clamp(0, self.levels) as i32
    }
}

/// Next epsilon after a phase that took `forward_rounds` forward rounds. Phases that settle
/// at once are a sign that the current scale carries no information, so the next one skips a
/// factor (the final phase always runs at 1, which alone decides optimality).
pub fn next_epsilon(eps: i64, theta: u32, forward_rounds: u32) -> i64 {
    let theta = theta as i64;
    let step = if forward_rounds <= 2 {
        theta * theta
    } else {
        theta
    };
    (eps / step).max(1)
}

/// A quantised square-free auction problem: `persons x objects` integer costs, row-major by
/// person (already transposed when the matrix has more rows than columns).
#[derive(Debug, Clone)]
pub struct Problem {
    /// Persons n (the smaller side).
    pub persons: usize,
    /// Objects M (the larger side).
    pub objects: usize,
    /// Whether persons are the matrix's columns.
    pub transposed: bool,
    /// Quantised costs, `persons x objects`, -1 = forbidden.
    pub q: Vec<i32>,
    /// The scaling used.
    pub scaling: Scaling,
    /// Per person, the kept entries (benefit, object) of the sparse path in rotated-position
    /// order (see [`select_kept`]); empty on the dense path.
    pub kept: Vec<Vec<(i64, usize)>>,
    /// Sparse path: whether phases before the last may end early ([`super::SPARSE_PHASE_CUT`]); off
    /// when at least an eighth of the rows tie at their minimum (see [`row_ties_at_minimum`]).
    pub phase_cut: bool,
}

/// Whether a quantised row's minimum occurs more than once. Rows like that in an eighth of the
/// matrix or more mean ties, where a person carried into the next phase can start a price war
/// at the finer epsilon (300x300 with 8 distinct values: 3-5x the rounds, often past the sparse
/// budget; 384x384 integers below 1000: up to 3.5x), so the sparse path then keeps whole
/// phases.
pub fn row_ties_at_minimum(q_row: &[i32]) -> bool {
    let lo = q_row.iter().copied().min().unwrap_or(0);
    q_row.iter().filter(|&&v| v == lo).count() >= 2
}

/// The objects person `i` keeps on the sparse path (the kernel's `select_candidates`): with
/// keys `(q_ij, k)`, `k = (j - i) mod m` and lane `k mod 32`, T_r is the r-th smallest of the 32
/// lane minima; kept are the entries with key <= T_r and the diagonal (k = 0), for the largest
/// r <= slots / 2 whose set fits `slots`. Returned in increasing k.
pub fn select_kept(q_row: &[i32], i: usize, slots: usize) -> Vec<usize> {
    let m = q_row.len();
    let key = |k: usize| ((q_row[(i + k) % m] as u32 as u64) << 16) | k as u64;
    let mut lane_min = [u64::MAX; 32];
    for k in 0..m {
        lane_min[k % 32] = lane_min[k % 32].min(key(k));
    }
    lane_min.sort_unstable();
    let kept_upto = |t: u64| (0..m).filter(move |&k| k == 0 || key(k) <= t);
    let r = (1..=slots / 2)
        .rev()
        .find(|&r| kept_upto(lane_min[r - 1]).count() <= slots)
        .unwrap_or(1);
    kept_upto(lane_min[r - 1]).map(|k| (i + k) % m).collect()
}

impl Problem {
    /// Quantises a finite-scanned matrix.
    pub fn new(
        cost: &[f32],
        rows: usize,
        cols: usize,
        ld: usize,
        scan: CostScan,
        cfg: &AssignConfig,
    ) -> Option<Problem> {
        let CostScan::Finite {
            cmin,
            cmax,
            has_forbidden,
            all_integer,
        } = scan
        else {
            return None;
        };
        let transposed = rows > cols;
        let (persons, objects) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let scaling = Scaling::choose(cmin, cmax, has_forbidden, all_integer, persons, cfg);
        let mut q = Vec::with_capacity(persons * objects);
        for i in 0..persons {
            for j in 0..objects {
                let c = if transposed {
                    cost[j * ld + i]
                } else {
                    cost[i * ld + j]
                };
                q.push(scaling.quantize(c));
            }
        }
        let mut p = Problem {
            persons,
            objects,
            transposed,
            q,
            scaling,
            kept: Vec::new(),
            phase_cut: false,
        };
        if uses_sparse(cfg, persons, objects, has_forbidden) {
            p.kept = (0..persons)
                .map(|i| {
                    let row = &p.q[i * objects..(i + 1) * objects];
                    select_kept(row, i, SPARSE_SLOTS)
                        .into_iter()
                        .map(|j| (p.benefit_of(row[j]), j))
                        .collect()
                })
                .collect();
            // A column kept by no row but its diagonal one: the rows rank the columns alike
            // (low rank, sums) and the kernel goes dense at once.
            let mut covered = vec![false; objects];
            for (i, kept) in p.kept.iter().enumerate() {
                kept.iter()
                    .filter(|&&(_, j)| j != i)
                    .for_each(|&(_, j)| covered[j] = true);
            }
            if covered.contains(&false) {
                p.kept.clear();
            }
            let tied = (0..persons)
                .filter(|&i| row_ties_at_minimum(&p.q[i * objects..(i + 1) * objects]))
                .count();
            p.phase_cut = 8 * tied < persons;
        }
        Some(p)
    }

    /// Whether this problem starts on the sparse path.
    pub fn is_sparse(&self) -> bool {
        !self.kept.is_empty()
    }

    /// Best and second-best value over person i's kept entries (the kernel's `sparse_scan`;
    /// ties to the smaller rotated position, as in a full scan).
    fn scan_kept(&self, price: &[i64], i: usize) -> Top2 {
        let m = self.objects;
        let mut t = Top2::new();
        for &(a, j) in &self.kept[i] {
            t.insert(a - price[j], if j >= i { j - i } else { j + m - i });
        }
        t
    }

    /// Benefit of person `i` for object `j`.
    pub fn benefit(&self, i: usize, j: usize) -> i64 {
        self.benefit_of(self.q[i * self.objects + j])
    }

    fn benefit_of(&self, q: i32) -> i64 {
        if q < 0 {
            -self.scaling.big
        } else {
            -(q as i64) * self.scaling.mult
        }
    }

    /// Best and second-best value over objects, scanned from object `i` on (rotation spreads
    /// ties: with all-equal costs person i takes object i at once).
    fn scan_person(&self, price: &[i64], i: usize) -> Top2 {
        let m = self.objects;
        let row = &self.q[i * m..(i + 1) * m];
        let mut t = Top2::new();
        for k in 0..m {
            let j = if i + k >= m { i + k - m } else { i + k };
            t.insert(self.benefit_of(row[j]) - price[j], k);
        }
        t
    }

    /// [`Problem::scan_person`] that also refreshes person i's bid candidates: the best object
    /// of each of `CANDIDATES` lane groups (scan position k is in group `(k % 32) % CANDIDATES`,
    /// the kernel's lanes after its first merge steps) and the bound every other value is <=.
    fn scan_person_keep(&self, price: &[i64], i: usize, cand: &mut Candidates) -> Top2 {
        let m = self.objects;
        let row = &self.q[i * m..(i + 1) * m];
        let mut groups = [Top2::new(); CANDIDATES];
        let mut t = Top2::new();
        for k in 0..m {
            let j = if i + k >= m { i + k - m } else { i + k };
            let v = self.benefit_of(row[j]) - price[j];
            groups[(k % 32) % CANDIDATES].insert(v, k);
            t.insert(v, k);
        }
        let keep = &mut cand.objects[i * CANDIDATES..(i + 1) * CANDIDATES];
        for (slot, g) in keep.iter_mut().zip(&groups) {
            *slot = (g.v1 != i64::MIN).then(|| {
                let j = (i + g.k1) % m;
                (self.benefit_of(row[j]), j)
            });
        }
        cand.bound[i] = groups.iter().map(|g| g.v2).max().unwrap_or(i64::MIN);
        t
    }

    /// Person i's bid scan (the kernel's `bid_scan`): decided by the kept candidates when their
    /// best two values c1 >= c2 satisfy c2 >= bound and c1 > bound (prices only rise within a
    /// forward part, so no other object can reach them), else a full scan that refreshes them.
    /// Same result as [`Problem::scan_person`] either way.
    fn bid_scan(&self, price: &[i64], i: usize, cand: &mut Candidates) -> Top2 {
        let m = self.objects;
        let mut t = Top2::new();
        let mut kept: Vec<(i64, usize)> = cand.objects[i * CANDIDATES..(i + 1) * CANDIDATES]
            .iter()
            .flatten()
            .map(|&(a, j)| (a - price[j], if j >= i { j - i } else { j + m - i }))
            .collect();
        kept.sort_by_key(|&(_, k)| k);
        kept.iter().for_each(|&(v, k)| t.insert(v, k));
        let bound = cand.bound[i];
        if t.v2 >= bound && t.v1 > bound {
            debug_assert_eq!(
                t,
                self.scan_person(price, i),
                "candidate scan of person {i}"
            );
            cand.hits += 1;
            return t;
        }
        cand.misses += 1;
        self.scan_person_keep(price, i, cand)
    }

    /// Best and second-best `a_ij - profit_i` over persons, scanned from person `j mod n` on.
    fn scan_object(&self, profit: &[i64], j: usize) -> Top2 {
        let n = self.persons;
        let start = j % n;
        let mut t = Top2::new();
        for k in 0..n {
            let i = if start + k >= n {
                start + k - n
            } else {
                start + k
            };
            t.insert(self.benefit(i, j) - profit[i], k);
        }
        t
    }
}

/// Bid candidates kept per person (the kernel's widest cache; any width gives the same bids).
const CANDIDATES: usize = 32;

/// Per person: the candidates of its last full scan (benefit, object) and their bound.
struct Candidates {
    objects: Vec<Option<(i64, usize)>>,
    bound: Vec<i64>,
    hits: u64,
    misses: u64,
}

/// Best value, its scan position and the second-best value (i64::MIN when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Top2 {
    v1: i64,
    v2: i64,
    k1: usize,
}

impl Top2 {
    fn new() -> Top2 {
        Top2 {
            v1: i64::MIN,
            v2: i64::MIN,
            k1: usize::MAX,
        }
    }

    fn insert(&mut self, v: i64, k: usize) {
        if v > self.v1 {
            self.v2 = self.v1;
            self.v1 = v;
            self.k1 = k;
        } else if v > self.v2 {
            self.v2 = v;
        }
    }
}

fn key(increment: i64, id: usize) -> u64 {
    ((increment as u64) << 16) | (id as u64 + 1)
}

fn key_id(key: u64) -> usize {
    (key & 0xFFFF) as usize
}

/// The auction's outcome: the object of every person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuctionOutcome {
    /// Object of each person (every person is assigned).
    pub object_of_person: Vec<usize>,
    /// Rounds used.
    pub rounds: u32,
    /// Phases used.
    pub phases: u32,
    /// Bids decided by the kept candidates (no scan of the costs; see `bid_scan`).
    pub candidate_bids: u64,
    /// Bids after the first round of a phase that needed a full scan.
    pub scanned_bids: u64,
    /// Sparse path: rows the final check turned dense (an entry outside their kept ones
    /// violated epsilon-complementary slackness).
    pub dense_rows: usize,
    /// Whether the result came from the sparse path (false after its fallback to dense).
    pub sparse: bool,
    /// The race variant that produced it (0 without a race; see `RACE_VARIANTS`).
    pub variant: u32,
    /// Its work (rounds weighted by their kind, see `RACE_WORK_FULL_ROUND`).
    pub work: u64,
}

/// Mutable auction state, as the kernel keeps it in shared memory.
struct State {
    price: Vec<i64>,
    owner: Vec<i32>,
    object: Vec<i32>,
    profit: Vec<i64>,
    slot: Vec<u64>,
    target: Vec<i32>,
    aux: Vec<i64>,
    cand: Candidates,
    /// Sparse path: rows scanned in full (after a failed check).
    dense: Vec<bool>,
    /// Whether the sparse path is on (it falls back to dense past its round budget).
    sparse: bool,
    /// Whether phases before the last may end early (`Problem::phase_cut`, until the budget of
    /// the cut runs out).
    phase_cut: bool,
    rounds: u32,
    /// Round cap: the sparse path's budget, else `AssignConfig::max_rounds`.
    cap: u32,
    /// Race: the variant (block) this state belongs to, its work so far, and the key of the
    /// best finished variant (`u64::MAX`: none), past which this one stops with
    /// [`Status::Aborted`].
    rank: usize,
    work: u64,
    stop: u64,
    /// This variant's schedule: epsilon factor, first epsilon, bidders that end a phase.
    theta: u32,
    eps0: i64,
    cut: usize,
}

impl State {
    /// Counts a round of the given work (`RACE_WORK_*`).
    fn count_round(&mut self, work: u64) -> Result<(), Status> {
        self.rounds += 1;
        self.work += work;
        if self.rounds > self.cap {
            Err(Status::IterationLimit)
        } else if race_key(self.work, self.rank) > self.stop {
            Err(Status::Aborted)
        } else {
            Ok(())
        }
    }

    /// The work of a forward round with `bidders` bidders: the kernel runs a lone bidder's
    /// chain in warp 0, sparse rounds of up to [`SPARSE_WARP_BIDDERS`] there too, the others
    /// block-wide.
    fn forward_round_work(&self, bidders: usize) -> u64 {
        match bidders {
            1 => RACE_WORK_CHAIN_STEP,
            2..=4 if self.sparse => RACE_WORK_WARP_ROUND[0],
            5..=8 if self.sparse => RACE_WORK_WARP_ROUND[1],
            9..=SPARSE_WARP_BIDDERS if self.sparse => RACE_WORK_WARP_ROUND[2],
            _ => RACE_WORK_BLOCK_ROUND,
        }
    }
}

/// Runs the auction on a quantised problem (n >= 1 persons). A sparse problem with
/// [`AssignConfig::race`] runs every race variant and returns the one with the least work (ties
/// to the lower rank), as the kernel's cluster does; when none succeeds, variant 0's error.
pub fn auction(p: &Problem, cfg: &AssignConfig) -> Result<AuctionOutcome, Status> {
    if !(cfg.race && p.is_sparse()) {
        return auction_variant(p, cfg, 0, u64::MAX);
    }
    let mut best: Option<AuctionOutcome> = None;
    let mut first = Err(Status::IterationLimit);
    for rank in 0..RACE_VARIANTS.len() + 1 {
        // A variant stops once its work exceeds the best so far: it could not win (the kernel's
        // blocks stop the same way, at their own pace; the winner is the same).
        let stop = best
            .as_ref()
            .map_or(u64::MAX, |b| race_key(b.work, b.variant as usize));
        match auction_variant(p, cfg, rank, stop) {
            Ok(outcome) => best = Some(outcome),
            Err(status) if rank == 0 => first = Err(status),
            Err(_) => {}
        }
    }
    best.map_or(first, Ok)
}

/// One variant of the auction (`rank`, see [`race_variant`]), stopping with
/// [`Status::Aborted`] once its race key exceeds `stop` (`u64::MAX`: never).
pub fn auction_variant(
    p: &Problem,
    cfg: &AssignConfig,
    rank: usize,
    stop: u64,
) -> Result<AuctionOutcome, Status> {
    let (n, m) = (p.persons, p.objects);
    let variant = race_variant(cfg, rank);
    let mut s = State {
        price: vec![0; m],
        owner: vec![-1; m],
        object: vec![-1; n],
        profit: vec![0; n],
        slot: vec![0; m.max(n)],
        target: vec![-1; m],
        aux: vec![0; m],
        cand: Candidates {
            objects: vec![None; n * CANDIDATES],
            bound: vec![i64::MIN; n],
            hits: 0,
            misses: 0,
        },
        dense: vec![false; n],
        sparse: p.is_sparse(),
        phase_cut: p.is_sparse() && p.phase_cut,
        rounds: 0,
        cap: match (p.is_sparse(), p.phase_cut) {
            (true, true) => sparse_cut_round_cap(cfg, n),
            (true, false) => sparse_round_cap(cfg, n),
            (false, _) => cfg.max_rounds,
        },
        rank,
        work: 0,
        stop,
        theta: variant.theta,
        eps0: p.scaling.first_epsilon(variant.theta, variant.divisor),
        cut: variant.cut,
    };
    let mut phases = 0u32;
    // Past a budget the solve starts again (the kernel's fallbacks): the sparse path with the
    // phase cut again with whole phases, then the sparse path on the dense one; the rounds so
    // far count, prices and assignment start over.
    let restart = |s: &mut State| {
        s.rounds = s.cap;
        s.price.iter_mut().for_each(|x| *x = 0);
        s.owner.iter_mut().for_each(|x| *x = -1);
        s.object.iter_mut().for_each(|x| *x = -1);
        s.slot.iter_mut().for_each(|x| *x = 0);
    };
    let mut result = phases_and_check(p, &mut s, &mut phases);
    if result == Err(Status::IterationLimit) && s.phase_cut && s.cap < cfg.max_rounds {
        restart(&mut s);
        s.phase_cut = false;
        s.cap = cfg
            .max_rounds
            .min(s.rounds.saturating_add(sparse_round_cap(cfg, n)));
        result = phases_and_check(p, &mut s, &mut phases);
    }
    if result == Err(Status::IterationLimit) && s.sparse && s.cap < cfg.max_rounds {
        restart(&mut s);
        s.cap = cfg.max_rounds;
        s.sparse = false;
        result = phases_and_check(p, &mut s, &mut phases);
    }
    result?;
    Ok(AuctionOutcome {
        object_of_person: s.object.iter().map(|&j| j as usize).collect(),
        rounds: s.rounds,
        phases,
        candidate_bids: s.cand.hits,
        scanned_bids: s.cand.misses,
        dense_rows: s.dense.iter().filter(|&&d| d).count(),
        sparse: s.sparse,
        variant: rank as u32,
        work: s.work,
    })
}

/// The epsilon-scaling phases from `eps0`, then (sparse path) the exact check.
fn phases_and_check(p: &Problem, s: &mut State, phases: &mut u32) -> Result<(), Status> {
    let (n, m) = (p.persons, p.objects);
    let mut eps = s.eps0;
    loop {
        *phases += 1;
        let pmin = s.price.iter().copied().min().unwrap_or(0);
        s.price.iter_mut().for_each(|x| *x -= pmin);
        let rounds_before = s.rounds;
        forward(p, s, eps)?;
        let forward_rounds = s.rounds - rounds_before;
        if n < m {
            reverse(p, s, eps)?;
        }
        if eps == 1 {
            break;
        }
        eps = next_epsilon(eps, s.theta, forward_rounds);
    }
    if s.sparse {
        sparse_check(p, s)?;
    }
    Ok(())
}

/// The sparse path's exact check at eps = 1: a person with an entry outside its kept ones that
/// violates epsilon-complementary slackness (`a_ij - p_j > profit_i + 1`) turns dense, releases
/// its object and bids with a full scan; the forward rounds continue, and the check repeats
/// until it passes. Then the optimality argument of the dense auction holds for the full matrix.
fn sparse_check(p: &Problem, s: &mut State) -> Result<(), Status> {
    let (n, m) = (p.persons, p.objects);
    loop {
        let mut list = Vec::new();
        for i in 0..n {
            if s.dense[i] {
                continue;
            }
            let limit = s.profit[i] + 1;
            if !(0..m).any(|j| p.benefit(i, j) - s.price[j] > limit) {
                continue;
            }
            let o = s.object[i] as usize;
            s.owner[o] = -1;
            s.object[i] = -1;
            s.dense[i] = true;
            let t = p.scan_person(&s.price, i);
            place_bid(s, i, (i + t.k1) % m, t, 1)?;
            list.push(i);
        }
        if list.is_empty() {
            return Ok(());
        }
        s.count_round(RACE_WORK_FULL_ROUND)?;
        forward_rounds(p, s, 1, list)?;
    }
}

/// A bid's scan (the kernel's `bid_values`): over the kept entries of a sparse row, else the
/// dense bid scan (the candidate cache gives the full scan's result; the sparse path's kernel
/// runs without it, which is the same).
fn bid_values(p: &Problem, s: &mut State, i: usize) -> Top2 {
    if s.sparse && !s.dense[i] {
        p.scan_kept(&s.price, i)
    } else if s.sparse {
        p.scan_person(&s.price, i)
    } else {
        p.bid_scan(&s.price, i, &mut s.cand)
    }
}

/// Records person i's bid for its best object (the kernel's `place_bid`).
fn place_bid(s: &mut State, i: usize, j: usize, t: Top2, eps: i64) -> Result<(), Status> {
    let second = if t.v2 == i64::MIN { t.v1 } else { t.v2 };
    let increment = t.v1 - second + eps;
    if increment >= MAX_INCREMENT {
        return Err(Status::Overflow);
    }
    s.target[i] = j as i32;
    s.aux[i] = t.v1 - increment;
    s.slot[j] = s.slot[j].max(key(increment, i));
    Ok(())
}

/// Forward part of a phase: persons violating epsilon-complementary slackness are released,
/// then unassigned persons bid until everyone holds an object.
fn forward(p: &Problem, s: &mut State, eps: i64) -> Result<(), Status> {
    let m = p.objects;
    s.count_round(RACE_WORK_FULL_ROUND)?;
    // Full-scan round: every person checks its object against the best one.
    let mut list = Vec::new();
    for i in 0..p.persons {
        let t = if s.sparse && !s.dense[i] {
            p.scan_kept(&s.price, i)
        } else {
            p.scan_person_keep(&s.price, i, &mut s.cand)
        };
        let j = (i + t.k1) % m;
        if s.object[i] >= 0 {
            let o = s.object[i] as usize;
            let own = p.benefit(i, o) - s.price[o];
            if own >= t.v1 - eps {
                s.profit[i] = own;
                continue;
            }
            s.owner[o] = -1;
            s.object[i] = -1;
        }
        place_bid(s, i, j, t, eps)?;
        list.push(i);
    }
    forward_rounds(p, s, eps, list)
}

/// Resolves the bids of `list` and runs the forward rounds that follow until no bidder is left.
fn forward_rounds(
    p: &Problem,
    s: &mut State,
    eps: i64,
    mut list: Vec<usize>,
) -> Result<(), Status> {
    let m = p.objects;
    loop {
        // Resolve: the highest key on each object wins it.
        let mut next = Vec::new();
        for &i in &list {
            let j = s.target[i] as usize;
            let key = s.slot[j];
            if key_id(key) == i + 1 {
                s.price[j] += (key >> 16) as i64;
                let old = s.owner[j];
                s.owner[j] = i as i32;
                s.object[i] = j as i32;
                s.profit[i] = s.aux[i];
                s.slot[j] = 0;
                if old >= 0 {
                    s.object[old as usize] = -1;
                    next.push(old as usize);
                }
            } else {
                next.push(i);
            }
        }
        if next.is_empty() || (s.sparse && s.phase_cut && eps > 1 && next.len() <= s.cut) {
            return Ok(());
        }
        s.count_round(s.forward_round_work(next.len()))?;
        for &i in &next {
            let t = bid_values(p, s, i);
            place_bid(s, i, (i + t.k1) % m, t, eps)?;
        }
        list = next;
    }
}

/// Reverse step of object j: lower its price to lambda when no person wants it enough, else
/// offer it to the best person at the price that keeps the others epsilon-satisfied. Returns
/// whether j made an offer.
fn reverse_bid(
    p: &Problem,
    s: &mut State,
    j: usize,
    lambda: i64,
    eps: i64,
) -> Result<bool, Status> {
    let n = p.persons;
    let t = p.scan_object(&s.profit, j);
    if t.v1 - eps <= lambda {
        s.price[j] = lambda;
        s.target[j] = -1;
        return Ok(false);
    }
    let i = (j % n + t.k1) % n;
    let new_price = if t.v2 == i64::MIN {
        lambda
    } else {
        lambda.max(t.v2 - eps)
    };
    let delta = t.v1 - new_price;
    if delta >= MAX_INCREMENT {
        return Err(Status::Overflow);
    }
    s.target[j] = i as i32;
    s.aux[j] = new_price;
    s.slot[i] = s.slot[i].max(key(delta, j));
    Ok(true)
}

/// Reverse part of a phase (only when persons < objects): every unassigned object priced
/// above lambda (the lowest assigned price) bids for persons until none is left, which makes
/// the final assignment optimal for the rectangular problem (docs/ASSIGN.md).
fn reverse(p: &Problem, s: &mut State, eps: i64) -> Result<(), Status> {
    let m = p.objects;
    let lambda = (0..m)
        .filter(|&j| s.owner[j] >= 0)
        .map(|j| s.price[j])
        .min()
        .unwrap_or(0);
    s.count_round(RACE_WORK_FULL_ROUND)?;
    let mut list = Vec::new();
    for j in 0..m {
        if s.owner[j] < 0 && s.price[j] > lambda && reverse_bid(p, s, j, lambda, eps)? {
            list.push(j);
        }
    }
    loop {
        let mut next = Vec::new();
        for &j in &list {
            if s.target[j] < 0 {
                continue;
            }
            let i = s.target[j] as usize;
            let key = s.slot[i];
            if key_id(key) == j + 1 {
                let k = s.object[i] as usize;
                s.price[j] = s.aux[j];
                s.owner[j] = i as i32;
                s.object[i] = j as i32;
                s.profit[i] += (key >> 16) as i64;
                s.owner[k] = -1;
                s.slot[i] = 0;
                if s.price[k] > lambda {
                    next.push(k);
                }
            } else {
                next.push(j);
            }
        }
        if next.is_empty() {
            return Ok(());
        }
        s.count_round(if next.len() == 1 {
            RACE_WORK_CHAIN_STEP
        } else {
            RACE_WORK_BLOCK_ROUND
        })?;
        for &j in &next {
            reverse_bid(p, s, j, lambda, eps)?;
        }
        list = next;
    }
}

/// Solves one `rows x cols` matrix (row stride `ld`) on the CPU exactly as the GPU does.
pub fn solve(
    cost: &[f32],
    rows: usize,
    cols: usize,
    ld: usize,
    cfg: &AssignConfig,
) -> Result<Assignment, AssignError> {
    cfg.validate()?;
    if rows > 0 && cols > 0 && (ld < cols || cost.len() < (rows - 1) * ld + cols) {
        return Err(AssignError::Shape(format!(
            "{rows}x{cols} matrix with row stride {ld} needs {} elements, got {}",
            (rows - 1) * ld + cols,
            cost.len()
        )));
    }
    let mut out = Assignment::empty(rows, cols);
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    if rows.max(cols) > MAX_SIDE {
        return Err(AssignError::TooLarge {
            matrix: 0,
            message: format!("{rows}x{cols} exceeds {MAX_SIDE} per side"),
        });
    }
    let scan = scan_costs(cost, rows, cols, ld);
    let problem = match scan {
        CostScan::Invalid => return Err(AssignError::InvalidCost { matrix: 0 }),
        CostScan::NoFinite => {
            out.unassigned = rows.min(cols);
            return Ok(out);
        }
        CostScan::Finite { has_forbidden, .. } => {
            if uses_shortest_path(cfg, rows.min(cols), rows.max(cols), has_forbidden) {
                return solve_shortest_path(cost, rows, cols, ld, cfg);
            }
            Problem::new(cost, rows, cols, ld, scan, cfg)
        }
    };
    let Some(p) = problem else {
        return Ok(out);
    };
    let outcome = auction(&p, cfg).map_err(|status| {
        status_error(0, status, cfg.max_rounds, p.objects).unwrap_or(AssignError::UnknownStatus {
            matrix: 0,
            code: status as u32,
        })
    })?;
    for (i, &j) in outcome.object_of_person.iter().enumerate() {
        if p.q[i * p.objects + j] < 0 {
            out.unassigned += 1;
            continue;
        }
        let (r, c) = if p.transposed { (j, i) } else { (i, j) };
        add_pair(&mut out, cost, ld, r, c);
    }
    out.quantum = p.scaling.quantum;
    out.rounds = outcome.rounds;
    out.phases = outcome.phases;
    out.variant = outcome.variant;
    if outcome.sparse {
        out.algorithm = Algorithm::SparseAuction;
    }
    Ok(out)
}

/// Records the pair (row r, column c) and adds its original cost to the total.
fn add_pair(out: &mut Assignment, cost: &[f32], ld: usize, r: usize, c: usize) {
    out.row_to_col[r] = c as i32;
    out.col_to_row[c] = r as i32;
    out.total_cost += cost[r * ld + c] as f64;
}

/// The kernel's shortest-path branch: the oracle on the flushed costs (no +inf; the caller
/// checked [`uses_shortest_path`]). Rounds are the row scans.
fn solve_shortest_path(
    cost: &[f32],
    rows: usize,
    cols: usize,
    ld: usize,
    cfg: &AssignConfig,
) -> Result<Assignment, AssignError> {
    let flushed: Vec<f64> = (0..rows * cols)
        .map(|e| flush_subnormal(cost[(e / cols) * ld + e % cols]) as f64)
        .collect();
    let solution = oracle::solve(&flushed, rows, cols).map_err(|_| AssignError::Infeasible {
        matrix: 0,
        unassigned: rows.min(cols),
    })?;
    if solution.row_scans > cfg.max_rounds as usize {
        return Err(AssignError::IterationLimit {
            matrix: 0,
            rounds: cfg.max_rounds,
        });
    }
    let mut out = Assignment::empty(rows, cols);
    for (r, &c) in solution.row_to_col.iter().enumerate() {
        if c >= 0 {
            add_pair(&mut out, cost, ld, r, c as usize);
        }
    }
    out.rounds = solution.row_scans as u32;
    out.algorithm = Algorithm::ShortestPath;
    Ok(out)
}
