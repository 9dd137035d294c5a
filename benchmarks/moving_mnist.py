"""Render Moving-MNIST-style clips from the real MNIST digits and write them as lossless video
files in class folders (`OUT/<digit>/clip_00000.mkv`), ready for `simclr train --data OUT`.

    python benchmarks/moving_mnist.py --mnist ../shared/datasets/mnist --out data/moving_mnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from simclr.data import load_images
from simclr.video.io import write_video
from simclr.video.moving_digits import render_clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/mnist"))
    parser.add_argument("--split", default="train", choices=("train", "test"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--canvas", type=int, default=64)
    parser.add_argument("--fps", type=float, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = args.mnist if args.split == "train" else f"{args.mnist}:test"
    data = load_images(source, channels=1, image_size=28)
    assert data.labels is not None
    clips, labels = render_clips(data.images[:, 0].numpy(), data.labels.numpy(), args.per_class, args.frames,
                                 args.canvas, args.seed)
    out = Path(args.out)
    for i, (clip, label) in enumerate(tqdm(list(zip(clips, labels, strict=True)), desc="writing clips")):
        folder = out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        write_video(folder / f"clip_{i:05d}.mkv", clip, args.fps)
    print(f"{len(clips)} clips of {args.frames} frames at {args.canvas} px in {out}")


if __name__ == "__main__":
    main()
