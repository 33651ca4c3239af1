//! GPU tests of the assignment module. Without a GPU every test prints why it skips.
//!
//! - every fixture matrix (>= 1000 seeded matrices 1x1..1000x1000 plus hard cases, scipy
//!   optima from tests/parity/gen_assign.py): the GPU total equals scipy's (integer costs
//!   exactly, float costs within the reported bound), and the GPU assignment is identical to
//!   the CPU model's;
//! - the sparse path (square 128..384) and both of its fallbacks to the dense path, single and
//!   batched, bit-identical to the CPU model and optimal against the exact oracle;
//! - uniform batches, strided input and bad inputs (NaN, -inf, +inf, empty, ties, round cap,
//!   oversize) on the device;
//! - the matcher against the official HungarianMatcher fixtures (cost within 1e-5 x max|C|,
//!   optimal matching totals for every top-k round) and against the CPU reference cost;
//! - the GPU tracker against its CPU model, frame by frame.
//!
//! Fixtures: `$FINESAM_FIXTURES/assign` (skipped when unset unless FINESAM_REQUIRE_FIXTURES=1).
//! Run with `--release`: the CPU-model comparison of the 1000x1000 matrices is slow in debug.

mod common;

use common::assign::check_against_scipy;
use finesam::assign::cpu;
use finesam::assign::fixtures::{self, MatcherFixture};
use finesam::assign::matcher::{cost_cpu, match_cpu};
use finesam::assign::oracle;
use finesam::assign::random::SplitMix64;
use finesam::assign::{
    assign, Algorithm, AssignConfig, AssignError, Assigner, Assignment, CpuTracker, DeviceBatch,
    DeviceMatrix, GpuTracker, Matcher, MatcherConfig, MatcherInputs, MatcherShape, TrackerConfig,
    TrackerDetections,
};
use finesam::gpu::DeviceBuffer;
use finesam::{Error, Gpu};

fn gpu() -> Option<Gpu> {
    match Gpu::probe() {
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
        Ok(()) => Some(Gpu::new(0).expect("opening the GPU")),
    }
}

fn upload<T: bytemuck::Pod>(gpu: &Gpu, data: &[T]) -> DeviceBuffer {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let buf = gpu.alloc(bytes.len()).expect("alloc");
    if !bytes.is_empty() {
        gpu.upload(buf.ptr(), bytes).expect("upload");
    }
    buf
}

fn download<T: bytemuck::Pod + Default + Clone>(gpu: &Gpu, src: u64, len: usize) -> Vec<T> {
    let mut out = vec![T::default(); len];
    if len > 0 {
        gpu.download(bytemuck::cast_slice_mut(&mut out), src)
            .expect("download");
        gpu.synchronize().expect("sync");
    }
    out
}

fn check_structure(a: &Assignment, cost: &[f32], ld: usize, what: &str) {
    let mut total = 0.0;
    for (r, &c) in a.row_to_col.iter().enumerate() {
        if c >= 0 {
            assert_eq!(a.col_to_row[c as usize], r as i32, "{what}: row {r}");
            total += cost[r * ld + c as usize] as f64;
        }
    }
    assert_eq!(
        a.col_to_row.iter().filter(|&&r| r >= 0).count(),
        a.assigned(),
        "{what}: columns"
    );
    assert_eq!(
        a.assigned() + a.unassigned,
        a.rows.min(a.cols),
        "{what}: assigned and unassigned"
    );
    assert!(
        (total - a.total_cost).abs() <= 1e-9 * (1.0 + total.abs()),
        "{what}: total"
    );
}

