"""Loader throughput on the CIFAR-10 JPEG zip: first pass (decoding into an empty cache)
versus later passes (reading the memory-mapped cache), in images per second.

    python benchmarks/bench_data.py [--source PATH] [--repeats 5] [--workers N]

Every pass ends by copying all pixels into memory, so the cached figure includes reading
the cache file, not just mapping it. The cache lives in a temporary folder, removed after.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from simclr import load_images

DEFAULT_SOURCE = (
    Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_jpeg"
    / "cifar10-train-first2000perclass-jpeg.zip"
)


def timed_load(source: str, cache: Path, workers: int | None) -> tuple[float, int]:
    start = time.perf_counter()
    data = load_images(source, cache_dir=cache, workers=workers)
    pixels = data.images.clone()  # touch every byte
    return time.perf_counter() - start, int(pixels.shape[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(DEFAULT_SOURCE))
    parser.add_argument("--repeats", type=int, default=5, help="cached passes (the best is reported)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: per CPU, max 4)")
    args = parser.parse_args()
    if not Path(args.source).exists():
        print(f"benchmark data not found: {args.source}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="simclr-bench-cache-") as tmp:
        cold_s, n = timed_load(args.source, Path(tmp), args.workers)
        warm_s = min(timed_load(args.source, Path(tmp), args.workers)[0] for _ in range(args.repeats))
    result = {
        "source": Path(args.source).name,
        "images": n,
        "first_pass_s": round(cold_s, 3),
        "first_pass_images_per_s": round(n / cold_s),
        "cached_s": round(warm_s, 4),
        "cached_images_per_s": round(n / warm_s),
        "speedup": round(cold_s / warm_s, 1),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
