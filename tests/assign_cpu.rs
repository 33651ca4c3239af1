//! CI tests of the assignment logic on the CPU: the CPU model of the GPU auction against the
//! exact oracle (integer costs exactly, float costs within the stated bound, and exactly on
//! the quantised integers), the shortest-path branch (= the oracle, row scans included), the
//! sparse path (exact on the full matrix), rectangular both ways, ties, +inf, NaN, empty inputs, the round
//! cap, the matcher's cost rules and the tracker model.

mod common;

use common::assign::check_against_scipy;
use finesam::assign::cpu::{self, CostScan, Problem};
use finesam::assign::matcher::{cost_cpu, match_cpu};
use finesam::assign::oracle;
use finesam::assign::random::SplitMix64;
use finesam::assign::tracker::iou;
use finesam::assign::{
    race_key, sparse_cut_round_cap, sparse_round_cap, uses_shortest_path, uses_sparse, Algorithm,
    AssignConfig, AssignError, Assignment, CpuTracker, MatcherConfig, TrackerConfig, RACE_VARIANTS,
};

fn to_f64(cost: &[f32]) -> Vec<f64> {
    cost.iter().map(|&c| c as f64).collect()
}

/// Subnormals as zero (both solvers run flush-to-zero).
fn flushed(cost: &[f32]) -> Vec<f32> {
    cost.iter().map(|&c| cpu::flush_subnormal(c)).collect()
}

/// Structural checks: pairs are consistent, each row and column used at most once, the total
/// is the sum of the pairs.
fn check_structure(a: &Assignment, cost: &[f32]) {
    assert_eq!(a.row_to_col.len(), a.rows);
    assert_eq!(a.col_to_row.len(), a.cols);
    let mut total = 0.0;
    for (r, &c) in a.row_to_col.iter().enumerate() {
        if c >= 0 {
            assert_eq!(
                a.col_to_row[c as usize], r as i32,
                "row {r} -> col {c} not mirrored"
            );
            total += cost[r * a.cols + c as usize] as f64;
        }
    }
    let assigned_cols = a.col_to_row.iter().filter(|&&r| r >= 0).count();
    assert_eq!(assigned_cols, a.assigned());
    assert_eq!(
        a.assigned() + a.unassigned,
        a.rows.min(a.cols),
        "every member of the smaller side is assigned or counted unassigned"
    );
    assert!((total - a.total_cost).abs() <= 1e-9 * (1.0 + total.abs()));
}

/// Solves with the CPU model and checks against the oracle: exact when `exact`, else within
/// the reported bound; also checks exactness on the quantised problem.
/// Checks both solvers (the auction alone, and with the shortest-path branch enabled) and
/// returns the result under `cfg`.
fn check(cost: &[f32], rows: usize, cols: usize, cfg: &AssignConfig, exact: bool) -> Assignment {
    let other = AssignConfig {
        shortest_path: !cfg.shortest_path,
        ..*cfg
    };
    check_one(cost, rows, cols, &other, exact);
    check_one(cost, rows, cols, cfg, exact)
}