/// GPU and CPU model must agree exactly: same pairs, same rounds and phases, same race winner.
fn check_same_as_model(gpu_result: &Assignment, model: &Assignment, what: &str) {
    assert_eq!(
        gpu_result.row_to_col, model.row_to_col,
        "{what}: assignment"
    );
    assert_eq!(
        gpu_result.col_to_row, model.col_to_row,
        "{what}: assignment"
    );
    assert_eq!(
        (gpu_result.rounds, gpu_result.phases, gpu_result.unassigned),
        (model.rounds, model.phases, model.unassigned),
        "{what}: rounds, phases, unassigned"
    );
    assert!(
        (gpu_result.total_cost - model.total_cost).abs() <= 1e-9 * (1.0 + model.total_cost.abs())
    );
    assert_eq!(gpu_result.quantum, model.quantum, "{what}: quantum");
    assert_eq!(gpu_result.algorithm, model.algorithm, "{what}: solver");
    assert_eq!(gpu_result.variant, model.variant, "{what}: race variant");
}

#[test]
fn fixtures_match_scipy_and_the_cpu_model() {
    let Some(gpu) = gpu() else { return };
    let Some(dir) = fixtures::fixture_dir().expect("fixtures") else {
        return;
    };
    let matrices = fixtures::load_matrices(&dir).expect("loading fixtures");
    assert!(matrices.len() >= 1000, "expected >= 1000 fixture matrices");
    let (max_rows, max_cols) = matrices
        .iter()
        .fold((1, 1), |(r, c), m| (r.max(m.rows), c.max(m.cols)));
    let cost_buf = gpu.alloc(max_rows * max_cols * 4).expect("alloc");
    let model_limit = if cfg!(debug_assertions) {
        100_000
    } else {
        usize::MAX
    };
    // Default (small matrices by shortest paths), then the auction for every matrix.
    for shortest_path in [true, false] {
        let cfg = AssignConfig {
            shortest_path,
            ..AssignConfig::default()
        };
        let mut assigner = Assigner::new(&gpu, cfg, 1, max_rows, max_cols).expect("workspace");
        let (mut rounds, mut compared, mut by_paths) = (0u64, 0usize, 0usize);
        for m in &matrices {
            gpu.upload(cost_buf.ptr(), bytemuck::cast_slice(&m.cost))
                .expect("upload");
            assigner
                .solve(&gpu, &DeviceMatrix::new(cost_buf.ptr(), m.rows, m.cols))
                .expect("launch");
            let a = assigner.read(&gpu).expect(&m.name).remove(0);
            check_structure(&a, &m.cost, m.cols, &m.name);
            check_against_scipy(&a, m);
            rounds += a.rounds as u64;
            by_paths += (a.algorithm == Algorithm::ShortestPath) as usize;
            if m.rows * m.cols <= model_limit {
                let model = cpu::solve(&m.cost, m.rows, m.cols, m.cols, &cfg).expect(&m.name);
                check_same_as_model(&a, &model, &m.name);
                compared += 1;
            }
        }
        if !shortest_path {
            assert_eq!(by_paths, 0, "shortest paths are off");
        }
        eprintln!(
        "shortest_path {shortest_path}: {} fixture matrices match scipy ({compared} also bit-identical to the CPU model; {by_paths} solved by shortest paths), {rounds} rounds in all",
        matrices.len()
    );
    }
}

