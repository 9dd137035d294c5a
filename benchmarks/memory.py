"""Host memory bounded by the batch, not the data set: one epoch on a set whose decoded cache is
several times the process's peak anonymous memory, against the same run with the set in RAM.

    python benchmarks/memory.py [--images 160000] [--device cpu] [--out benchmarks/results/memory.json]

The set is generated as an STL-10 binary folder (`unlabeled_X.bin`, the layout of STL-10's
unlabelled 96 px images), so `simclr train --data DIR:unlabeled` converts it once into the decode
cache and then reads it memory-mapped. 160,000 images (4.4 GB) by default: STL-10's own 100,000
(2.8 GB) are only about 3.4 times what this process holds anyway at batch 64 (torch, the network's
activations: about 0.8 GiB), and the point is a set several times larger than that.

Each run is `simclr train` in a child process; this script samples the child's anonymous
resident memory (RssAnon: its own pages, not the page cache that holds the mapped file) every
50 ms and reads images/s from metrics.jsonl.

1. the first load: the conversion into the cache (chunked), timed and its peak memory recorded;
2. streamed: `data.device_resident=false`, batches gathered from the map by the prefetcher;
3. in RAM: `data.device_resident=true`, the whole set read into memory first (on a GPU it would
   be copied to the device instead).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def generate(folder: Path, n: int, seed: int = 0) -> Path:
    """STL-10 binary images: smooth random colour fields (not noise: crops and blur act as on photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "unlabeled_X.bin"
    per = 3 * 96 * 96
    if path.exists() and path.stat().st_size == n * per:
        return folder
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for start in range(0, n, 2000):
            m = min(2000, n - start)
            coarse = rng.integers(0, 256, (m, 3, 6, 6), dtype=np.uint8)
            f.write(np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3).tobytes())
    return folder


def anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(args: list[str], out: Path, log: Path) -> dict[str, Any]:
    """`simclr train ARGS --out OUT` in a child; its peak RssAnon, wall time and images/s."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "simclr", "train", *args, "--out", str(out)]
    peak, wall = watch(cmd, log)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    rates = [r["images_per_s"] for r in rows[1:]] or [rows[-1]["images_per_s"]]  # the first includes warm-up
    device = re.search(r"peak device memory ([0-9.]+) GiB", log.read_text())  # on a GPU only
    return {"peak_anon_mib": peak, "wall_s": wall, "images_per_s": statistics.median(rates),
            "peak_device_gib": float(device.group(1)) if device else None,
            "steps": rows[-1]["step"], "command": " ".join(["simclr", "train", *args])}


def convert(source: str, cache: Path, log: Path) -> dict[str, Any]:
    """The first load: the set converted into the decode cache, in a child."""
    code = (f"from simclr.data import load_images; d = load_images({source!r}, cache_dir={str(cache)!r}); "
            "print(len(d), tuple(d.images.shape))")
    peak, wall = watch([sys.executable, "-c", code], log)
    return {"peak_anon_mib": peak, "wall_s": wall}


def watch(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd`; its peak RssAnon in MiB, sampled every 50 ms, and its wall time."""
    start = time.perf_counter()
    with open(log, "w") as f:
        child = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        peak = 0

        def sample() -> None:
            nonlocal peak
            while child.poll() is None:
                peak = max(peak, anon_kib(child.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        code = child.wait()
        sampler.join()
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}); see {log}")
    return peak / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=160_000)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "memory")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--encoder", default="small_cnn_w0.5")
    parser.add_argument("--device", default="cpu", help="cuda: the device's peak memory is recorded too")
    parser.add_argument("--keep", action="store_true", help="keep the generated set and cache")
    a = parser.parse_args()
    data = generate(a.work / "stl", a.images)
    cache = a.work / "cache"
    common = ["--data", f"{data}:unlabeled", "--epochs", "1", f"batch_size={a.batch_size}",
              f"model.encoder={a.encoder}", "report=false", "checkpoint_every=0", "log_every=20",
              f"device={a.device}", f"data.cache_dir={cache}"]
    cache_bytes = a.images * 3 * 96 * 96
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "images": a.images,
        "cache_gib": cache_bytes / 2**30,
    }
    shutil.rmtree(cache, ignore_errors=True)
    print("== converting into the cache", flush=True)
    results["convert"] = convert(f"{data}:unlabeled", cache, a.work / "convert.log")
    print(json.dumps(results["convert"]), flush=True)
    stages = {
        "streamed": [*common, "data.device_resident=false"],
        "in_ram": [*common, "data.device_resident=true"],
    }
    for name, args in stages.items():
        print(f"== {name}", flush=True)
        results[name] = run(args, a.work / name, a.work / f"{name}.log")
        print(json.dumps(results[name]), flush=True)
    streamed, in_ram = results["streamed"], results["in_ram"]
    results["cache_over_streamed_peak"] = cache_bytes / 2**20 / streamed["peak_anon_mib"]
    results["streamed_speed_vs_in_ram"] = streamed["images_per_s"] / in_ram["images_per_s"]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"cache {results['cache_gib']:.2f} GiB; streamed peak anon {streamed['peak_anon_mib']:.0f} MiB "
          f"({results['cache_over_streamed_peak']:.1f}x smaller), in RAM {in_ram['peak_anon_mib']:.0f} MiB; "
          f"images/s streamed {streamed['images_per_s']:.0f} vs in RAM {in_ram['images_per_s']:.0f} "
          f"({results['streamed_speed_vs_in_ram']:.2f}x); wrote {a.out}")
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
