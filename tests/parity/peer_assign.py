#!/usr/bin/env python3
"""scipy timings for the assignment benchmarks (benches/assign.rs), on the GPU machine.

Usage:  python3 tests/parity/peer_assign.py OUT.json
then:   FINESAM_PEER_ASSIGN=OUT.json cargo bench --bench assign

Cases (uniform random float32 costs in [0, 1) on the GPU: the Rust benchmark's own matrices,
drawn from the same SplitMix64 stream, so scipy and finesam solve identical inputs. scipy's time
depends on the matrix: the CPU oracle, scipy's algorithm, needs 2505-4463 row scans on 40 seeded
300x300 matrices, 3999 on the benchmark's):
  300x10, 300x100, 300x300, 1000x1000: cost.cpu() (the device-to-host copy the original
      pipeline made) + scipy.optimize.linear_sum_assignment, per solve;
  32x300x300: one copy of 32 such matrices + 32 solves;
  32x300x20_matcher: the official D-FINE HungarianMatcher forward on the GPU (cost
      construction, .cpu(), 32 x linear_sum_assignment) for 32 images, 300 queries, 80 classes,
      20 targets each (matcher loaded like gen_assign.py does, from $FINESAM_WHEELS).
Prints a table and writes {case: milliseconds} (median over repetitions) as JSON.
"""

import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_assign import load_official  # noqa: E402


GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def splitmix_f32(seed, start, count):
    """Draws start .. start + count of SplitMix64(seed).next_f32() (src/assign/random.rs)."""
    k = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    z = np.uint64(seed) + k * GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / float(1 << 24)).astype(np.float32)


def bench_matrices():
    """benches/assign.rs's matrices in its order: SplitMix64(2024) fills 300x10, 300x100,
    300x300, 1000x1000 and then 32 x 300x300, row-major."""
    shapes = [(300, 10), (300, 100), (300, 300), (1000, 1000), (32, 300, 300)]
    out, start = [], 0
    for shape in shapes:
        count = int(np.prod(shape))
        out.append(splitmix_f32(2024, start, count).reshape(shape))
        start += count
    return out


def timed(fn, min_seconds=1.0, repeats=7):
    """Median milliseconds per call over `repeats` batches of at least min_seconds / repeats."""
    fn()  # warm-up
    per_batch = min_seconds / repeats
    samples = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= per_batch:
                break
        samples.append(elapsed / n * 1e3)
    return statistics.median(samples)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    dev = "cuda"
    if not torch.cuda.is_available():
        print("no CUDA device: timings would not be comparable")
        sys.exit(1)
    results = {}
    *singles, batched = bench_matrices()
    for host in singles:
        rows, cols = host.shape
        cost = torch.from_numpy(host).to(dev)
        torch.cuda.synchronize()

        def solve():
            linear_sum_assignment(cost.cpu().numpy())

        results[f"{rows}x{cols}"] = timed(solve)

    batch = torch.from_numpy(batched).to(dev)
    torch.cuda.synchronize()

    def solve_batch():
        host = batch.cpu().numpy()
        for k in range(host.shape[0]):
            linear_sum_assignment(host[k])

    results["32x300x300"] = timed(solve_batch)

    Matcher = load_official()
    bs, nq, ncls, nt = 32, 300, 80, 20
    g = torch.Generator().manual_seed(1)
    outputs = {
        "pred_logits": (torch.randn(bs, nq, ncls, generator=g) * 3).to(dev),
        "pred_boxes": torch.cat([torch.rand(bs, nq, 2, generator=g),
                                 torch.rand(bs, nq, 2, generator=g) * 0.5 + 0.01], -1).to(dev),
    }
    targets = [{"labels": torch.randint(0, ncls, (nt,), generator=g).to(dev),
                "boxes": torch.cat([torch.rand(nt, 2, generator=g),
                                    torch.rand(nt, 2, generator=g) * 0.5 + 0.01], -1).to(dev)}
               for _ in range(bs)]
    matcher = Matcher(dict(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0), use_focal_loss=True,
                      alpha=0.25, gamma=2.0)

    def match():
        matcher(outputs, targets)  # ends with .cpu() and scipy: synchronous

    results["32x300x20_matcher"] = timed(match)

    print(f"scipy {__import__('scipy').__version__}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}")
    for case, ms in results.items():
        print(f"  {case:>20}: {ms:9.4f} ms")
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