#[test]
fn uniform_batches_and_strides_match_the_model() {
    let Some(gpu) = gpu() else { return };
    let cfg = AssignConfig::default();
    let mut rng = SplitMix64::new(31);
    for &(count, rows, cols, integer) in &[
        (32, 300, 20, false),
        (8, 64, 64, true),
        (5, 20, 300, false),
        (3, 1, 50, false),
        (4, 128, 128, false),
        (3, 300, 300, false),
        (2, 256, 256, true),
    ] {
        let cost: Vec<f32> = (0..count * rows * cols)
            .map(|_| {
                if integer {
                    rng.below(100) as f32
                } else {
                    rng.next_f32()
                }
            })
            .collect();
        let buf = upload(&gpu, &cost);
        let batch = DeviceBatch::packed(buf.ptr(), count, rows, cols);
        let mut assigner = Assigner::new(&gpu, cfg, count, rows, cols).expect("workspace");
        assigner.solve_batch(&gpu, &batch).expect("launch");
        let results = assigner.read(&gpu).expect("solve");
        for (b, a) in results.iter().enumerate() {
            let m = &cost[b * rows * cols..(b + 1) * rows * cols];
            let what = format!("batch {count}x{rows}x{cols} #{b}");
            check_structure(a, m, cols, &what);
            let model = cpu::solve(m, rows, cols, cols, &cfg).unwrap();
            check_same_as_model(a, &model, &what);
            let exact = oracle::solve(&m.iter().map(|&c| c as f64).collect::<Vec<_>>(), rows, cols)
                .unwrap();
            assert!(a.total_cost - exact.total <= a.gap_bound() + 1e-9);
        }
    }
    // Row stride larger than the row, and a matrix stride with a gap.
    let (rows, cols, ld, stride, count) = (40, 30, 37, 40 * 37 + 11, 3);
    let cost: Vec<f32> = (0..count * stride).map(|_| rng.next_f32()).collect();
    let buf = upload(&gpu, &cost);
    let batch = DeviceBatch {
        ptr: buf.ptr(),
        count,
        rows,
        cols,
        ld,
        stride,
    };
    let mut assigner = Assigner::new(&gpu, cfg, count, rows, cols).unwrap();
    assigner.solve_batch(&gpu, &batch).unwrap();
    for (b, a) in assigner.read(&gpu).unwrap().iter().enumerate() {
        let m = &cost[b * stride..];
        check_structure(a, m, ld, "strided");
        let model = cpu::solve(m, rows, cols, ld, &cfg).unwrap();
        check_same_as_model(a, &model, "strided");
    }
}

/// The sparse path on the device: uniform and integer costs (sparse to the end), near-degenerate
/// floats (rows turned dense by the final check), low rank (kept sets leave columns uncovered:
/// dense from the start) and a modular structure (past the sparse round budget: restarted
/// dense). Each is bit-identical to the CPU model (assignment, rounds, phases, solver, race
/// variant) and optimal against the exact oracle (integer costs exactly, floats within the
/// bound), with the race and without (block 0's schedule alone, which takes the fallbacks).
#[test]
fn sparse_path_and_fallbacks_match_the_model() {
    let Some(gpu) = gpu() else { return };
    let mut rng = SplitMix64::new(91);
    let mut cases: Vec<(&str, usize, Vec<f32>, Algorithm)> = Vec::new();
    for n in [200usize, 300, 384] {
        let uniform = (0..n * n).map(|_| rng.next_f32()).collect();
        cases.push(("uniform", n, uniform, Algorithm::SparseAuction));
        let integer = (0..n * n).map(|_| rng.below(1000) as f32).collect();
        cases.push(("integer", n, integer, Algorithm::SparseAuction));
    }
    let n = 300;
    let near = (0..n * n)
        .map(|_| 1.0 + rng.below(8) as f32 * f32::EPSILON)
        .collect();
    cases.push(("near-degenerate", n, near, Algorithm::SparseAuction));
    let outer = (0..n * n)
        .map(|k| ((k / n % 97 + 1) * (k % n % 89 + 1)) as f32)
        .collect();
    cases.push(("low rank", n, outer, Algorithm::Auction));
    let modular = (0..n * n)
        .map(|k| ((k / n * 31 + k % n * 17) % 101) as f32)
        .collect();
    cases.push(("modular", n, modular, Algorithm::Auction));
    // Past the phase cut's budget the sparse solve starts again with whole phases (seed 3 without
    // the race: 2329 rounds in 22 phases in the CPU model, still sparse).
    let mut war = SplitMix64::new(3);
    let restarted = (0..n * n).map(|_| war.next_f32()).collect();
    cases.push(("cut budget", n, restarted, Algorithm::SparseAuction));
    // With the race (the default) and with block 0's schedule alone.
    let solo = AssignConfig {
        race: false,
        ..AssignConfig::default()
    };
    for ((name, n, cost, solver), cfg) in cases
        .iter()
        .flat_map(|case| [(case, AssignConfig::default()), (case, solo)])
    {
        let what = format!("{name} {n}x{n} race {}", cfg.race);
        let a = solve_host(&gpu, cost, *n, *n, &cfg).expect(&what);
        check_structure(&a, cost, *n, &what);
        let model = cpu::solve(cost, *n, *n, *n, &cfg).expect(&what);
        check_same_as_model(&a, &model, &what);
        if !cfg.race {
            // The fallbacks are block 0's schedule's; a race winner may avoid them.
            assert_eq!(a.algorithm, *solver, "{what}: solver");
        }
        let exact = oracle::solve(&cost.iter().map(|&c| c as f64).collect::<Vec<_>>(), *n, *n)
            .expect("feasible");
        assert!(
            (a.total_cost - exact.total).abs() <= a.gap_bound() + 1e-9 * (1.0 + exact.total.abs()),
            "{what}: total {} vs optimum {} (bound {})",
            a.total_cost,
            exact.total,
            a.gap_bound()
        );
        eprintln!(
            "{what}: {:?}, variant {}, {} rounds, {} phases, total {} (optimum {})",
            a.algorithm, a.variant, a.rounds, a.phases, a.total_cost, exact.total
        );
    }
}

