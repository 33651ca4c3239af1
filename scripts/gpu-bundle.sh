#!/usr/bin/env bash
# Builds everything the GPU machine runs (it has no Rust toolchain) and stages it into .bundle/
# (ignored by git, carried by the device tool): release GPU test executables, criterion bench
# executables, the finesam CLI, and the official-code wheels the parity generator imports.
# Then one device call runs scripts/gpu-run.sh. Keep .bundle under the 64 MiB carry limit
# (BUNDLE_ONLY below).
set -euo pipefail
cd "$(dirname "$0")/.."

# The GPU machine is Hopper: sm_90a machine code alone keeps the bundle small (the full target
# list is what CI and `cargo build` use). Override with FINESAM_CUDA_ARCHS.
export FINESAM_CUDA_ARCHS=${FINESAM_CUDA_ARCHS:-90a}
rm -rf .bundle/bin
mkdir -p .bundle/bin .bundle/wheels

# Copies the executables cargo reports for targets whose name matches $1 into .bundle/bin,
# named by target (plus a prefix), so the runner needs no hashes.
stage() {
    python3 -c '
import json, re, shutil, sys
pattern, prefix = re.compile(sys.argv[1]), sys.argv[2]
for line in sys.stdin:
    msg = json.loads(line)
    exe = msg.get("executable")
    name = msg.get("target", {}).get("name", "")
    if msg.get("reason") == "compiler-artifact" and exe and pattern.fullmatch(name):
        shutil.copy2(exe, ".bundle/bin/" + prefix + name)
        print("staged", prefix + name)
' "$1" "$2"
}

cargo build --release --bin finesam
cp target/release/finesam .bundle/bin/
cargo test --release --no-run --message-format=json 2>/dev/null | stage 'gpu_.*' ''
cargo bench --no-run --message-format=json 2>/dev/null | stage '.*' 'bench_'
# The bench harness also builds the library's and CLI's unit-test benches; keep real benches only.
for f in .bundle/bin/bench_*; do
    name=${f#.bundle/bin/bench_}
    [ -f "benches/$name.rs" ] || rm -f "$f"
done

if ! ls .bundle/wheels/d_fine_project-1.0.0-*.whl .bundle/wheels/mobilesam_mirror-1.0.0-*.whl >/dev/null 2>&1; then
    python3 -m pip download -q --no-deps -d .bundle/wheels d-fine-project==1.0.0 mobilesam-mirror==1.0.0
fi
# Every executable embeds all kernel images (~2.5 MB): BUNDLE_ONLY (an extended regex of
# executable names) keeps a device call's bundle under the carry limit.
if [ -n "${BUNDLE_ONLY:-}" ]; then
    for f in .bundle/bin/*; do
        basename "$f" | grep -qE "^(${BUNDLE_ONLY})$" || rm -f "$f"
    done
fi
strip .bundle/bin/* 2>/dev/null || true
du -sh .bundle
ls -la .bundle/bin
