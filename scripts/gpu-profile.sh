#!/usr/bin/env bash
# Runs on the GPU machine after scripts/gpu-bundle.sh: a per-kernel GPU-time profile (ncu) of
# one MobileSAM encoder forward and one decoder graph replay, as CSV files in $OUT.
#     bash scripts/gpu-profile.sh [encoder] [decoder]     # default: both
# Env: PROFILE_BOXES (decoder prompts, default 8), PROFILE_LAUNCHES (kernels, default 120).
set -uo pipefail
OUT=${OUT:-/tmp/finesam-out}
mkdir -p "$OUT"
parts=${*:-encoder decoder}
launches=${PROFILE_LAUNCHES:-120}
ncu_csv() {  # ncu_csv NAME EXE: profile the first $launches kernels of EXE's benchmark
    FINESAM_GEMM_TUNE=0 ncu --csv --metrics gpu__time_duration.sum --launch-count "$launches" \
        --kill yes ".bundle/bin/$2" --bench > "$OUT/ncu_$1.csv" 2> "$OUT/ncu_$1.err"
    echo "ncu $1: $(grep -c gpu__time_duration "$OUT/ncu_$1.csv") kernels profiled"
}
[[ " $parts " == *" encoder "* ]] && ncu_csv encoder bench_mobilesam_encoder
[[ " $parts " == *" decoder "* ]] && FINESAM_BENCH_BOXES=${PROFILE_BOXES:-8} ncu_csv decoder bench_mobilesam_decoder
exit 0