/// Blocks configured smaller than the side (`AssignConfig::block_threads` below n) run the same
/// sparse rounds: more bidders than threads take the warp-per-bidder rounds instead of the
/// lane-group ones (a first version of the lane-group rounds dropped the bidders past the
/// block's threads and returned a wrong total at 64 threads). Bit-identical to the CPU model and
/// optimal, with and without the race.
#[test]
fn sparse_path_with_small_blocks_matches_the_model() {
    let Some(gpu) = gpu() else { return };
    let mut rng = SplitMix64::new(93);
    for n in [300usize, 384] {
        let cost: Vec<f32> = (0..n * n).map(|_| rng.next_f32()).collect();
        let exact = oracle::solve(&cost.iter().map(|&c| c as f64).collect::<Vec<_>>(), n, n)
            .expect("feasible");
        for block_threads in [64u32, 128, 256] {
            for race in [true, false] {
                let cfg = AssignConfig {
                    block_threads,
                    race,
                    ..AssignConfig::default()
                };
                let what = format!("uniform {n}x{n}, {block_threads} threads, race {race}");
                let a = solve_host(&gpu, &cost, n, n, &cfg).expect(&what);
                check_structure(&a, &cost, n, &what);
                let model = cpu::solve(&cost, n, n, n, &cfg).expect(&what);
                check_same_as_model(&a, &model, &what);
                assert_eq!(a.algorithm, Algorithm::SparseAuction, "{what}: solver");
                assert!(
                    (a.total_cost - exact.total).abs()
                        <= a.gap_bound() + 1e-9 * (1.0 + exact.total.abs()),
                    "{what}: total {} vs optimum {} (bound {})",
                    a.total_cost,
                    exact.total,
                    a.gap_bound()
                );
            }
        }
        eprintln!("uniform {n}x{n}: 64, 128 and 256 threads match the model and the optimum");
    }
}

/// The race (`AssignConfig::race`) picks its winner deterministically, also where variants tie:
/// 0/1 costs make seven of the eight variants run identically (their first epsilon is 1), and
/// the lowest of them must report every time. Each matrix is solved 10 times; every result is
/// the CPU model's (assignment, rounds, phases, variant).
#[test]
fn race_winner_is_deterministic() {
    let Some(gpu) = gpu() else { return };
    let cfg = AssignConfig::default();
    let mut rng = SplitMix64::new(77);
    let cases: Vec<(&str, usize, Vec<f32>)> = vec![
        (
            "0/1",
            200,
            (0..200 * 200).map(|_| rng.below(2) as f32).collect(),
        ),
        (
            "uniform",
            300,
            (0..300 * 300).map(|_| rng.next_f32()).collect(),
        ),
        (
            "integer",
            256,
            (0..256 * 256).map(|_| rng.below(1000) as f32).collect(),
        ),
    ];
    for (name, n, cost) in &cases {
        let model = cpu::solve(cost, *n, *n, *n, &cfg).expect(name);
        for rep in 0..10 {
            let what = format!("{name} {n}x{n} #{rep}");
            let a = solve_host(&gpu, cost, *n, *n, &cfg).expect(&what);
            check_structure(&a, cost, *n, &what);
            check_same_as_model(&a, &model, &what);
        }
        eprintln!(
            "{name} {n}x{n}: variant {} ({} rounds) in all 10 solves",
            model.variant, model.rounds
        );
    }
}

