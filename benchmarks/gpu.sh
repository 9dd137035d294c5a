#!/usr/bin/env bash
# CUDA checks and figures for issue 6, on an NVIDIA machine, in about 5 minutes:
#   bash benchmarks/gpu.sh [--out FILE]
# Checks CUDA against CPU (nt_xent values and gradients, augmentation statistics, bf16
# autocast against float32), then measures augmentation, nt_xent, step overhead and training
# images/s for ResNet-18 at 32 px and ResNet-50 at 224 px in bf16. Without a GPU it says so
# and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu.sh: no NVIDIA GPU here (nvidia-smi not found); nothing to measure."
  exit 0
fi
if ! "$PY" -c "import torch, simclr" >/dev/null 2>&1; then
  echo "gpu.sh: $PY cannot import torch and simclr; run 'make test' (or set PYTHON=...) first." >&2
  exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: nvidia-smi is present but torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device; nothing to measure."
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec timeout 330 "$PY" benchmarks/gpu_bench.py "$@"