fn check_one(
    cost: &[f32],
    rows: usize,
    cols: usize,
    cfg: &AssignConfig,
    exact: bool,
) -> Assignment {
    let a = cpu::solve(cost, rows, cols, cols, cfg).expect("solve");
    let has_inf = cost.contains(&f32::INFINITY);
    let (persons, objects) = (rows.min(cols), rows.max(cols));
    let expected = if uses_shortest_path(cfg, persons, objects, has_inf) {
        Algorithm::ShortestPath
    } else if uses_sparse(cfg, persons, objects, has_inf) {
        Algorithm::SparseAuction
    } else {
        Algorithm::Auction
    };
    // The sparse path may fall back to the dense auction (kept sets too narrow, round budget).
    let fell_back = expected == Algorithm::SparseAuction && a.algorithm == Algorithm::Auction;
    assert!(
        a.algorithm == expected || fell_back,
        "{rows}x{cols}: solver choice {:?}, expected {expected:?}",
        a.algorithm
    );
    check_structure(&a, cost);
    let (o, unassigned) = oracle::solve_max_cardinality(&to_f64(cost), rows, cols);
    assert_eq!(a.unassigned, unassigned, "{rows}x{cols}: cardinality");
    if exact {
        assert_eq!(
            a.quantum, 0.0,
            "{rows}x{cols}: integer costs must be used exactly"
        );
        assert_eq!(a.total_cost, o.total, "{rows}x{cols}: total");
    } else {
        let slack = a.gap_bound() * (1.0 + 1e-9) + 1e-9 * (1.0 + o.total.abs());
        assert!(
            a.total_cost - o.total <= slack
                && o.total - a.total_cost <= 1e-9 * (1.0 + o.total.abs()),
            "{rows}x{cols}: total {} vs optimum {} (bound {})",
            a.total_cost,
            o.total,
            a.gap_bound()
        );
    }
    // The auction is exactly optimal for the integers it actually solved; shortest paths are
    // the oracle itself.
    if a.algorithm == Algorithm::ShortestPath {
        let o = oracle::solve(&to_f64(&flushed(cost)), rows, cols).expect("feasible");
        assert_eq!(
            a.row_to_col, o.row_to_col,
            "{rows}x{cols}: shortest paths = oracle"
        );
        assert_eq!(a.rounds as usize, o.row_scans);
        return a;
    }
    let scan = cpu::scan_costs(cost, rows, cols, cols);
    if let Some(p) = Problem::new(cost, rows, cols, cols, scan, cfg) {
        let q: Vec<f64> =
            p.q.iter()
                .map(|&v| if v < 0 { f64::INFINITY } else { v as f64 })
                .collect();
        let (oq, _) = oracle::solve_max_cardinality(&q, p.persons, p.objects);
        let ours: f64 = a
            .pairs()
            .iter()
            .map(|&(r, c)| {
                let (i, j) = if p.transposed { (c, r) } else { (r, c) };
                p.q[i * p.objects + j] as f64
            })
            .sum();
        assert_eq!(
            ours, oq.total,
            "{rows}x{cols}: not optimal on the quantised costs"
        );
    }
    a
}

fn sizes(rng: &mut SplitMix64, count: usize, max: usize) -> Vec<(usize, usize)> {
    (0..count)
        .map(|_| {
            (
                1 + rng.below(max as u64) as usize,
                1 + rng.below(max as u64) as usize,
            )
        })
        .collect()
}

#[test]
fn oracle_matches_brute_force() {
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for k in 0..=p.len() {
                let mut q = p.clone();
                q.insert(k, n - 1);
                out.push(q);
            }
        }
        out
    }
    let mut rng = SplitMix64::new(7);
    for n in 1..=6 {
        for _ in 0..20 {
            let cost: Vec<f64> = (0..n * n).map(|_| rng.below(20) as f64).collect();
            let best = permutations(n)
                .iter()
                .map(|p| (0..n).map(|i| cost[i * n + p[i]]).sum::<f64>())
                .fold(f64::INFINITY, f64::min);
            assert_eq!(oracle::solve(&cost, n, n).unwrap().total, best);
        }
    }
}

#[test]
fn random_integer_costs_are_exact() {
    let cfg = AssignConfig::default();
    let mut rng = SplitMix64::new(1);
    for (k, (rows, cols)) in sizes(&mut rng, 1000, 60).into_iter().enumerate() {
        let range = [1u64, 2, 10, 1000, 1 << 20][k % 5];
        let cost: Vec<f32> = (0..rows * cols)
            .map(|_| rng.below(range + 1) as f32)
            .collect();
        check(&cost, rows, cols, &cfg, true);
    }
}

#[test]
fn random_float_costs_within_bound() {
    let cfg = AssignConfig::default();
    let mut rng = SplitMix64::new(2);
    for (k, (rows, cols)) in sizes(&mut rng, 600, 60).into_iter().enumerate() {
        let scale = [1.0f32, 1e-3, 1e3, 7.5][k % 4];
        let cost: Vec<f32> = (0..rows * cols)
            .map(|_| rng.range_f32(-1.0, 1.0) * scale)
            .collect();
        check(&cost, rows, cols, &cfg, false);
    }
}

#[test]
fn larger_matrices_both_orientations() {
    let cfg = AssignConfig::default();
    let mut rng = SplitMix64::new(3);
    for &(rows, cols) in &[(100, 100), (100, 7), (7, 100), (60, 90), (90, 60)] {
        let cost: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32()).collect();
        check(&cost, rows, cols, &cfg, false);
        let cost: Vec<f32> = (0..rows * cols).map(|_| rng.below(100) as f32).collect();
        check(&cost, rows, cols, &cfg, true);
    }
}