fn solve_host(
    gpu: &Gpu,
    cost: &[f32],
    rows: usize,
    cols: usize,
    cfg: &AssignConfig,
) -> Result<Assignment, Error> {
    let buf = upload(gpu, cost);
    assign(gpu, &DeviceMatrix::new(buf.ptr(), rows, cols), cfg)
}

#[test]
fn bad_inputs_terminate_with_results_or_typed_errors() {
    let Some(gpu) = gpu() else { return };
    let cfg = AssignConfig::default();
    for bad in [f32::NAN, f32::NEG_INFINITY] {
        let r = solve_host(&gpu, &[1.0, bad, 3.0, 4.0], 2, 2, &cfg);
        assert!(
            matches!(r, Err(Error::Assign(AssignError::InvalidCost { .. }))),
            "{r:?}"
        );
    }
    for &(rows, cols) in &[(0, 5), (5, 0), (0, 0)] {
        let a = solve_host(&gpu, &[0.0], rows, cols, &cfg).unwrap();
        assert_eq!(
            (a.row_to_col, a.col_to_row),
            (vec![-1; rows], vec![-1; cols])
        );
    }
    let a = solve_host(&gpu, &[7.5], 1, 1, &cfg).unwrap();
    assert_eq!((a.row_to_col, a.total_cost), (vec![0], 7.5));
    // Ties: all equal, 300 x 300, settles in the first rounds.
    let a = solve_host(&gpu, &[2.0; 300 * 300], 300, 300, &cfg).unwrap();
    assert_eq!((a.total_cost, a.assigned()), (600.0, 300));
    assert!(a.rounds <= 4, "{} rounds", a.rounds);
    // +inf: everything forbidden; a Hall violation; a dead row.
    let inf = f32::INFINITY;
    let a = solve_host(&gpu, &[inf; 12], 3, 4, &cfg).unwrap();
    assert_eq!((a.assigned(), a.unassigned), (0, 3));
    let hall = [1.0, inf, inf, 2.0, inf, inf, 5.0, 1.0, 1.0];
    let a = solve_host(&gpu, &hall, 3, 3, &cfg).unwrap();
    assert_eq!((a.assigned(), a.unassigned, a.total_cost), (2, 1, 2.0));
    assert!(a.clone().require_complete(0).is_err());
    let model = cpu::solve(&hall, 3, 3, 3, &cfg).unwrap();
    check_same_as_model(&a, &model, "hall");
    // Round cap: a typed error, not a hang.
    let mut rng = SplitMix64::new(5);
    let cost: Vec<f32> = (0..100 * 100).map(|_| rng.next_f32()).collect();
    let capped = AssignConfig {
        max_rounds: 3,
        ..cfg
    };
    let r = solve_host(&gpu, &cost, 100, 100, &capped);
    assert!(
        matches!(
            r,
            Err(Error::Assign(AssignError::IterationLimit { rounds: 3, .. }))
        ),
        "{r:?}"
    );
    // More columns than shared memory can hold: refused before launch.
    let r = solve_host(&gpu, &vec![1.0; 20_000], 1, 20_000, &cfg);
    assert!(
        matches!(r, Err(Error::Assign(AssignError::TooLarge { .. }))),
        "{r:?}"
    );
    // Huge dynamic range and values near f32::MAX.
    let cost: Vec<f32> = (0..50 * 60)
        .map(|_| rng.range_f32(-1.0, 1.0) * 3.0e38)
        .collect();
    let a = solve_host(&gpu, &cost, 50, 60, &cfg).unwrap();
    check_same_as_model(&a, &cpu::solve(&cost, 50, 60, 60, &cfg).unwrap(), "range");
}

