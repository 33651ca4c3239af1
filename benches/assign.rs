//! Assignment benchmarks on the device: GPU time from CUDA events (criterion `iter_custom`).
//!
//! Cases (uniform random f32 costs in [0, 1), already on the device, as the pipeline has them):
//! 300x10, 300x100, 300x300, 1000x1000, 32x300x300 (32 matrices in one launch), and
//! 32x300x20_matcher = D-FINE matcher cost construction (32 images, 300 queries, 80 classes, 20
//! targets each) + the batched solve.
//! Prints one summary line per case with the card's name; with FINESAM_PEER_ASSIGN pointing at
//! the JSON of tests/parity/peer_assign.py (scipy + the cost's device-to-host copy, timed on
//! the same machine) it also prints the speed-up over scipy. Skips without a GPU.

use std::cell::RefCell;
use std::time::Duration;

use criterion::Criterion;
use finesam::assign::random::SplitMix64;
use finesam::assign::{
    uses_shortest_path, uses_sparse, AssignConfig, Assigner, DeviceBatch, Matcher, MatcherConfig,
    MatcherInputs, MatcherShape,
};
use finesam::gpu::DeviceBuffer;
use finesam::Gpu;

/// Per case: GPU seconds and iterations measured (criterion's samples, summed).
type Totals = RefCell<Vec<(String, f64, u64)>>;

fn upload<T: bytemuck::Pod>(gpu: &Gpu, data: &[T]) -> DeviceBuffer {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let buf = gpu.alloc(bytes.len()).expect("alloc");
    gpu.upload(buf.ptr(), bytes).expect("upload");
    buf
}

/// Times `iters` runs of `work` between two events on the GPU's stream.
fn gpu_time(gpu: &Gpu, iters: u64, mut work: impl FnMut()) -> Duration {
    let start = gpu.record_event().expect("event");
    for _ in 0..iters {
        work();
    }
    let end = gpu.record_event().expect("event");
    let ms = gpu.elapsed_ms(&start, &end).expect("elapsed");
    Duration::from_secs_f64(ms as f64 / 1e3)
}

fn record(totals: &Totals, case: &str, d: Duration, iters: u64) {
    let mut t = totals.borrow_mut();
    match t.iter_mut().find(|(c, _, _)| c == case) {
        Some(entry) => {
            entry.1 += d.as_secs_f64();
            entry.2 += iters;
        }
        None => t.push((case.to_string(), d.as_secs_f64(), iters)),
    }
}