#[test]
fn ties_and_structured_costs() {
    let cfg = AssignConfig::default();
    for &(rows, cols) in &[(64, 64), (10, 64), (64, 10), (1, 1), (1, 9), (9, 1)] {
        // All equal: person i takes object i in the first round of the only phase.
        let cost = vec![3.0f32; rows * cols];
        let a = check(&cost, rows, cols, &cfg, true);
        assert_eq!(a.total_cost, 3.0 * rows.min(cols) as f64);
        // The auction settles in the first rounds; shortest paths find a free column with
        // every row's first scan.
        let limit = match a.algorithm {
            Algorithm::Auction | Algorithm::SparseAuction => 4,
            Algorithm::ShortestPath => rows.min(cols) as u32,
        };
        assert!(
            a.rounds <= limit,
            "all-equal {rows}x{cols} took {} rounds ({:?})",
            a.rounds,
            a.algorithm
        );
        // Two values only, massive ties.
        let cost: Vec<f32> = (0..rows * cols)
            .map(|k| ((k * 7) % 3 == 0) as u8 as f32)
            .collect();
        check(&cost, rows, cols, &cfg, true);
        // Low rank (outer products): many near-equivalent optima.
        let cost: Vec<f32> = (0..rows * cols)
            .map(|k| ((k / cols + 1) * (k % cols + 1)) as f32)
            .collect();
        check(&cost, rows, cols, &cfg, true);
        // Sum structure: every complete assignment has the same cost.
        let cost: Vec<f32> = (0..rows * cols)
            .map(|k| (k / cols + 3 * (k % cols)) as f32)
            .collect();
        check(&cost, rows, cols, &cfg, true);
    }
}

#[test]
fn large_dynamic_ranges() {
    let cfg = AssignConfig::default();
    let mut rng = SplitMix64::new(4);
    for &(rows, cols) in &[(30, 30), (12, 40), (40, 12)] {
        // Magnitudes over 60 decades: the bound is relative to the range.
        let cost: Vec<f32> = (0..rows * cols)
            .map(|_| 10f32.powi(rng.below(61) as i32 - 30) * rng.range_f32(0.5, 1.0))
            .collect();
        check(&cost, rows, cols, &cfg, false);
        // Integers beyond the quantisation levels: no longer exact, still within the bound.
        let cost: Vec<f32> = (0..rows * cols)
            .map(|_| rng.below(1 << 30) as f32)
            .collect();
        check(&cost, rows, cols, &cfg, false);
        // Near the f32 limits.
        let cost: Vec<f32> = (0..rows * cols)
            .map(|_| rng.range_f32(-1.0, 1.0) * 3.0e38)
            .collect();
        check(&cost, rows, cols, &cfg, false);
        // Subnormals are zero, as on the GPU (flush-to-zero).
        let cost: Vec<f32> = (0..rows * cols)
            .map(|_| rng.below(4) as f32 * 1e-39)
            .collect();
        let a = cpu::solve(&cost, rows, cols, cols, &cfg).unwrap();
        check_structure(&a, &cost);
    }
}

#[test]
fn forbidden_pairs_maximum_cardinality() {
    let cfg = AssignConfig::default();
    let mut rng = SplitMix64::new(5);
    for (k, (rows, cols)) in sizes(&mut rng, 150, 30).into_iter().enumerate() {
        let density = [0.1, 0.5, 0.8, 0.95][k % 4];
        let cost: Vec<f32> = (0..rows * cols)
            .map(|_| {
                if (rng.next_f32() as f64) < density {
                    f32::INFINITY
                } else {
                    rng.below(50) as f32
                }
            })
            .collect();
        check(&cost, rows, cols, &cfg, true);
    }
    // Hall violation: two rows can only use column 0.
    let inf = f32::INFINITY;
    let cost = [1.0, inf, inf, 2.0, inf, inf, 5.0, 1.0, 1.0];
    let a = check(&cost, 3, 3, &cfg, true);
    assert_eq!(a.unassigned, 1);
    assert!(matches!(
        a.require_complete(0),
        Err(AssignError::Infeasible { unassigned: 1, .. })
    ));
    // Everything forbidden, and a row with nothing allowed.
    let a = cpu::solve(&[inf; 6], 2, 3, 3, &cfg).unwrap();
    assert_eq!((a.assigned(), a.unassigned), (0, 2));
    let cost = [inf, inf, inf, 1.0, 2.0, 3.0];
    let a = check(&cost, 2, 3, &cfg, true);
    assert_eq!(a.row_to_col, vec![-1, 0]);
}

