#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, after scripts/gpu-bundle.sh staged .bundle/:
# generates the PyTorch references, runs every GPU test for real (a missing GPU or fixture is a
# failure here), compute-sanitizer, the PyTorch peers, `finesam bench` and the criterion
# benches. Three logs go to $OUT (the device tool brings them back).
#
#     bash scripts/gpu-run.sh [tests] [sanitize] [bench]      # default: tests bench
# Env: SECTIONS (generator sections, default all), TESTS (test executables, default gpu_*),
#      BENCHES (bench executables, default all), SANITIZE_FILTER (test name filter).
set -uo pipefail
OUT=${OUT:-/tmp/finesam-out}
mkdir -p "$OUT"
export FINESAM_WHEELS=$PWD/.bundle/wheels
export FINESAM_FIXTURES=${FINESAM_FIXTURES:-/tmp/finesam-fixtures}
export FINESAM_REQUIRE_GPU=1 FINESAM_REQUIRE_FIXTURES=1 PYTHONUNBUFFERED=1
export PYTHONWARNINGS=ignore
PEERS=/tmp/finesam-peers
mkdir -p "$PEERS"
parts=${*:-tests bench}
tests=${TESTS:-$(ls .bundle/bin/gpu_* | xargs -n1 basename)}
benches=${BENCHES:-$(ls .bundle/bin/bench_* | xargs -n1 basename)}
rm -f /tmp/finesam-failed
fail() { echo "FAILED: $*"; echo "$*" >> /tmp/finesam-failed; }

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    date -u
} | tee "$OUT/tests.log"

if [[ " $parts " == *" tests "* ]]; then
    python3 tests/parity/generate.py "$FINESAM_FIXTURES" ${SECTIONS:-} 2>&1 || fail generator
    for t in $tests; do
        echo "=== $t"
        ".bundle/bin/$t" --test-threads=1 --nocapture 2>&1 || fail "$t"
    done
fi 2>&1 | tee -a "$OUT/tests.log"

if [[ " $parts " == *" sanitize "* ]]; then
    for tool in memcheck racecheck; do
        for t in $tests; do
            echo "=== compute-sanitizer --tool $tool $t"
            compute-sanitizer --tool "$tool" --error-exitcode 3 ".bundle/bin/$t" --test-threads=1 \
                ${SANITIZE_FILTER:-} 2>&1 | grep -E "test result|ERROR SUMMARY|RACECHECK SUMMARY|FAILED|Invalid|Race|panicked" \
                || fail "sanitize $t"
        done
    done 2>&1 | tee "$OUT/sanitize.log"
fi

if [[ " $parts " == *" bench "* ]]; then
    export FINESAM_PEER_ASSIGN=$PEERS/peer_assign.json
    for peer in tests/parity/peer_*.py; do
        python3 "$peer" "$PEERS/$(basename "$peer" .py).json" 2>&1 || fail "$peer"
    done
    .bundle/bin/finesam bench --peer "$PEERS/peer_preprocess.json" 2>&1 || fail "finesam bench"
    for b in $benches; do
        echo "=== $b"
        ".bundle/bin/$b" --bench 2>&1 || fail "$b"
    done | grep -vE "^(Found|  [0-9]+ \(|Benchmarking .*: (Warming|Collecting|Analyzing))|^Benchmarking [^:]*$"
fi 2>&1 | tee "$OUT/bench.log"

grep -hE "^test result|FAILED|panicked" "$OUT/tests.log" | sort | uniq -c
if [ -s /tmp/finesam-failed ]; then
    echo "gpu-run FAILED: $(tr '\n' ';' < /tmp/finesam-failed)"
    exit 1
fi
echo "gpu-run: all passed"
