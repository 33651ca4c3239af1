#!/usr/bin/env bash
# Runs on the GPU machine after scripts/gpu-bundle.sh: a per-kernel GPU-time profile (ncu) of
# one MobileSAM encoder forward and one decoder graph replay, as CSV files in $OUT.
#     bash scripts/gpu-profile.sh [encoder] [decoder]     # default: both
# Env: PROFILE_BOXES (decoder prompts, default 8), PROFILE_LAUNCHES (kernels, default 120),
#      PROFILE_KERNELS (an ncu kernel-name regex: only those kernels), PROFILE_SECTIONS (ncu
#      sections, e.g. "Occupancy LaunchStats", instead of the GPU-time metric).
set -uo pipefail
OUT=${OUT:-/tmp/finesam-out}
mkdir -p "$OUT"
parts=${*:-encoder decoder}
what=(--metrics gpu__time_duration.sum)
if [ -n "${PROFILE_SECTIONS:-}" ]; then
    what=()
    for s in $PROFILE_SECTIONS; do what+=(--section "$s"); done
fi
filter=()
[ -n "${PROFILE_KERNELS:-}" ] && filter=(--kernel-name "regex:$PROFILE_KERNELS")
ncu_csv() {  # ncu_csv NAME EXE: profile the first $PROFILE_LAUNCHES kernels of EXE's benchmark
    FINESAM_GEMM_TUNE=0 ncu --csv "${what[@]}" "${filter[@]}" \
        --launch-count "${PROFILE_LAUNCHES:-120}" --kill yes ".bundle/bin/$2" --bench \
        > "$OUT/ncu_$1.csv" 2> "$OUT/ncu_$1.err"
    echo "ncu $1: $(grep -c '^"[0-9]' "$OUT/ncu_$1.csv") rows"
}
[[ " $parts " == *" encoder "* ]] && ncu_csv encoder bench_mobilesam_encoder
[[ " $parts " == *" decoder "* ]] && FINESAM_BENCH_BOXES=${PROFILE_BOXES:-8} ncu_csv decoder bench_mobilesam_decoder
exit 0