#[test]
fn invalid_and_empty_inputs() {
    let cfg = AssignConfig::default();
    for bad in [f32::NAN, f32::NEG_INFINITY] {
        let cost = [1.0, 2.0, bad, 4.0];
        assert!(matches!(
            cpu::solve(&cost, 2, 2, 2, &cfg),
            Err(AssignError::InvalidCost { .. })
        ));
        assert_eq!(cpu::scan_costs(&cost, 2, 2, 2), CostScan::Invalid);
    }
    for &(rows, cols) in &[(0, 0), (0, 5), (5, 0)] {
        let a = cpu::solve(&[], rows, cols, cols, &cfg).unwrap();
        assert_eq!(a.row_to_col, vec![-1; rows]);
        assert_eq!(a.col_to_row, vec![-1; cols]);
        assert_eq!((a.total_cost, a.unassigned), (0.0, 0));
    }
    let a = check(&[42.0], 1, 1, &cfg, true);
    assert_eq!(a.row_to_col, vec![0]);
    assert!(matches!(
        cpu::solve(&[1.0; 3], 2, 2, 2, &cfg),
        Err(AssignError::Shape(_))
    ));
    let bad = AssignConfig { theta: 1, ..cfg };
    assert!(matches!(
        cpu::solve(&[1.0], 1, 1, 1, &bad),
        Err(AssignError::Config(_))
    ));
}

#[test]
fn round_cap_is_a_typed_error() {
    let mut rng = SplitMix64::new(6);
    let cost: Vec<f32> = (0..40 * 40).map(|_| rng.next_f32()).collect();
    for shortest_path in [false, true] {
        let cfg = AssignConfig {
            max_rounds: 3,
            shortest_path,
            ..AssignConfig::default()
        };
        assert!(matches!(
            cpu::solve(&cost, 40, 40, 40, &cfg),
            Err(AssignError::IterationLimit { rounds: 3, .. })
        ));
    }
}

#[test]
fn strided_input_and_other_settings() {
    let mut rng = SplitMix64::new(8);
    let (rows, cols, ld) = (20, 15, 17);
    let padded: Vec<f32> = (0..rows * ld).map(|_| rng.below(30) as f32).collect();
    let packed: Vec<f32> = (0..rows)
        .flat_map(|r| padded[r * ld..r * ld + cols].to_vec())
        .collect();
    for theta in [2, 4, 16, 64] {
        for levels in [1 << 8, 1 << 16, i32::MAX as u32] {
            let cfg = AssignConfig {
                theta,
                levels,
                ..AssignConfig::default()
            };
            let a = cpu::solve(&padded, rows, cols, ld, &cfg).unwrap();
            let b = check(&packed, rows, cols, &cfg, levels >= 30);
            assert_eq!(a.total_cost, b.total_cost);
        }
    }
}

#[test]
fn matcher_cost_rules() {
    let cfg = MatcherConfig::default();
    let classes = 3;
    let logits = [0.5f32, -1.0, 2.0, 0.0, 0.0, 0.0];
    let boxes = [[0.5f32, 0.5, 0.2, 0.2], [0.3, 0.3, 0.0, 0.0]];
    let labels = [2, 0];
    let targets = [[0.5f32, 0.5, 0.2, 0.2], [0.3, 0.3, 0.0, 0.0]];
    let c = cost_cpu(&cfg, &logits, &boxes, classes, &labels, &targets);
    // Identical boxes: L1 0 and GIoU 1, so the cost is the focal term minus 2.
    let p = 1.0 / (1.0 + (-2.0f32).exp());
    let focal = 0.25 * (1.0 - p).powi(2) * -(p + 1e-8).ln() - 0.75 * p * p * -(1.0 - p + 1e-8).ln();
    assert!((c[0] - (2.0 * focal - 2.0)).abs() < 1e-6, "{}", c[0]);
    // Two zero-area boxes at the same point: GIoU is 0/0 = NaN, mapped to 1.0 like the
    // official nan_to_num.
    assert_eq!(c[3], 1.0);
    assert!(c.iter().all(|v| v.is_finite()));
    // Top-k: later rounds use other queries.
    let mut rng = SplitMix64::new(9);
    let (queries, targets) = (30, 4);
    let cost: Vec<f32> = (0..queries * targets).map(|_| rng.next_f32()).collect();
    let rounds = match_cpu(&cost, queries, targets, 3, &AssignConfig::default()).unwrap();
    let mut used = std::collections::HashSet::new();
    for a in &rounds {
        assert_eq!(a.assigned(), targets);
        for (q, _) in a.pairs() {
            assert!(used.insert(q), "query {q} matched twice");
        }
    }
    assert!(MatcherConfig {
        cost_class: 0.0,
        cost_bbox: 0.0,
        cost_giou: 0.0,
        ..cfg
    }
    .validate()
    .is_err());
}

