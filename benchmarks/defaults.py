"""The defaults table: `simclr train --data X` with no flags on small real sets it has never
been tuned on, against raw inputs and random init (docs/defaults.md).

    .venv/bin/python benchmarks/defaults.py                 # every set; ~1 h on 2 cores
    .venv/bin/python benchmarks/defaults.py --only mnist-1k,cifar10-1k

The image sets are stratified, seeded subsets of `../shared/datasets` written as class folders
(MNIST as PNG, CIFAR-10 as its own JPEG files) under `--sets`, so that each run is exactly what a
user with a folder of images types. Each case is one subprocess of the CLI with nothing but
`--data` and `--out` (and `--set` overrides, recorded, for trials; the committed table has
none). Results: benchmarks/results/defaults.json, one entry per set (a run replaces its own).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from bench import cpu_name  # the figures depend on the CPU

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "benchmarks" / "results" / "defaults.json"
UCR = ["Epilepsy", "Libras", "PenDigits", "RacketSports", "SwedishLeaf", "TwoLeadECG", "UWaveGestureLibrary"]
CASES = ["digits", "mnist-1k", "cifar10-1k", "mnist-5k", "cifar10-5k", *(f"ucr-{n}" for n in UCR), "sms_spam",
         "ag_news"]
METRICS = ("linear", "knn", "few_shot_5")


def per_class(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` indices, the same number of each class, picked by a seeded permutation."""
    classes = np.unique(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    picked = [order[labels[order] == c][: count // len(classes)] for c in classes]
    return np.sort(np.concatenate(picked))


def mnist_folder(out: Path, count: int) -> Path:
    """`count` MNIST training digits as grey PNG files in one folder per class."""
    from PIL import Image

    if (out / ".done").exists():
        return out
    with gzip.open(SHARED / "mnist" / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(SHARED / "mnist" / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for i in per_class(labels, count, seed=0):
        folder = out / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    (out / ".done").touch()
    return out


def cifar_folder(out: Path, count: int) -> Path:
    """`count` CIFAR-10 training images, their JPEG files as they are, in one folder per class."""
    if (out / ".done").exists():
        return out
    with zipfile.ZipFile(SHARED / "cifar10_jpeg" / "cifar10-train-first2000perclass-jpeg.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        classes = np.array([n.split("/")[1] for n in names])
        for i in per_class(classes, count, seed=0):
            target = out / classes[i] / Path(names[i]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(names[i]))
    (out / ".done").touch()
    return out


def source(name: str, sets: Path) -> str:
    if name == "digits":
        return "digits"
    if name.startswith(("mnist-", "cifar10-")):
        kind, size = name.split("-")
        make = mnist_folder if kind == "mnist" else cifar_folder
        return str(make(sets / name, int(size.removesuffix("k")) * 1000))
    if name.startswith("ucr-"):
        return str(SHARED / "ucr_uea_ts" / name.removeprefix("ucr-"))
    if name == "ag_news":
        return str(SHARED / "ag_news_test" / "test.csv")
    return str(SHARED / "sms_spam" / "SMSSpamCollection")


def run_case(name: str, sets: Path, runs: Path, overrides: list[str]) -> dict[str, object]:
    data, out = source(name, sets), runs / name
    shutil.rmtree(out, ignore_errors=True)  # a run left there would be resumed with its old settings
    cmd = [str(ROOT / ".venv" / "bin" / "simclr"), "train", "--data", data, "--out", str(out), *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    log = done.stderr + done.stdout
    if done.returncode:
        print(log[-3000:], file=sys.stderr)
        return {"error": log.strip().splitlines()[-1] if log.strip() else f"exit {done.returncode}"}
    results = json.loads((out / "eval.json").read_text())
    train_s = [json.loads(line).get("elapsed_s") for line in (out / "metrics.jsonl").read_text().splitlines()]
    schedule = [line.split("] ", 1)[-1] for line in log.splitlines() if "schedule:" in line]
    baseline = next(k for k in results if k not in ("simclr", "random_init", "supervised", "notes"))
    rows = {k: {m: results[k].get(m) for m in (*METRICS, "nn1_euclidean") if results[k].get(m) is not None}
            for k in ("simclr", "random_init", baseline)}
    return {"source": data.replace(str(SHARED), "../shared/datasets"), "overrides": overrides, "baseline": baseline,
            "results": rows, "train_s": next((s for s in reversed(train_s) if s is not None), None),
            "wall_s": wall, "schedule": schedule[0] if schedule else None,
            "notes": results.get("notes", [])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated cases: " + ", ".join(CASES))
    parser.add_argument("--sets", type=Path, default=ROOT / ".cache" / "defaults-sets")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every case (trials only: recorded in the entry)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the datasets in {SHARED}")
    names = args.only.split(",") if args.only else CASES
    unknown = set(names) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; known: {', '.join(CASES)}")
    saved = json.loads(args.results.read_text()) if args.results.exists() else {"cases": {}}
    for name in names:
        entry = run_case(name, args.sets, args.runs, args.set)
        entry["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        print(json.dumps({name: entry}, indent=1), flush=True)
        saved["cases"][name] = entry
        saved["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count()}
        args.results.write_text(json.dumps(saved, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