fn matcher_inputs(gpu: &Gpu, f: &MatcherFixture) -> (Vec<DeviceBuffer>, MatcherInputs) {
    let bufs = vec![
        upload(gpu, &f.logits),
        upload(gpu, &f.boxes),
        upload(gpu, &f.labels),
        upload(gpu, &f.target_boxes),
        upload(gpu, &f.offsets),
    ];
    let inputs = MatcherInputs {
        logits: bufs[0].ptr(),
        boxes: bufs[1].ptr(),
        labels: bufs[2].ptr(),
        target_boxes: bufs[3].ptr(),
        target_offsets: bufs[4].ptr(),
    };
    (bufs, inputs)
}

/// Total of `cost` over the pairs of `a` (f64).
fn total_over(cost: &[f32], cols: usize, a: &Assignment) -> f64 {
    a.pairs()
        .iter()
        .map(|&(r, c)| cost[r * cols + c] as f64)
        .sum()
}

#[test]
fn matcher_matches_the_official_matcher() {
    let Some(gpu) = gpu() else { return };
    let Some(dir) = fixtures::fixture_dir().expect("fixtures") else {
        return;
    };
    let all = fixtures::load_matchers(&dir).expect("loading matcher fixtures");
    assert!(!all.is_empty(), "no matcher fixtures");
    for f in &all {
        let cfg = MatcherConfig {
            cost_class: f.weights[0],
            cost_bbox: f.weights[1],
            cost_giou: f.weights[2],
            alpha: f.weights[3],
            gamma: f.weights[4],
            assign: AssignConfig::default(),
        };
        let max_targets = f.images.iter().map(|i| i.targets).max().unwrap_or(0);
        let shape = MatcherShape {
            batch: f.batch,
            queries: f.queries,
            classes: f.classes,
            max_targets,
            max_total: f.offsets[f.batch] as usize,
            max_k: f.k,
        };
        let mut matcher = Matcher::new(&gpu, cfg, &shape).expect("matcher");
        let (_bufs, inputs) = matcher_inputs(&gpu, f);
        matcher.compute_cost(&gpu, &inputs).unwrap();
        let costs = matcher.read_costs(&gpu).unwrap();
        let mut max_diff = Vec::new();
        for (b, (ours, img)) in costs.iter().zip(&f.images).enumerate() {
            assert_eq!(ours.len(), img.cost.len(), "{} image {b}: shape", f.name);
            let scale = img.cost.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = ours
                .iter()
                .zip(&img.cost)
                .fold(0f32, |m, (a, o)| m.max((a - o).abs()));
            assert!(
                diff <= 1e-5 * scale,
                "{} image {b}: cost differs by {diff} (max |C| {scale})",
                f.name
            );
            max_diff.push(diff as f64);
        }
        matcher.run(&gpu, &inputs, f.k).unwrap();
        let matches = matcher.read(&gpu).unwrap();
        for (b, img) in f.images.iter().enumerate() {
            let t = img.targets;
            let mut masked = img.cost.clone();
            for (round, per_image) in matches.rounds.iter().enumerate() {
                let a = &per_image[b];
                assert_eq!(
                    a.assigned(),
                    t.min(f.queries),
                    "{} image {b} round {round}",
                    f.name
                );
                // Optimum of the official C with the queries we matched earlier excluded.
                let (opt, _) = oracle::solve_max_cardinality(
                    &masked.iter().map(|&c| c as f64).collect::<Vec<_>>(),
                    f.queries,
                    t,
                );
                let ours = total_over(&masked, t, a);
                let slack =
                    a.gap_bound() + 2.0 * t as f64 * max_diff[b] + 1e-9 * (1.0 + opt.total.abs());
                assert!(
                    ours - opt.total <= slack && opt.total - ours <= slack,
                    "{} image {b} round {round}: total {ours} vs optimum {} (slack {slack})",
                    f.name,
                    opt.total
                );
                if round == 0 {
                    let reference = img.round_totals[0];
                    assert!((opt.total - reference).abs() <= 1e-9 * (1.0 + reference.abs()));
                    let official: f64 = img
                        .rows
                        .iter()
                        .zip(&img.cols)
                        .map(|(&r, &c)| img.cost[r as usize * t + c as usize] as f64)
                        .sum();
                    assert!((official - reference).abs() <= 1e-6 * (1.0 + reference.abs()));
                }
                for (q, _) in a.pairs() {
                    masked[q * t..(q + 1) * t].fill(f32::INFINITY);
                }
            }
            let (rows, cols) = matches.indices(b);
            assert_eq!(rows.len(), f.k * t.min(f.queries));
            assert_eq!(cols.len(), rows.len());
        }
        eprintln!("{}: cost and {} rounds of matching agree", f.name, f.k);
    }
}