fn shifted(b: [f32; 4], dx: f32) -> [f32; 4] {
    [b[0] + dx, b[1], b[2] + dx, b[3]]
}

#[test]
fn tracker_keeps_ids_and_ages_out() {
    let cfg = TrackerConfig {
        capacity: 4,
        max_age: 2,
        ..TrackerConfig::default()
    };
    let mut t = CpuTracker::new(cfg).unwrap();
    let a = [0.0, 0.0, 10.0, 10.0];
    let b = [50.0, 50.0, 60.0, 60.0];
    assert_eq!(t.update(&[a, b], None).unwrap(), vec![1, 2]);
    // Small motion keeps ids, whatever the detection order.
    assert_eq!(
        t.update(&[shifted(b, 1.0), shifted(a, 1.0)], None).unwrap(),
        vec![2, 1]
    );
    // A jump beyond the gate opens a new id; the old track ages.
    assert_eq!(t.update(&[shifted(a, 30.0)], None).unwrap(), vec![3]);
    assert_eq!(t.tracks().len(), 3);
    // Tracks 1 and 2, unmatched for 3 frames (> max_age 2), are gone; track 3 (2 frames) stays.
    t.update(&[], None).unwrap();
    assert_eq!(t.tracks().len(), 3);
    t.update(&[], None).unwrap();
    let ids: Vec<u32> = t.tracks().iter().map(|x| x.id).collect();
    assert_eq!(ids, vec![3]);
    // Class gate.
    let mut t = CpuTracker::new(cfg).unwrap();
    assert_eq!(t.update(&[a], Some(&[1])).unwrap(), vec![1]);
    assert_eq!(t.update(&[a], Some(&[2])).unwrap(), vec![2]);
    // Capacity: the fifth simultaneous object gets no id.
    let mut t = CpuTracker::new(cfg).unwrap();
    let boxes: Vec<[f32; 4]> = (0..5).map(|k| shifted(a, 100.0 * k as f32)).collect();
    assert_eq!(t.update(&boxes, None).unwrap(), vec![1, 2, 3, 4, 0]);
    assert!(t.update(&boxes, Some(&[1])).is_err());
}

