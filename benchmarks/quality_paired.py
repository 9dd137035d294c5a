"""Paired quality benchmark within a wall-clock budget on a CPU.

- cifar10 (image + text): the CIFAR-10 JPEG subset's training zip (../shared/datasets/cifar10_jpeg)
  paired with class-name prompts ("a photo of a cat.", "a blurry photo of a cat.", ...), evaluated
  on the official test zip.
- pendigits (series + text): the UEA PenDigits pen trajectories (../shared/datasets/ucr_uea_ts;
  2 channels × 8 steps, 7,494 train / 3,498 test) paired with prompts naming the digit.

Each trains its two encoders with the cross-modal loss, then reports zero-shot accuracy,
retrieval recall@1/5/10 both ways, and the first side's linear probe and kNN against a
random-init encoder and the raw inputs.

The number of epochs is chosen from a measured step time so that pretraining takes
`--pretrain-share` of `--budget-min` (the rest is decoding and evaluation):

    python benchmarks/quality_paired.py --budget-min 10
    python benchmarks/quality_paired.py --case pendigits --epochs 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from simclr import build_optimizer, load_config
from simclr.experiment import input_shape_of, load_datasets  # the run's own splits, as `simclr train` loads them
from simclr.modality import get, trainer_of
from simclr.training import update  # the loop's own update (zero_grad, backward, step)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
# AdamW as in CLIP (LARS is SimCLR's large-batch optimizer), fixed learning rate (no batch
# scaling), learned temperature from 0.07 as in CLIP, each side's own augmentation.
COMMON = [
    "data.modality=paired", "batch_size=128", "optim.name=adamw", "optim.lr=0.002", "optim.lr_scaling=none",
    "optim.weight_decay=0.0001", "text.width=128", "eval_finetune=false", "eval_every=0", "report=false",
    "threads=2",
]
PEN = SHARED / "ucr_uea_ts" / "PenDigits"
CASES: dict[str, dict[str, object]] = {
    "cifar10": {
        "train": SHARED / "cifar10_jpeg" / "cifar10-train-first2000perclass-jpeg.zip",
        "test": SHARED / "cifar10_jpeg" / "cifar10-test-jpeg.zip",
        "overrides": [*COMMON, "model.encoder=small_cnn"],
        "baseline": "raw_pixels",
    },
    "pendigits": {
        "train": PEN / "PenDigits_TRAIN.ts",
        "test": None,  # the TEST file beside it is the held-out pairs
        "overrides": [*COMMON, "paired.modalities=[series,text]", "series.encoder=fcn", "series.width=64",
                      "paired.templates=['the pen wrote a {}.','a trace of the digit {}.','someone drew a {}.',"
                      "'a handwritten {}.']"],
        "baseline": "raw_series",
    },
}


def seconds_per_step(overrides: list[str], train_source: Path, steps: int = 5) -> tuple[float, int]:
    """Measured time of one training step (after a warm-up) and the steps in one epoch."""
    cfg = load_config(None, [*overrides, f"data.source={train_source}"])
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    modality = get("paired")
    trainer = trainer_of(modality)  # paired data trains its own network with its own loss
    assert trainer is not None
    train, _ = load_datasets(cfg, modality)  # decodes into the cache the run reads again
    model = trainer.build_model(cfg, input_shape_of(train), train)
    objective = trainer.objective(cfg, model, train, torch.device("cpu"))
    optimizer = build_optimizer(model, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay)
    gen = torch.Generator().manual_seed(0)
    rows = torch.arange(cfg.batch_size)
    x = train.inputs[rows]
    update(optimizer, objective(model, x, rows, gen))
    start = time.perf_counter()
    for _ in range(steps):
        update(optimizer, objective(model, x, rows, gen))
    return (time.perf_counter() - start) / steps, len(train) // cfg.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), default="cifar10")
    parser.add_argument("--budget-min", type=float, default=10.0, help="wall minutes, all included")
    parser.add_argument("--pretrain-share", type=float, default=0.55, help="part of the budget for pretraining")
    parser.add_argument("--epochs", type=int, help="skip the timing and train this many epochs")
    parser.add_argument("--out", help="run directory (default runs/quality_paired[-CASE])")
    args = parser.parse_args()
    case = CASES[args.case]
    overrides = list(case["overrides"])  # type: ignore[call-overload]
    train = Path(str(case["train"]))
    if not train.exists():
        raise SystemExit(f"{args.case}: {train} is absent (../shared/datasets)")
    out = args.out or ("runs/quality_paired" if args.case == "cifar10" else f"runs/quality_paired-{args.case}")
    began = time.perf_counter()
    epochs = args.epochs
    if not epochs:
        step_s, per_epoch = seconds_per_step(overrides, train)
        epochs = max(1, int(args.budget_min * 60 * args.pretrain_share / (step_s * per_epoch)))
        print(f"{step_s:.2f} s/step × {per_epoch} steps/epoch → {epochs} epochs", flush=True)
    test = ["--eval-data", str(case["test"])] if case["test"] else []
    command = [sys.executable, "-m", "simclr", "train", "--data", str(train), *test,
               "--epochs", str(epochs), "--out", out, *overrides]
    subprocess.run(command, check=True)
    wall = time.perf_counter() - began
    evaluation = json.loads((Path(out) / "eval.json").read_text())
    temperature = None
    state = torch.load(Path(out) / "checkpoint.pt", map_location="cpu", weights_only=True)
    if "temperature.log_inverse" in state["model"]:
        temperature = float(torch.exp(-state["model"]["temperature.log_inverse"]))
    rows = ("paired", "random_init", str(case["baseline"]))
    result = {"epochs": epochs, "wall_s": round(wall), "final_temperature": temperature, "overrides": overrides,
              **{row: evaluation[row] for row in rows}}
    path = Path(__file__).parent / "results" / "quality_paired.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.case] = result  # the other cases' published rows stay
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{args.case}: {epochs} epochs, {wall / 60:.1f} min wall, final temperature {temperature}")
    metrics = ["zero_shot", *(m for m in evaluation["paired"] if "2" in m and "_r" in m), "linear", "knn"]
    print("| encoder | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for row in rows:
        values = evaluation[row]
        cells = " | ".join("–" if values.get(m) is None else f"{values[m]:.3f}" for m in metrics)
        print(f"| {row} | {cells} |")


if __name__ == "__main__":
    main()
