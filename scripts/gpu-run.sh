#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, after scripts/gpu-bundle.sh staged .bundle/:
# generates the PyTorch references, runs every GPU test for real (a missing GPU or fixture is a
# failure here), times the PyTorch peers and runs `finesam bench` and the criterion benches.
# Logs go to $OUT (the device tool brings them back).
#
#     bash scripts/gpu-run.sh [tests] [bench] [sanitize]      # default: tests bench
set -uo pipefail
OUT=${OUT:-/tmp/finesam-out}
mkdir -p "$OUT"
export FINESAM_WHEELS=$PWD/.bundle/wheels
export FINESAM_FIXTURES=${FINESAM_FIXTURES:-/tmp/finesam-fixtures}
export FINESAM_REQUIRE_GPU=1 FINESAM_REQUIRE_FIXTURES=1 PYTHONUNBUFFERED=1
parts=${*:-tests bench}
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"

if [[ " $parts " == *" tests "* ]]; then
    python3 tests/parity/generate.py "$FINESAM_FIXTURES" ${SECTIONS:-} 2>&1 | tee "$OUT/generate.log" || status=1
    for t in .bundle/bin/gpu_*; do
        echo "=== $t"
        "$t" --test-threads=1 --nocapture 2>&1 || status=1
    done | tee "$OUT/tests.log"
    grep -E "^test result|FAILED|panicked" "$OUT/tests.log"
fi

if [[ " $parts " == *" sanitize "* ]]; then
    for tool in memcheck racecheck; do
        for t in .bundle/bin/gpu_*; do
            echo "=== compute-sanitizer --tool $tool $t"
            compute-sanitizer --tool "$tool" --error-exitcode 3 "$t" --test-threads=1 ${SANITIZE_FILTER:-} 2>&1 | tail -n 25 || status=1
        done
    done | tee "$OUT/sanitize.log"
fi

if [[ " $parts " == *" bench "* ]]; then
    for peer in tests/parity/peer_*.py; do
        name=$(basename "$peer" .py)
        python3 "$peer" "$OUT/$name.json" 2>&1 | tee -a "$OUT/peers.log" || status=1
    done
    .bundle/bin/finesam bench --peer "$OUT/peer_preprocess.json" 2>&1 | tee "$OUT/bench.txt" || status=1
    for b in .bundle/bin/bench_*; do
        echo "=== $b"
        FINESAM_PEER_DIR=$OUT "$b" --bench 2>&1 || status=1
    done | tee "$OUT/criterion.log" | grep -vE "^(Found|  [0-9]+ \(|Benchmarking .*: (Warming|Collecting|Analyzing))"
fi
echo "gpu-run status: $status"
exit $status
