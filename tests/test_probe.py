"""The torch linear probe against scikit-learn's LogisticRegression, an independent solver of the
same convex objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from simclr.probe import fit_logistic, linear_probe, objective, standardize, walk_grid


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = x[order].astype(np.float32), y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_fit_reaches_scikit_learns_optimum(c: float) -> None:
    xtr, ytr, _, _ = digits()
    x = standardize(torch.as_tensor(xtr, dtype=torch.float64))[0]
    y = torch.as_tensor(ytr)
    w, b = fit_logistic(x, y, 10, c, tolerance=1e-7)
    ref = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(x.numpy(), ytr)
    w_ref = torch.as_tensor(ref.coef_.T.copy())
    b_ref = torch.as_tensor(ref.intercept_.copy())
    ours, theirs = objective(x, y, w, b, c).item(), objective(x, y, w_ref, b_ref, c).item()
    assert ours <= theirs * (1 + 1e-6)  # at least as low as scikit-learn's solution
    assert theirs <= ours * (1 + 1e-4)  # and the same optimum, not a lucky other point
    torch.testing.assert_close(w, w_ref, rtol=0, atol=2e-3 * float(w_ref.abs().max()))


def test_default_tolerance_stops_as_close_to_the_optimum_as_scikit_learns() -> None:
    xtr, ytr, _, _ = digits()
    x = standardize(torch.as_tensor(xtr))[0]  # float32, as the probe runs
    y = torch.as_tensor(ytr)
    w, b = fit_logistic(x, y, 10, 1.0)
    ref = LogisticRegression(C=1.0, max_iter=5000).fit(x.numpy(), ytr)  # its default tol=1e-4
    ours = objective(x, y, w, b, 1.0).item()
    theirs = objective(x, y, torch.as_tensor(ref.coef_.T.copy()), torch.as_tensor(ref.intercept_.copy()), 1.0).item()
    assert abs(ours - theirs) <= 1e-3 * theirs


def test_probe_accuracy_matches_a_scikit_learn_pipeline_at_the_chosen_c() -> None:
    xtr, ytr, xte, yte = digits()
    ours = linear_probe(xtr, ytr, xte, yte, c_grid=(1.0,))  # one C: no validation split
    # Both stop at gradient entries <= 1e-4, short of the exact optimum: a few test digits differ.
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    assert abs(ours - pipe.fit(xtr, ytr).score(xte, yte)) <= 0.01
    grid = linear_probe(xtr, ytr, xte, yte)  # C chosen on a validation fifth of the training rows
    assert 0.9 < grid <= 1.0


def test_labels_need_not_be_contiguous_and_one_class_predicts_it() -> None:
    xtr, ytr, xte, yte = digits()
    keep_tr, keep_te = np.isin(ytr, (3, 7)), np.isin(yte, (3, 7))
    acc = linear_probe(xtr[keep_tr], ytr[keep_tr] * 10, xte[keep_te], yte[keep_te] * 10)
    assert acc > 0.97  # labels 30 and 70 predicted as such
    ones = np.full(5, 4)
    assert linear_probe(xtr[:5], ones, xte[:10], yte[:10]) == float(np.mean(yte[:10] == 4))


def test_constant_features_do_not_break_standardization() -> None:
    x = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    z = standardize(x)[0]
    assert torch.isfinite(z).all() and torch.equal(z[:, 1], torch.zeros(3))


def test_grid_walk_stops_past_the_peak() -> None:
    scores = {0.01: 0.5, 0.1: 0.6, 1.0: 0.55, 10.0: 0.9}  # 10 would win, but the curve has turned
    asked: list[float] = []

    def score(c: float) -> float:
        asked.append(c)
        return scores[c]

    assert walk_grid((10.0, 1.0, 0.1, 0.01), score) == [0.5, 0.6, 0.55]
    assert asked == [0.01, 0.1, 1.0]
    rising = {0.01: 0.1, 0.1: 0.2, 1.0: 0.3, 10.0: 0.3}  # ties do not stop it
    assert walk_grid(tuple(rising), rising.__getitem__) == [0.1, 0.2, 0.3, 0.3]