fn bench_solves(c: &mut Criterion, gpu: &Gpu, totals: &Totals) {
    let mut rng = SplitMix64::new(2024);
    let mut group = c.benchmark_group("assign");
    let sizes = [(300usize, 10usize), (300, 100), (300, 300), (1000, 1000)];
    let costs: Vec<Vec<f32>> = sizes
        .iter()
        .map(|&(rows, cols)| (0..rows * cols).map(|_| rng.next_f32()).collect())
        .collect();
    // The default (small matrices by shortest paths, square ones up to 384 by the sparse
    // auction, raced), then the dense auction alone where the default did not use it, and the
    // sparse auction without the race (block 0's schedule alone), for comparison.
    let auction_only = AssignConfig {
        shortest_path: false,
        sparse: false,
        ..AssignConfig::default()
    };
    let cases = sizes.iter().zip(&costs).flat_map(|(&(rows, cols), cost)| {
        let (persons, objects) = (rows.min(cols), rows.max(cols));
        let default_cfg = AssignConfig::default();
        let sparse = uses_sparse(&default_cfg, persons, objects, false);
        let small = uses_shortest_path(&default_cfg, persons, objects, false) || sparse;
        let default = (
            format!("{rows}x{cols}"),
            AssignConfig::default(),
            rows,
            cols,
            cost,
        );
        let auction = (
            format!("{rows}x{cols}_auction"),
            auction_only,
            rows,
            cols,
            cost,
        );
        let solo = (
            format!("{rows}x{cols}_solo"),
            AssignConfig {
                race: false,
                ..AssignConfig::default()
            },
            rows,
            cols,
            cost,
        );
        std::iter::once(default)
            .chain(small.then_some(auction))
            .chain(sparse.then_some(solo))
    });
    for (case, cfg, rows, cols, cost) in cases {
        let buf = upload(gpu, cost);
        let batch = DeviceBatch::packed(buf.ptr(), 1, rows, cols);
        let mut assigner = Assigner::new(gpu, cfg, 1, rows, cols).expect("workspace");
        // Report the solve's rounds once, so the numbers can be read against docs/ASSIGN.md.
        assigner.solve_batch(gpu, &batch).expect("solve");
        let a = assigner.read(gpu).expect("result").remove(0);
        eprintln!(
            "{case}: {:?} (race variant {}), {} rounds, {} phases, total {:.6}",
            a.algorithm, a.variant, a.rounds, a.phases, a.total_cost
        );
        for _ in 0..3 {
            assigner.solve_batch(gpu, &batch).expect("solve");
        }
        print_profile(gpu, &case, &assigner);
        group.bench_function(&case, |b| {
            b.iter_custom(|iters| {
                let d = gpu_time(gpu, iters, || {
                    assigner.solve_batch(gpu, &batch).expect("solve")
                });
                record(totals, &case, d, iters);
                d
            })
        });
    }
    // 32 square matrices in one launch: each solves in its own block (after its cluster's
    // preparation), so the launch takes about as long as its slowest matrix.
    let (count, side) = (32usize, 300usize);
    let cost: Vec<f32> = (0..count * side * side).map(|_| rng.next_f32()).collect();
    let buf = upload(gpu, &cost);
    let batch = DeviceBatch::packed(buf.ptr(), count, side, side);
    let mut assigner =
        Assigner::new(gpu, AssignConfig::default(), count, side, side).expect("workspace");
    assigner.solve_batch(gpu, &batch).expect("solve");
    let solved = assigner.read(gpu).expect("result");
    let rounds: Vec<u32> = solved.iter().map(|a| a.rounds).collect();
    let case = format!("{count}x{side}x{side}");
    eprintln!(
        "{case}: {:?}, rounds per matrix max {} mean {:.1}",
        solved[0].algorithm,
        rounds.iter().max().unwrap_or(&0),
        rounds.iter().sum::<u32>() as f64 / count as f64
    );
    group.bench_function(&case, |b| {
        b.iter_custom(|iters| {
            let d = gpu_time(gpu, iters, || {
                assigner.solve_batch(gpu, &batch).expect("solve")
            });
            record(totals, &case, d, iters);
            d
        })
    });
    group.finish();
}

/// Prints where the last solve's time went inside the kernel (thread 0's clock64 per stage,
/// read after a few warm solves), in cycles and in microseconds at the clock the kernel ran.
fn print_profile(gpu: &Gpu, case: &str, assigner: &Assigner) {
    let p = assigner.read_profile(gpu).expect("profile").remove(0);
    let total = p.total_cycles().max(1);
    let us_per_cycle = p.ns as f64 / 1e3 / total as f64;
    let us = |c: u32| c as f64 * us_per_cycle;
    eprintln!(
        "{case}: in-kernel {:.1} us ({total} cycles, {:.2} GHz): scan {:.1} us, quantise {:.1}, \
         select {:.1}, phase bookkeeping {:.1}, forward first rounds {:.1}, block rounds {:.1}, \
         warp rounds {:.1}, chains {:.1}, reverse or sparse check {:.1}, finish {:.1}",
        p.ns as f64 / 1e3,
        total as f64 / p.ns.max(1) as f64,
        us(p.scan_cycles),
        us(p.quantise_cycles),
        us(p.select_cycles),
        us(p.phase_cycles),
        us(p.forward_first_cycles),
        us(p.forward_cycles),
        us(p.small_cycles),
        us(p.chain_cycles),
        us(p.reverse_cycles),
        us(p.finish_cycles),
    );
}

