"""Paired (image + caption) quality benchmark within a wall-clock budget on a CPU.

CIFAR-10 JPEG subset (../shared/datasets/cifar10_jpeg): the training zip's images paired with
class-name prompts ("a photo of a cat.", "a blurry photo of a cat.", ...), an image encoder
and a text encoder trained with the cross-modal loss, then evaluated on the official test zip:
zero-shot accuracy, retrieval recall@1/5/10 both ways, and the image encoder's linear probe
against a random-init encoder and raw pixels.

The number of epochs is chosen from a measured step time so that pretraining takes
`--pretrain-share` of `--budget-min` (the rest is decoding and evaluation):

    python benchmarks/quality_paired.py --budget-min 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from simclr.config import load_config
from simclr.experiment import input_shape_of, load_datasets
from simclr.modality import get
from simclr.optim import build_optimizer
from simclr.train import update

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10_jpeg"
TRAIN = SHARED / "cifar10-train-first2000perclass-jpeg.zip"
TEST = SHARED / "cifar10-test-jpeg.zip"
# AdamW as in CLIP (LARS is SimCLR's large-batch optimizer), fixed learning rate (no batch
# scaling), learned temperature from 0.07 as in CLIP, the CIFAR augmentation for the images.
OVERRIDES = [
    "data.modality=paired", "model.encoder=small_cnn", "batch_size=128", "optim.name=adamw", "optim.lr=0.002",
    "optim.lr_scaling=none", "optim.weight_decay=0.0001", "text.width=128", "eval_finetune=false",
    "eval_every=0", "report=false", "threads=2",
]
METRICS = ("zero_shot", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "linear", "knn")


def seconds_per_step(overrides: list[str], steps: int = 5) -> tuple[float, int]:
    """Measured time of one training step (after a warm-up) and the steps in one epoch."""
    cfg = load_config(None, [*overrides, f"data.source={TRAIN}"])
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    train, _ = load_datasets(cfg)  # decodes into the cache the run reads again
    modality = get("paired")
    model = modality.build_model(cfg, input_shape_of(train), train)  # type: ignore[attr-defined]
    objective = modality.objective(cfg, model, train, torch.device("cpu"))  # type: ignore[attr-defined]
    optimizer = build_optimizer(model, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay)
    gen = torch.Generator().manual_seed(0)
    rows = torch.arange(cfg.batch_size)
    x = train.images[rows]
    update(optimizer, objective(model, x, rows, gen))
    start = time.perf_counter()
    for _ in range(steps):
        update(optimizer, objective(model, x, rows, gen))
    return (time.perf_counter() - start) / steps, len(train) // cfg.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-min", type=float, default=10.0, help="wall minutes, all included")
    parser.add_argument("--pretrain-share", type=float, default=0.55, help="part of the budget for pretraining")
    parser.add_argument("--epochs", type=int, help="skip the timing and train this many epochs")
    parser.add_argument("--out", default="runs/quality_paired")
    args = parser.parse_args()
    began = time.perf_counter()
    epochs = args.epochs
    if not epochs:
        step_s, per_epoch = seconds_per_step(OVERRIDES)
        epochs = max(1, int(args.budget_min * 60 * args.pretrain_share / (step_s * per_epoch)))
        print(f"{step_s:.2f} s/step × {per_epoch} steps/epoch → {epochs} epochs", flush=True)
    warmup = max(0.5, round(epochs / 10, 1))
    command = [sys.executable, "-m", "simclr", "train", "--data", str(TRAIN), "--eval-data", str(TEST),
               "--epochs", str(epochs), "--out", args.out, *OVERRIDES, f"optim.warmup_epochs={warmup}"]
    subprocess.run(command, check=True)
    wall = time.perf_counter() - began
    evaluation = json.loads((Path(args.out) / "eval.json").read_text())
    temperature = None
    state = torch.load(Path(args.out) / "checkpoint.pt", map_location="cpu", weights_only=True)
    if "temperature.log_inverse" in state["model"]:
        temperature = float(torch.exp(-state["model"]["temperature.log_inverse"]))
    result = {"epochs": epochs, "wall_s": round(wall), "final_temperature": temperature, "overrides": OVERRIDES,
              **{row: evaluation[row] for row in ("paired", "random_init", "raw_pixels")}}
    Path(__file__).with_name("quality_paired_results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{epochs} epochs, {wall / 60:.1f} min wall, final temperature {temperature}")
    print("| encoder | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for row in ("paired", "random_init", "raw_pixels"):
        values = evaluation[row]
        cells = " | ".join("–" if values.get(m) is None else f"{values[m]:.3f}" for m in METRICS)
        print(f"| {row} | {cells} |")


if __name__ == "__main__":
    main()
