"""Video quality benchmark: SimCLR on Moving-MNIST-style clips within a fixed CPU budget.

Renders clips from the real MNIST digits (one digit per clip bouncing off the borders, random
direction, one of two speeds; label = the digit) as lossless video files in class folders, then
runs the product's own command line on that folder: `simclr train` for a pretraining budget
sized from a few timed steps, whose final evaluation compares the frozen SimCLR encoder with
the same network at random init and with raw pixels of the central clip.

    python benchmarks/moving_mnist.py                       # needs ../shared/datasets/mnist
    python benchmarks/moving_mnist.py --render-only --out my_clips
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from simclr import load_images
from simclr.video.io import write_video  # the clip writer and renderer: video-modality internals
from simclr.video.moving_digits import render_clips

ROOT = Path(__file__).resolve().parents[1]
# Frame-pooled small CNN (half width), 16 stored frames at 32 px, views of 4 frames: what a
# few minutes of two CPU cores can pretrain (r3d_18 runs at ~2 clips/s here). Views of 8 frames
# at batch 128 took 1.47 s a step on the idle machine, 4 frames at batch 64 0.26 s: the same
# minutes give about 6x more steps (the earlier run, 80 steps, lost to random init on kNN).
VIDEO = ["video.encoder=small_cnn_w0.5", "video.frames=16", "video.clip_frames=4", "video.size=32",
         "data.channels=1"]
# Digits are not mirror-symmetric (no flips); a crop under 20% of a 32 px frame often misses
# the ~14 px digit. Short-run settings as in quality.py (paper appendix B.1).
RECIPE = ["batch_size=64", "augment.flip_prob=0", "augment.min_scale=0.2", "optim.lr_scaling=sqrt",
          "optim.lr=0.075", "temperature=0.5", "data.test_fraction=0.3",
          "data.pretrain_on=train"]


def render(mnist: str, out: Path, per_class: int, frames: int, canvas: int, fps: float, seed: int) -> int:
    """`per_class` clips of each digit from distinct MNIST training images -> OUT/<digit>/*.mkv."""
    data = load_images(mnist, channels=1, image_size=28)
    assert data.labels is not None
    clips, labels = render_clips(data.images[:, 0].numpy(), data.labels.numpy(), per_class, frames, canvas, seed)
    for i, (clip, label) in enumerate(tqdm(list(zip(clips, labels, strict=True)), desc="writing clips")):
        folder = out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        write_video(folder / f"clip_{i:05d}.mkv", clip, fps)
    return len(clips)


def seconds_per_step(folder: Path, overrides: list[str], steps: int = 3) -> tuple[float, int]:
    """Time a few real training steps (after one warm-up) of the benchmark's model on its data;
    returns (seconds per step, steps per epoch)."""
    from step_timing import seconds_per_step as timed

    from simclr import load_config

    return timed(load_config(None, [f"data.source={folder}", *overrides]), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default=str(ROOT.parent / "shared/datasets/mnist"))
    parser.add_argument("--out", default=str(ROOT / "runs/moving_mnist_clips"), help="the clip folder")
    parser.add_argument("--run", default=str(ROOT / "runs/moving_mnist"), help="the simclr run directory")
    parser.add_argument("--results", default=str(ROOT / "benchmarks/results/moving_mnist.json"))
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--canvas", type=int, default=64, help="rendered size; the run reads 32 px")
    parser.add_argument("--fps", type=float, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-min", type=float, default=7.0, help="pretraining minutes")
    parser.add_argument("--epochs", type=int, help="skip the timing and train this many epochs")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if not (out / "0").is_dir():
        if not Path(args.mnist).is_dir():
            sys.exit(f"MNIST not found at {args.mnist} (give --mnist)")
        n = render(args.mnist, out, args.per_class, args.frames, args.canvas, args.fps, args.seed)
        print(f"{n} clips of {args.frames} frames at {args.canvas} px in {out}", flush=True)
    if args.render_only:
        return
    threads = torch.get_num_threads()
    cache = [f"data.cache_dir={Path(args.run).parent / 'cache'}"]
    overrides = [*VIDEO, *RECIPE, *cache, f"threads={threads}"]
    epochs, step_s, steps_per_epoch = args.epochs, None, None
    if epochs is None:
        step_s, steps_per_epoch = seconds_per_step(out, overrides)
        epochs = max(1, int(args.budget_min * 60 / (step_s * steps_per_epoch)))
        print(f"{step_s:.2f} s/step × {steps_per_epoch} steps/epoch → {epochs} epochs", flush=True)
    command = [sys.executable, "-m", "simclr", "train", "--data", str(out), "--epochs", str(epochs),
               "--out", args.run, *overrides, "eval_finetune=false",
               "eval_every=0", "report=false"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    results = json.loads((Path(args.run) / "eval.json").read_text())
    summary = {
        "command": "python benchmarks/moving_mnist.py", "train_command": " ".join(command[1:]),
        "clips": sum(1 for _ in out.rglob("*.mkv")), "epochs": epochs, "seconds_per_step": step_s,
        "steps_per_epoch": steps_per_epoch, "train_and_eval_wall_s": round(wall, 1), "threads": threads,
        "results": results,
    }
    Path(args.results).write_text(json.dumps(summary, indent=2) + "\n")
    print("\n| encoder | linear | kNN | few_shot_5 | linear_1pct | linear_10pct |\n|---|---|---|---|---|---|")
    for name in ("simclr", "random_init", "raw_pixels"):
        row = results[name]
        cells = " | ".join(f"{row[m]:.3f}" for m in ("linear", "knn", "few_shot_5", "linear_1pct", "linear_10pct"))
        print(f"| {name} | {cells} |")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