fn bench_matcher(c: &mut Criterion, gpu: &Gpu, totals: &Totals) {
    let (batch, queries, classes, per_image) = (32usize, 300usize, 80usize, 20usize);
    let total = batch * per_image;
    let mut rng = SplitMix64::new(7);
    let logits: Vec<f32> = (0..batch * queries * classes)
        .map(|_| rng.range_f32(-5.0, 5.0))
        .collect();
    let boxes: Vec<f32> = (0..batch * queries * 4)
        .map(|k| {
            if k % 4 < 2 {
                rng.next_f32()
            } else {
                rng.range_f32(0.01, 0.5)
            }
        })
        .collect();
    let labels: Vec<i32> = (0..total)
        .map(|_| rng.below(classes as u64) as i32)
        .collect();
    let targets: Vec<f32> = (0..total * 4)
        .map(|k| {
            if k % 4 < 2 {
                rng.next_f32()
            } else {
                rng.range_f32(0.01, 0.5)
            }
        })
        .collect();
    let offsets: Vec<i32> = (0..=batch).map(|b| (b * per_image) as i32).collect();
    let bufs = [
        upload(gpu, &logits),
        upload(gpu, &boxes),
        upload(gpu, &labels),
        upload(gpu, &targets),
        upload(gpu, &offsets),
    ];
    let inputs = MatcherInputs {
        logits: bufs[0].ptr(),
        boxes: bufs[1].ptr(),
        labels: bufs[2].ptr(),
        target_boxes: bufs[3].ptr(),
        target_offsets: bufs[4].ptr(),
    };
    let shape = MatcherShape {
        batch,
        queries,
        classes,
        max_targets: per_image,
        max_total: total,
        max_k: 1,
    };
    let mut matcher = Matcher::new(gpu, MatcherConfig::default(), &shape).expect("matcher");
    matcher.run(gpu, &inputs, 1).expect("matcher");
    let m = matcher.read(gpu).expect("matches");
    let rounds: Vec<u32> = m.rounds[0].iter().map(|a| a.rounds).collect();
    eprintln!(
        "32x300x20_matcher: rounds per image max {} mean {:.1}",
        rounds.iter().max().unwrap_or(&0),
        rounds.iter().sum::<u32>() as f64 / rounds.len().max(1) as f64
    );
    let case = "32x300x20_matcher";
    c.bench_function(&format!("assign/{case}"), |b| {
        b.iter_custom(|iters| {
            let d = gpu_time(gpu, iters, || {
                matcher.run(gpu, &inputs, 1).expect("matcher")
            });
            record(totals, case, d, iters);
            d
        })
    });
}

fn peer_times() -> Option<serde_json::Map<String, serde_json::Value>> {
    let path = std::env::var("FINESAM_PEER_ASSIGN").ok()?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| eprintln!("FINESAM_PEER_ASSIGN={path}: {e}"))
        .ok()?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => {
            eprintln!("FINESAM_PEER_ASSIGN={path}: not a JSON object");
            None
        }
    }
}

fn main() {
    if let Err(e) = Gpu::probe() {
        eprintln!("skipping assign benchmarks: {e}");
        return;
    }
    let gpu = Gpu::new(0).expect("opening the GPU");
    let totals: Totals = RefCell::new(Vec::new());
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_solves(&mut c, &gpu, &totals);
    bench_matcher(&mut c, &gpu, &totals);
    c.final_summary();

    let peer = peer_times();
    println!(
        "\nassign benchmarks on {} (GPU time per solve, CUDA events)",
        gpu.name()
    );
    for (case, secs, iters) in totals.borrow().iter() {
        let ms = secs * 1e3 / (*iters).max(1) as f64;
        let scipy = peer
            .as_ref()
            .and_then(|p| p.get(case.trim_end_matches("_auction").trim_end_matches("_solo")))
            .and_then(|v| v.as_f64());
        match scipy {
            Some(s) => println!(
                "  {case:>20}: {ms:9.4} ms   scipy+copy {s:9.4} ms   speed-up {:7.1}x",
                s / ms
            ),
            None => println!("  {case:>20}: {ms:9.4} ms"),
        }
    }
}
