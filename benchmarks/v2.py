"""SimCLRv2 within a CPU budget (`python benchmarks/v2.py [--dataset digits|mnist]`): the README's
SimCLRv2 table.

A pool of training images (the first `--pool`) is pretrained on without labels, with the
v1 head (2 layers) and the v2 head (3 layers, BN). Each run is evaluated by fine-tuning on a
class-balanced 1 % and 10 % of the pool's labels from h and from the first head layer, against
the same network trained from scratch on the same labels. Then `simclr distill` fine-tunes a
teacher on each fraction (from h for v1, from head layer 1 for v2: the papers' recipes) and
trains a same-size student (self-distillation) on the teacher's predictions for the whole pool.
Test accuracy is on the first `--test` test images (digits: the images after the pool). MNIST
needs ../shared/datasets/mnist. Writes benchmarks/results/v2_<dataset>.json, prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from simclr import load_images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"
# quality.py's short-run settings: sqrt learning-rate scaling (SimCLR appendix B.1), τ = 0.5.
PRETRAIN = ["model.encoder=small_cnn", "batch_size=128", "augment.flip_prob=0", "optim.lr_scaling=sqrt",
            "optim.lr=0.075", "temperature=0.5", "report=false", "eval_every=0", "threads=2",
            "augment.min_scale=0.08", "data.pretrain_on=train"]
FRACTIONS = (0.01, 0.1)


def write_subsets(out: Path, dataset: str, pool: int, test: int) -> tuple[Path, Path]:
    """npz files of the first `pool` training images and the first `test` test images (digits:
    scikit-learn's 1797, upsampled to 16 px as the built-in source does, split in that order)."""
    if dataset == "mnist":
        train, held_out = load_images(str(SHARED), None, None), load_images(f"{SHARED}:test", None, None)
    else:
        train = load_images("digits", None, None)
        held_out = train.subset(np.arange(pool, min(pool + test, len(train))))
    assert train.labels is not None and held_out.labels is not None
    paths = out / f"{dataset}-pool.npz", out / f"{dataset}-test.npz"
    np.savez(paths[0], x=train.images[:pool, 0].numpy(), y=train.labels[:pool].numpy())
    np.savez(paths[1], x=held_out.images[:test, 0].numpy(), y=held_out.labels[:test].numpy())
    return paths


def simclr(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "simclr", *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--pool", type=int, default=1000, help="training images used (their labels hidden)")
    parser.add_argument("--test", type=int, default=797, help="test images for the accuracies")
    parser.add_argument("--epochs", type=int, default=30, help="pretraining epochs over the pool")
    parser.add_argument("--distill-epochs", type=int, default=30, help="student epochs over the pool")
    parser.add_argument("--out", default="runs/v2")
    args = parser.parse_args()
    if args.dataset == "mnist" and not SHARED.exists():
        sys.exit(f"skipped: {SHARED} is absent")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool, test = write_subsets(out, args.dataset, args.pool, args.test)
    results: dict[str, dict[str, object]] = {}
    for version in (1, 2):
        run = out / f"head-v{version}"
        wall = simclr("train", "--data", str(pool), "--eval-data", str(test), "--epochs", str(args.epochs),
                      "--out", str(run), *PRETRAIN, f"model.head_version={version}", "eval_finetune_from=[h,head1]")
        row: dict[str, object] = {"pretrain_wall_s": round(wall), **json.loads((run / "eval.json").read_text())}
        for fraction in FRACTIONS:
            name = f"distill-{fraction * 100:g}pct"
            wall = simclr("distill", str(run), "--data", str(pool), "--student", "small_cnn", "--out", str(run / name),
                          f"distill.label_fraction={fraction}", f"distill.epochs={args.distill_epochs}",
                          "eval_finetune=false", "threads=2")
            row[name] = {"wall_s": round(wall), **json.loads((run / name / "eval.json").read_text())}
        results[f"v{version}"] = row
    results["settings"] = vars(args)
    Path(f"benchmarks/results/v2_{args.dataset}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(results: dict[str, dict[str, object]]) -> str:
    def cell(row: object, key: str) -> str:
        value = row.get(key) if isinstance(row, dict) else None
        return "–" if value is None else f"{100 * float(value):.1f}"

    lines = ["| pretraining head | fine-tuned from | distilled | 1 % labels | 10 % labels |", "|---|---|---|---|---|"]
    sup = results["v1"]["supervised"]
    lines.append(f"| none (supervised from scratch) | – | no | {cell(sup, 'finetune_1pct')} | "
                 f"{cell(sup, 'finetune_10pct')} |")
    for version, teacher in (("v1", "h"), ("v2", "head1")):
        r = results[version]
        for layer in ("h", "head1"):
            metrics = [f"finetune_{layer}_{p}" if layer != "h" else f"finetune_{p}" for p in ("1pct", "10pct")]
            cells = " | ".join(cell(r["simclr"], m) for m in metrics)
            lines.append(f"| {version} | {layer} | no | {cells} |")
        students = [r[f"distill-{p}"]["student"] for p in ("1pct", "10pct")]  # type: ignore[index]
        lines.append(f"| {version} | {teacher} | self-distilled | {cell(students[0], 'classifier_1pct')} | "
                     f"{cell(students[1], 'classifier_10pct')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