#[test]
fn matcher_cost_matches_the_cpu_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = SplitMix64::new(41);
    let (batch, queries, classes) = (5, 300, 80);
    let counts = [0usize, 1, 17, 60, 100];
    let offsets: Vec<i32> = std::iter::once(0)
        .chain(counts.iter().scan(0, |s, &c| {
            *s += c as i32;
            Some(*s)
        }))
        .collect();
    let total = *offsets.last().unwrap() as usize;
    let logits: Vec<f32> = (0..batch * queries * classes)
        .map(|_| rng.range_f32(-6.0, 6.0))
        .collect();
    let boxes: Vec<[f32; 4]> = (0..batch * queries)
        .map(|k| {
            let wh = if k % 50 == 0 {
                0.0
            } else {
                rng.range_f32(0.01, 0.5)
            };
            [rng.next_f32(), rng.next_f32(), wh, rng.range_f32(0.01, 0.5)]
        })
        .collect();
    let labels: Vec<i32> = (0..total)
        .map(|_| rng.below(classes as u64) as i32)
        .collect();
    let targets: Vec<[f32; 4]> = (0..total)
        .map(|_| {
            [
                rng.next_f32(),
                rng.next_f32(),
                rng.range_f32(0.01, 0.5),
                rng.range_f32(0.01, 0.5),
            ]
        })
        .collect();
    let bufs = [
        upload(&gpu, &logits),
        upload(&gpu, bytemuck::cast_slice::<[f32; 4], f32>(&boxes)),
        upload(&gpu, &labels),
        upload(&gpu, bytemuck::cast_slice::<[f32; 4], f32>(&targets)),
        upload(&gpu, &offsets),
    ];
    let inputs = MatcherInputs {
        logits: bufs[0].ptr(),
        boxes: bufs[1].ptr(),
        labels: bufs[2].ptr(),
        target_boxes: bufs[3].ptr(),
        target_offsets: bufs[4].ptr(),
    };
    let cfg = MatcherConfig::default();
    let k = 2;
    let shape = MatcherShape {
        batch,
        queries,
        classes,
        max_targets: 100,
        max_total: total,
        max_k: k,
    };
    let mut matcher = Matcher::new(&gpu, cfg, &shape).unwrap();
    matcher.compute_cost(&gpu, &inputs).unwrap();
    let costs = matcher.read_costs(&gpu).unwrap();
    matcher.run(&gpu, &inputs, k).unwrap();
    let matches = matcher.read(&gpu).unwrap();
    for b in 0..batch {
        let (t0, t1) = (offsets[b] as usize, offsets[b + 1] as usize);
        let reference = cost_cpu(
            &cfg,
            &logits[b * queries * classes..(b + 1) * queries * classes],
            &boxes[b * queries..(b + 1) * queries],
            classes,
            &labels[t0..t1],
            &targets[t0..t1],
        );
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = costs[b]
            .iter()
            .zip(&reference)
            .fold(0f32, |m, (a, r)| m.max((a - r).abs()));
        assert!(diff <= 1e-5 * scale.max(1.0), "image {b}: {diff}");
        // The GPU's matching of its own cost is the CPU model's, round for round.
        let model = match_cpu(&costs[b], queries, t1 - t0, k, &cfg.assign).unwrap();
        for (round, expected) in model.iter().enumerate() {
            check_same_as_model(
                &matches.rounds[round][b],
                expected,
                &format!("image {b} round {round}"),
            );
        }
    }
}

