"""The linear probe: multinomial logistic regression on standardized frozen features, solved by
full-batch L-BFGS in torch, so that it runs on the training GPU when there is one.

The objective is scikit-learn's `LogisticRegression` (C · Σ cross-entropy + ½‖W‖², the intercept
not penalised), divided by C·n: the same minimiser. It is strictly convex, so any solver that
converges finds the same weights; the tests check the objective against scikit-learn's solution.
scikit-learn's L-BFGS runs in float64 on one core and was the slowest part of an evaluation;
float32 matrix products on the device are what the probe needs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

C_GRID = (0.01, 0.1, 1.0, 10.0)


def stratified_split(labels: np.ndarray, test_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test indices with the class proportions of `labels` in both parts; `test_size`
    is a fraction (float) or a count (int) of the samples."""
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Zero mean, unit variance per feature from the training rows (a constant feature keeps
    scale 1, as in scikit-learn's StandardScaler)."""
    mean, std = train.mean(0), train.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(x - mean) / std for x in (train, *others)]


def objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Mean cross-entropy + ‖W‖² / (2·C·n): scikit-learn's loss divided by C·n."""
    return F.cross_entropy(torch.addmm(b, x, w), y) + w.square().sum() / (2 * c * len(x))


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 1000, tolerance: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (d, n_classes) and intercepts minimising `objective`, from `init` or zeros.
    Stops when no gradient entry exceeds `tolerance`: scikit-learn's default `tol` on the same
    scaled objective (a tighter tolerance costs iterations without changing the accuracy)."""
    w = (init[0].clone() if init else x.new_zeros(x.shape[1], n_classes)).requires_grad_()
    b = (init[1].clone() if init else x.new_zeros(n_classes)).requires_grad_()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=10, tolerance_grad=tolerance,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(x, y, w, b, c)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def walk_grid(c_grid: tuple[float, ...], score: Callable[[float], float]) -> list[float]:
    """Validation scores along the grid from the strongest regularization (smallest C), stopping
    at the first C that scores below the best so far. Validation accuracy over C rises to one
    peak and falls; past it the weaker regularizations cannot win, and they are the slowest fits."""
    scores: list[float] = []
    for c in sorted(c_grid):
        scores.append(score(c))
        if scores[-1] < max(scores):
            break
    return scores


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    seed: int = 0, c_grid: tuple[float, ...] = C_GRID, device: torch.device | str | None = None,
) -> float:
    """Test accuracy of the probe. The inverse regularization C is chosen on a stratified
    validation fifth of the training features (never on the test set) when every class has at
    least 5 examples, else C = 1: the grid is walked from the strongest regularization and stops
    at the first C that scores below the best so far. Classes are those of the training labels."""
    dev = torch.device(device) if device is not None else default_device()
    classes, y_idx = np.unique(train_y, return_inverse=True)
    if len(classes) == 1:  # nothing to fit: every prediction is the one class
        return float(np.mean(test_y == classes[0]))
    k = len(classes)
    xtr, xte = (torch.as_tensor(np.asarray(a), dtype=torch.float32, device=dev) for a in (train_x, test_x))
    ytr = torch.as_tensor(y_idx, device=dev)

    # Warm starts along the grid (strongest regularization first) and into the final fit: the
    # optimum is the same, L-BFGS needs far fewer iterations.
    c_best, init = 1.0, None
    if np.bincount(y_idx).min() >= 5 and len(c_grid) > 1:
        tr, va = (torch.as_tensor(i, device=dev) for i in stratified_split(y_idx, 0.2, seed))
        a, v = standardize(xtr[tr], xtr[va])
        solutions: list[tuple[torch.Tensor, torch.Tensor]] = []

        def score(c: float) -> float:
            w, b = fit_logistic(a, ytr[tr], k, c, solutions[-1] if solutions else None)
            solutions.append((w, b))
            return float((torch.addmm(b, v, w).argmax(1) == ytr[va]).float().mean())

        scores = walk_grid(c_grid, score)
        best = int(np.argmax(scores))
        init = solutions[best]
        c_best = sorted(c_grid)[best]
    a, t = standardize(xtr, xte)
    w, b = fit_logistic(a, ytr, k, c_best, init)
    predicted = classes[torch.addmm(b, t, w).argmax(1).cpu().numpy()]
    return float(np.mean(predicted == test_y))
