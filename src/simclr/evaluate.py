"""Frozen-encoder evaluation: linear probe, weighted kNN and few-label probes, with baselines."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from simclr.data import ImageData


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: torch.Tensor, batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """h = f(x) for uint8 images (N, C, H, W), encoder in eval mode; its training mode is
    restored afterwards and no parameter or buffer is touched."""
    was_training = encoder.training
    encoder.eval()
    feats = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float() / 255
        feats.append(encoder(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(feats)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` indices of each class (all of a class if it has fewer), seeded."""
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())), replace=False)
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(picked))


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    seed: int = 0, c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
) -> float:
    """Multinomial logistic regression on standardized features. The inverse regularization C
    is chosen on a stratified validation fifth of the training features (never on the test
    set) when every class has at least 5 examples, else C = 1."""

    def fit(x: np.ndarray, y: np.ndarray, c: float) -> object:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        return clf.fit(x, y)

    c_best = 1.0
    if np.bincount(train_y).min(initial=0) >= 5 and len(c_grid) > 1:
        tr, va = stratified_split(train_y, 0.2, seed)
        scores = [fit(train_x[tr], train_y[tr], c).score(train_x[va], train_y[va]) for c in c_grid]  # type: ignore[attr-defined]
        c_best = c_grid[int(np.argmax(scores))]
    return float(fit(train_x, train_y, c_best).score(test_x, test_y))  # type: ignore[attr-defined]


def knn_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    k: int = 200, temperature: float = 0.1, batch_size: int = 1024,
) -> float:
    """Weighted kNN (Wu et al. 2018): cosine similarity, the k nearest training features vote
    with weight exp(sim / temperature)."""
    train_x = F.normalize(train_x.float(), dim=1)
    k = min(k, len(train_x))
    n_classes = int(train_y.max()) + 1
    correct = 0
    for start in range(0, len(test_x), batch_size):
        q = F.normalize(test_x[start : start + batch_size].float(), dim=1)
        sim, idx = (q @ train_x.T).topk(k, dim=1)  # (b, k)
        votes = torch.zeros(len(q), n_classes)
        votes.scatter_add_(1, train_y[idx], torch.exp(sim / temperature))
        correct += int((votes.argmax(1) == test_y[start : start + batch_size]).sum())
    return correct / len(test_x)


def evaluate_features(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    seed: int = 0, few_shot: int = 5, knn_k: int = 200,
) -> dict[str, float]:
    """The demo's three numbers for one feature extractor."""
    xtr, ytr, xte, yte = train_x.numpy(), train_y.numpy(), test_x.numpy(), test_y.numpy()
    few = balanced_subset(ytr, few_shot, seed)
    return {
        "linear": linear_probe(xtr, ytr, xte, yte, seed),
        "knn": knn_accuracy(train_x, train_y, test_x, test_y, k=knn_k),
        f"few_shot_{few_shot}": linear_probe(xtr[few], ytr[few], xte, yte, seed),
    }


def raw_pixels(images: torch.Tensor) -> torch.Tensor:
    return images.float().flatten(1) / 255


def evaluate_run(
    encoder: nn.Module, make_random_encoder: Callable[[], nn.Module], data: ImageData,
    train_index: np.ndarray, test_index: np.ndarray, device: torch.device | str,
    seed: int = 0, few_shot: int = 5, knn_k: int = 200,
) -> dict[str, dict[str, float]]:
    """The frozen SimCLR encoder against the same architecture at random initialization and
    against raw pixels, on one seeded stratified split."""
    if data.labels is None:
        raise ValueError("evaluation needs labels")
    labels = data.labels
    torch.manual_seed(seed)
    random_encoder = make_random_encoder().to(device)
    results = {}
    for name, feats in (
        ("simclr", extract_features(encoder, data.images, device=device)),
        ("random_init", extract_features(random_encoder, data.images, device=device)),
        ("raw_pixels", raw_pixels(data.images)),
    ):
        tr, te = torch.as_tensor(train_index), torch.as_tensor(test_index)
        results[name] = evaluate_features(feats[tr], labels[tr], feats[te], labels[te], seed, few_shot, knn_k)
    return results
