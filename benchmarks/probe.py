"""The linear probe, ours (torch L-BFGS, float32) against scikit-learn's LogisticRegression with
the same grid, warm starts and validation split, side by side on the same features.

    python benchmarks/probe.py [--rows N]   # MNIST pixels from ../shared, else scikit-learn digits

Prints seconds and test accuracy of each and writes benchmarks/results/probe.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from simclr.probe import C_GRID, linear_probe, stratified_split  # what this benchmark measures

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def sklearn_probe(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, seed: int = 0) -> float:
    """The probe as it was before simclr/probe.py: scikit-learn, warm-started along the grid."""
    model = LogisticRegression(C=1.0, max_iter=2000, warm_start=True)
    clf = make_pipeline(StandardScaler(), model)
    tr, va = stratified_split(ytr, 0.2, seed)
    scores, solutions = [], []
    for c in sorted(C_GRID):
        model.set_params(C=c)
        scores.append(clf.fit(xtr[tr], ytr[tr]).score(xtr[va], ytr[va]))
        solutions.append((model.coef_.copy(), model.intercept_.copy()))
    best = int(np.argmax(scores))
    model.coef_, model.intercept_ = solutions[best]
    model.set_params(C=sorted(C_GRID)[best])
    return float(clf.fit(xtr, ytr).score(xte, yte))


def load(rows: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mnist = SHARED / "mnist"
    if mnist.exists():
        from simclr import load_images

        # As the image modality loads data.source and data.eval_source: the test split at the
        # training images' channels and size.
        train = load_images(str(mnist))
        test = load_images(f"{mnist}:test", train.channels, train.image_size)
        assert train.labels is not None and test.labels is not None
        x, y = train.inputs.flatten(1).float().numpy() / 255, train.labels.numpy()
        xt, yt = test.inputs.flatten(1).float().numpy() / 255, test.labels.numpy()
        return "mnist pixels", x[:rows], y[:rows], xt, yt
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return "digits pixels", x[:1200].astype(np.float32), y[:1200], x[1200:].astype(np.float32), y[1200:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=20000, help="training rows (MNIST)")
    args = parser.parse_args()
    name, xtr, ytr, xte, yte = load(args.rows)
    result: dict[str, object] = {"features": name, "train": xtr.shape, "test": xte.shape,
                                 "threads": torch.get_num_threads(), "grid": C_GRID}
    for label, fn in (("scikit-learn", sklearn_probe), ("ours", linear_probe)):
        start = time.perf_counter()
        acc = fn(xtr, ytr, xte, yte)
        result[label] = {"seconds": time.perf_counter() - start, "accuracy": acc}
        print(f"{label:>14}: {result[label]['seconds']:7.1f} s  accuracy {acc:.4f}", flush=True)  # type: ignore[index]
    ours, ref = result["ours"], result["scikit-learn"]
    print(f"speed-up {ref['seconds'] / ours['seconds']:.1f}× on {name} {xtr.shape}")  # type: ignore[index]
    out = Path(__file__).resolve().parent / "results" / "probe.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