#[test]
fn tracker_matches_its_cpu_model() {
    let Some(gpu) = gpu() else { return };
    let cfg = TrackerConfig {
        capacity: 48,
        max_detections: 64,
        iou_gate: 0.3,
        max_age: 3,
        match_class: true,
        assign: AssignConfig::default(),
    };
    let tracker = GpuTracker::new(&gpu, cfg).unwrap();
    let mut model = CpuTracker::new(cfg).unwrap();
    let boxes_buf = gpu.alloc(cfg.max_detections * 16).unwrap();
    let labels_buf = gpu.alloc(cfg.max_detections * 4).unwrap();
    let count_buf = gpu.alloc(4).unwrap();
    let ids_buf = gpu.alloc(cfg.max_detections * 4).unwrap();
    let dets = TrackerDetections {
        boxes: boxes_buf.ptr(),
        labels: labels_buf.ptr(),
        count: count_buf.ptr(),
    };
    let mut rng = SplitMix64::new(51);
    let mut objects: Vec<([f32; 4], i32)> = Vec::new();
    // FINESAM_TRACKER_FRAMES shortens the sequence for the sanitizers (racecheck runs ~100x
    // slower); the crowd over capacity comes at frame 5.
    let frames: usize = std::env::var("FINESAM_TRACKER_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(80);
    for frame in 0..frames {
        // Objects drift, some vanish, some appear; occasionally a crowd over capacity.
        objects.retain(|_| rng.below(25) != 0);
        for (b, _) in objects.iter_mut() {
            let (dx, dy) = (rng.range_f32(-4.0, 4.0), rng.range_f32(-4.0, 4.0));
            *b = [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy];
        }
        let spawn = if frame % 37 == 5 {
            40
        } else {
            rng.below(4) as usize
        };
        for _ in 0..spawn {
            let (x, y) = (rng.range_f32(0.0, 600.0), rng.range_f32(0.0, 600.0));
            let (w, h) = (rng.range_f32(10.0, 80.0), rng.range_f32(10.0, 80.0));
            objects.push(([x, y, x + w, y + h], rng.below(3) as i32));
        }
        let visible: Vec<([f32; 4], i32)> = objects
            .iter()
            .copied()
            .filter(|_| rng.below(8) != 0)
            .take(cfg.max_detections)
            .collect();
        let boxes: Vec<[f32; 4]> = visible.iter().map(|v| v.0).collect();
        let labels: Vec<i32> = visible.iter().map(|v| v.1).collect();
        if !boxes.is_empty() {
            gpu.upload(boxes_buf.ptr(), bytemuck::cast_slice(&boxes))
                .unwrap();
            gpu.upload(labels_buf.ptr(), bytemuck::cast_slice(&labels))
                .unwrap();
        }
        gpu.upload(count_buf.ptr(), bytemuck::bytes_of(&(boxes.len() as u32)))
            .unwrap();
        tracker.update(&gpu, &dets, ids_buf.ptr()).unwrap();
        let gpu_ids: Vec<u32> = download(&gpu, ids_buf.ptr(), boxes.len());
        let model_ids = model.update(&boxes, Some(&labels)).unwrap();
        assert_eq!(gpu_ids, model_ids, "frame {frame}: ids");
        tracker.last_solve(&gpu).unwrap();
        assert_eq!(
            tracker.read_tracks(&gpu).unwrap(),
            model.tracks(),
            "frame {frame}: tracks"
        );
    }
}