#[test]
fn tracker_maximises_total_overlap() {
    // Three tracks, three detections: the tracker's matching must reach the best total IoU
    // over all permutations (a greedy matcher does not, in general).
    let mut rng = SplitMix64::new(11);
    let perms = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for _ in 0..200 {
        let cfg = TrackerConfig {
            iou_gate: 1e-3,
            ..TrackerConfig::default()
        };
        let mut t = CpuTracker::new(cfg).unwrap();
        let tracks: Vec<[f32; 4]> = (0..3)
            .map(|k| {
                let x = 8.0 * k as f32 + rng.range_f32(0.0, 4.0);
                [x, 0.0, x + 10.0, 10.0]
            })
            .collect();
        t.update(&tracks, None).unwrap();
        let dets: Vec<[f32; 4]> = (0..3)
            .map(|k| shifted(tracks[k], rng.range_f32(-6.0, 6.0)))
            .collect();
        let ids = t.update(&dets, None).unwrap();
        let total = |p: &[usize; 3]| -> f32 {
            (0..3)
                .map(|d| iou(&tracks[p[d]], &dets[d]))
                .map(|v| {
                    if v >= cfg.iou_gate {
                        v
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .sum()
        };
        let best = perms.iter().map(total).fold(f32::NEG_INFINITY, f32::max);
        if best == f32::NEG_INFINITY {
            continue; // no complete matching passes the gate
        }
        let chosen: Vec<usize> = ids.iter().map(|&id| id as usize - 1).collect();
        assert!(chosen.iter().all(|&k| k < 3), "{ids:?}");
        let got = total(&[chosen[0], chosen[1], chosen[2]]);
        assert!((got - best).abs() <= 1e-5, "total IoU {got} < best {best}");
    }
}

#[test]
fn tracker_random_sequences_stay_consistent() {
    let mut rng = SplitMix64::new(10);
    let mut t = CpuTracker::new(TrackerConfig {
        capacity: 32,
        max_detections: 40,
        ..TrackerConfig::default()
    })
    .unwrap();
    let mut objects: Vec<[f32; 4]> = (0..20)
        .map(|_| {
            let (x, y) = (rng.range_f32(0.0, 600.0), rng.range_f32(0.0, 600.0));
            [x, y, x + 40.0, y + 40.0]
        })
        .collect();
    for _ in 0..30 {
        for o in &mut objects {
            *o = shifted(*o, rng.range_f32(-3.0, 3.0));
        }
        let visible: Vec<[f32; 4]> = objects
            .iter()
            .copied()
            .filter(|_| rng.below(10) != 0)
            .collect();
        let ids = t.update(&visible, None).unwrap();
        let mut seen = std::collections::HashSet::new();
        for id in ids.iter().filter(|&&id| id != 0) {
            assert!(seen.insert(*id), "id {id} given twice in one frame");
        }
        assert!(t.tracks().len() <= 32);
    }
}

#[test]
fn cpu_model_matches_scipy_fixtures() {
    let Some(dir) = finesam::assign::fixtures::fixture_dir().expect("fixtures") else {
        return;
    };
    let matrices = finesam::assign::fixtures::load_matrices(&dir).expect("load fixtures");
    let cfg = AssignConfig::default();
    // Debug builds skip the largest matrices to stay fast; release builds check all.
    let limit = if cfg!(debug_assertions) {
        100_000
    } else {
        usize::MAX
    };
    let mut checked = 0;
    for m in matrices.iter().filter(|m| m.rows * m.cols <= limit) {
        let a = cpu::solve(&m.cost, m.rows, m.cols, m.cols, &cfg).expect(&m.name);
        check_structure(&a, &m.cost);
        check_against_scipy(&a, m);
        checked += 1;
    }
    eprintln!(
        "{checked} of {} fixture matrices match scipy",
        matrices.len()
    );
}

/// The kept bid candidates (the kernel's `bid_scan`) decide most bids of the large uniform
/// cases without a scan of the costs; the results are those of full scans (debug builds
/// assert it bid by bid).
#[test]
fn kept_candidates_decide_most_bids() {
    let cfg = AssignConfig {
        sparse: false,
        ..AssignConfig::default()
    };
    let mut rng = SplitMix64::new(2024);
    for (rows, cols) in [(300usize, 300usize), (1000, 1000)] {
        let cost: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32()).collect();
        let scan = cpu::scan_costs(&cost, rows, cols, cols);
        let p = Problem::new(&cost, rows, cols, cols, scan, &cfg).expect("finite");
        let out = cpu::auction(&p, &cfg).expect("solved");
        let bids = out.candidate_bids + out.scanned_bids;
        eprintln!(
            "{rows}x{cols}: {} rounds, {} phases, {} bids after first rounds, {} from candidates ({:.1}%)",
            out.rounds,
            out.phases,
            bids,
            out.candidate_bids,
            100.0 * out.candidate_bids as f64 / bids.max(1) as f64
        );
        assert!(out.candidate_bids > out.scanned_bids, "{rows}x{cols}");
    }
}

/// The sparse path (square matrices of SPARSE_MIN_SIDE..=SPARSE_MAX_SIDE): exact against the
/// oracle on uniform, integer and structured costs (ties, two values, low rank, equal-cost
/// assignments, near-degenerate floats), with the fallbacks to the dense path where the kept
/// entries cannot serve; the rows the final check turned dense are reported.
#[test]
fn sparse_path_is_exact() {
    let cfg = AssignConfig::default();
    let mut rng = SplitMix64::new(77);
    let mut cases: Vec<(String, usize, Vec<f32>, bool)> = Vec::new();
    for n in [128usize, 200, 300, 384] {
        let uniform: Vec<f32> = (0..n * n).map(|_| rng.next_f32()).collect();
        cases.push((format!("uniform {n}"), n, uniform, false));
        let integer: Vec<f32> = (0..n * n).map(|_| rng.below(1000) as f32).collect();
        cases.push((format!("integer {n}"), n, integer, true));
    }
    let n = 300;
    cases.push(("all equal".into(), n, vec![2.0; n * n], true));
    let two: Vec<f32> = (0..n * n)
        .map(|k| ((k * 7) % 3 == 0) as u8 as f32)
        .collect();
    cases.push(("two values".into(), n, two, true));
    let outer: Vec<f32> = (0..n * n)
        .map(|k| ((k / n % 97 + 1) * (k % n % 89 + 1)) as f32)
        .collect();
    cases.push(("low rank".into(), n, outer, true));
    let sum: Vec<f32> = (0..n * n).map(|k| (k / n + 3 * (k % n)) as f32).collect();
    cases.push(("equal-cost assignments".into(), n, sum, true));
    let near: Vec<f32> = (0..n * n)
        .map(|_| 1.0 + rng.below(8) as f32 * f32::EPSILON)
        .collect();
    cases.push(("near-degenerate".into(), n, near, false));
    // Modular structure: kept sets that cover every column yet make a price war past the
    // sparse round budget (the fallback restarts dense).
    let modular: Vec<f32> = (0..n * n)
        .map(|k| ((k / n * 31 + k % n * 17) % 101) as f32)
        .collect();
    cases.push(("modular".into(), n, modular, true));
    for (name, n, cost, exact) in &cases {
        // Both solver settings (check_one asserts which solver each takes): 128 x 128 goes to
        // shortest paths by default and to the sparse path without them.
        check(cost, *n, *n, &cfg, *exact);
        // The fallbacks below are block 0's schedule's (a race winner may avoid them).
        let auction_only = AssignConfig {
            shortest_path: false,
            race: false,
            ..cfg
        };
        let raced = AssignConfig {
            race: true,
            ..auction_only
        };
        check(cost, *n, *n, &raced, *exact);
        let scan = cpu::scan_costs(cost, *n, *n, *n);
        let p = Problem::new(cost, *n, *n, *n, scan, &auction_only).expect("finite");
        let out = cpu::auction(&p, &auction_only).expect("solved");
        eprintln!(
            "{name} ({n}x{n}): {} rounds, {} phases; sparse at the start {}, at the end {}, {} rows turned dense",
            out.rounds,
            out.phases,
            p.is_sparse(),
            out.sparse,
            out.dense_rows
        );
        // Uniform and integer costs stay sparse; their kept entries rarely miss the optimum.
        // The structured cases take each fallback at least once.
        if name.starts_with("uniform") || name.starts_with("integer") {
            assert!(out.sparse && out.dense_rows <= n / 20, "{name}");
        }
        match name.as_str() {
            "low rank" => assert!(!p.is_sparse(), "coverage fallback"),
            "modular" => assert!(p.is_sparse() && !out.sparse, "round-budget fallback"),
            "near-degenerate" => assert!(out.sparse && out.dense_rows > 0, "dense rows"),
            _ => {}
        }
        // Phases end early (SPARSE_PHASE_CUT) on continuous costs, not where rows tie at their
        // minimum (8 distinct values; all equal; 0/1 costs).
        if name.starts_with("uniform") {
            assert!(p.phase_cut, "{name}: phase cut");
        }
        if matches!(
            name.as_str(),
            "near-degenerate" | "all equal" | "two values"
        ) {
            assert!(!p.phase_cut, "{name}: no phase cut on ties");
        }
    }
}

/// A seeded uniform [0, 1) n x n matrix and its quantised problem.
fn uniform_problem(seed: u64, n: usize, cfg: &AssignConfig) -> (Vec<f32>, Problem) {
    let mut rng = SplitMix64::new(seed);
    let cost: Vec<f32> = (0..n * n).map(|_| rng.next_f32()).collect();
    let scan = cpu::scan_costs(&cost, n, n, n);
    let p = Problem::new(&cost, n, n, n, scan, cfg).expect("finite");
    (cost, p)
}

/// The quantised total of an auction's assignment (square problems).
fn quantised_total(p: &Problem, o: &cpu::AuctionOutcome) -> i64 {
    let n = p.persons;
    (0..n)
        .map(|i| p.q[i * n + o.object_of_person[i]] as i64)
        .sum()
}

/// A person carried over a phase cut can start a price war at the next epsilon. Past the cut's
/// budget (`sparse_cut_round_cap`) the sparse solve starts again with whole phases instead of
/// falling back to the dense path: seeds 3 and 149 of 300x300 uniform costs went dense before
/// (5176 and 6026 rounds); now they stay sparse, take fewer rounds than the old budget alone,
/// and reach the same quantised optimum as whole phases from the start.
#[test]
fn cut_budget_restarts_with_whole_phases() {
    // Block 0's schedule alone (the race would pick another variant).
    let cfg = AssignConfig {
        race: false,
        ..AssignConfig::default()
    };
    let n = 300;
    for seed in [3u64, 149] {
        let (cost, mut p) = uniform_problem(seed, n, &cfg);
        assert!(p.is_sparse() && p.phase_cut, "seed {seed}");
        let cut = cpu::auction(&p, &cfg).expect("solved");
        assert!(cut.sparse, "seed {seed}: still on the sparse path");
        assert!(
            cut.rounds > sparse_cut_round_cap(&cfg, n) && cut.phases > 11,
            "seed {seed}: restarted ({} rounds, {} phases)",
            cut.rounds,
            cut.phases
        );
        assert!(
            cut.rounds < sparse_round_cap(&cfg, n),
            "seed {seed}: {}",
            cut.rounds
        );
        p.phase_cut = false;
        let whole = cpu::auction(&p, &cfg).expect("solved");
        assert_eq!(
            quantised_total(&p, &cut),
            quantised_total(&p, &whole),
            "seed {seed}: same quantised optimum"
        );
        let exact = oracle::solve(&to_f64(&flushed(&cost)), n, n).expect("feasible");
        let a = cpu::solve(&cost, n, n, n, &cfg).expect("solved");
        assert!(
            (a.total_cost - exact.total).abs() <= a.gap_bound() + 1e-9 * (1.0 + exact.total.abs()),
            "seed {seed}: {} vs optimum {}",
            a.total_cost,
            exact.total
        );
    }
}

/// Ending the phases before the last with at most SPARSE_PHASE_CUT bidders left cuts the
/// displacement tails: over 8 seeded 300x300 uniform matrices the sparse path needs less than
/// half the rounds it needs with whole phases (`Problem::phase_cut` off), with the same
/// quantised optimum.
#[test]
fn phase_cut_halves_the_rounds_and_stays_exact() {
    let cfg = AssignConfig {
        race: false,
        ..AssignConfig::default()
    };
    let (mut with_cut, mut whole) = (0u32, 0u32);
    for seed in 0..8u64 {
        let (_, mut p) = uniform_problem(1000 + seed, 300, &cfg);
        assert!(p.is_sparse() && p.phase_cut);
        let cut = cpu::auction(&p, &cfg).expect("solved");
        p.phase_cut = false;
        let full = cpu::auction(&p, &cfg).expect("solved");
        assert_eq!(
            quantised_total(&p, &cut),
            quantised_total(&p, &full),
            "seed {seed}: same quantised optimum"
        );
        with_cut += cut.rounds;
        whole += full.rounds;
    }
    eprintln!(
        "8 x 300x300 uniform: {with_cut} rounds with the phase cut, {whole} with whole phases"
    );
    assert!(2 * with_cut < whole, "{with_cut} vs {whole}");
}

/// The race (`AssignConfig::race`, `RACE_VARIANTS`): the result is the variant with the least
/// work (ties to the lower rank) among all variants run to the end on their own, although the
/// model stops the others early; every variant reaches the same quantised optimum; and over 6
/// seeded 300x300 uniform matrices the winners need less than 70% of block 0's work.
#[test]
fn race_keeps_the_least_work_variant() {
    let cfg = AssignConfig::default();
    let (mut raced, mut first) = (0u64, 0u64);
    for seed in 0..6u64 {
        let (_, p) = uniform_problem(2000 + seed, 300, &cfg);
        let race = cpu::auction(&p, &cfg).expect("solved");
        let alone: Vec<_> = (0..=RACE_VARIANTS.len())
            .map(|rank| cpu::auction_variant(&p, &cfg, rank, u64::MAX).expect("solved"))
            .collect();
        let best = alone
            .iter()
            .min_by_key(|o| race_key(o.work, o.variant as usize))
            .expect("variants");
        assert_eq!(&race, best, "seed {seed}");
        for o in &alone {
            assert_eq!(
                quantised_total(&p, o),
                quantised_total(&p, &race),
                "seed {seed}, variant {}",
                o.variant
            );
        }
        eprintln!(
            "seed {seed}: variant {} wins with work {} ({} rounds); block 0: work {} ({} rounds)",
            race.variant, race.work, race.rounds, alone[0].work, alone[0].rounds
        );
        raced += race.work;
        first += alone[0].work;
    }
    assert!(10 * raced < 7 * first, "{raced} vs {first}");
}
