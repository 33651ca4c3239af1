#!/usr/bin/env bash
# Makes nvcc available to build.rs without a CUDA toolkit: installs the pinned NVIDIA pip wheels
# (CUDA 13.0, matching the GPU machine's driver 580) into .cuda/, where build.rs finds them.
# Does nothing when nvcc is already reachable (NVCC, CUDA_HOME, PATH, /usr/local/cuda, .cuda/).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${NVCC:-}" ] && [ -x "$NVCC" ]; then exit 0; fi
if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then exit 0; fi
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then exit 0; fi
if ls .cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc >/dev/null 2>&1; then exit 0; fi

echo "installing the pinned CUDA 13.0 compiler wheels into .cuda/ (about 330 MB)"
python3 -m venv .cuda
# nvidia-nvvm is pinned too: a newer NVVM emits PTX that the 13.0 ptxas rejects.
.cuda/bin/pip install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
ls .cuda/lib/python3*/site-packages/nvidia/cu13/bin/nvcc
