#!/usr/bin/env bash
# CUDA checks and figures for issue 6, on an NVIDIA machine, in under 9 minutes:
#   bash benchmarks/gpu.sh [OUT_DIR] [CIFAR_TRAIN_ZIP]
# 1. benchmarks/gpu_bench.py: CUDA against CPU (nt_xent values and gradients, augmentation
#    statistics, bf16 autocast against float32), then augmentation, nt_xent, step overhead and
#    training images/s for ResNet-18 at 32 px and ResNet-50 at 224 px in bf16 (≤ 200 s).
# 2. The test suite with its end-to-end CLI runs (image, video, text, series, paired) on CUDA
#    (SIMCLR_TEST_DEVICE=cuda; ≤ 240 s; 150 s with 12 workers was too short on 2026-11-29).
# 3. With a CIFAR-10 JPEG zip: `simclr train` on it, ResNet-18 (CIFAR stem), batch 512, bf16,
#    40 epochs, then its evaluation (≤ 200 s).
# Everything lands in OUT_DIR (default benchmarks/gpu-out). Without a GPU it says so and exits 0.
# The Python it runs needs simclr installed (`pip install --no-deps --no-build-isolation -e .`:
# the console-script test looks for `simclr` beside the interpreter) and av for the video tests.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-benchmarks/gpu-out}"
CIFAR="${2:-}"
mkdir -p "$OUT_DIR"

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
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.log"
export PYTHONUNBUFFERED=1
status=0

echo "== 1. checks and figures"
timeout 200 "$PY" benchmarks/gpu_bench.py --out "$OUT_DIR/gpu_results.json" 2>&1 | tee -a "$OUT_DIR/gpu.log" || status=1

echo "== 2. the test suite, CLI runs on CUDA"
SIMCLR_TEST_DEVICE=cuda timeout 240 "$PY" -m pytest -q -n 16 --dist loadfile -p no:cacheprovider -p no:benchmark \
  --tb=short -rfE tests \
  > "$OUT_DIR/pytest.log" 2>&1 || status=1
tail -n 15 "$OUT_DIR/pytest.log"

if [[ -n "$CIFAR" ]]; then
  echo "== 3. simclr train on $CIFAR"
  run="$OUT_DIR/cifar"
  start=$(date +%s)
  timeout 200 "$PY" -m simclr train --data "$CIFAR" --epochs 40 --out "$run" device=cuda model.encoder=resnet18 \
    batch_size=512 eval_finetune=false report=false checkpoint_every=0 data.cache_dir=/tmp/simclr-cache \
    > "$OUT_DIR/cifar.log" 2>&1 || status=1
  echo "wall seconds: $(( $(date +%s) - start ))" >> "$OUT_DIR/cifar.log"
  tail -n 25 "$OUT_DIR/cifar.log"
  cp "$run/eval.json" "$OUT_DIR/cifar_eval.json" 2>/dev/null
  cp "$run/metrics.jsonl" "$OUT_DIR/cifar_metrics.jsonl" 2>/dev/null
  rm -rf "$run"
fi
exit $status
