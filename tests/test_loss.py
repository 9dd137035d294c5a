"""NT-Xent against the paper's formula (SimCLR, eq. 1 and Algorithm 1), written out independently."""

from __future__ import annotations

import math

import pytest
import torch

from simclr import nt_xent


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """The paper's loss with explicit Python loops, in float64.

    The paper numbers the 2N views 1..2N with the pair of sample k at (2k-1, 2k). With
    0-based indices that is views[2k] = z1[k], views[2k+1] = z2[k], and the positive of
    view i is i ^ 1 (2k <-> 2k+1).
    """
    n = z1.shape[0]
    views = []
    for k in range(n):
        views.append([float(v) for v in z1[k].double()])
        views.append([float(v) for v in z2[k].double()])

    def sim(u: list[float], v: list[float]) -> float:
        dot = sum(a * b for a, b in zip(u, v, strict=True))
        return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    def ell(i: int, j: int) -> float:
        denominator = 0.0
        for k in range(2 * n):
            if k != i:
                denominator += math.exp(sim(views[i], views[k]) / tau)
        return -math.log(math.exp(sim(views[i], views[j]) / tau) / denominator)

    total = 0.0
    for k in range(n):  # L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]
        total += ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k)
    return total / (2 * n)


def random_pair(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
@pytest.mark.parametrize("d", [2, 5, 16])
@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_matches_loop_reference(n: int, d: int, tau: float) -> None:
    z1, z2 = random_pair(n, d, seed=100 * n + d)
    expected = reference_nt_xent(z1, z2, tau)
    assert nt_xent(z1, z2, temperature=tau).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_matches_reference_with_correlated_pairs() -> None:
    # Positives much closer than negatives, as after training: the loss is small and the
    # pairing must be right for it to be small.
    z1, _ = random_pair(6, 8, seed=1)
    z2 = z1 + 0.05 * random_pair(6, 8, seed=2)[0]
    loss = nt_xent(z1, z2, temperature=0.1).item()
    assert loss == pytest.approx(reference_nt_xent(z1, z2, 0.1), rel=1e-10)
    assert loss < 0.2  # the true pairs are nearly certain...
    assert nt_xent(z1, z2.roll(1, 0), temperature=0.1).item() > 2  # ...mismatched ones are not


def test_hand_computed_case() -> None:
    # N = 2, d = 2, tau = 0.5. After normalization the views are
    #   a1 = z1[0] = (1, 0),  a2 = z1[1] = (0, 1),  b1 = z2[0] = (0, 1),  b2 = z2[1] = (-1, 0)
    # and the positive pairs are (a1, b1) and (a2, b2); sim/tau = 2 * cosine.
    #   anchor a1: positive b1 (0); others a2 (0), b2 (-2)  -> l = log(2 + e^-2)
    #   anchor a2: positive b2 (0); others a1 (0), b1 (+2)  -> l = log(2 + e^2)
    #   anchor b1: positive a1 (0); others a2 (+2), b2 (0)  -> l = log(2 + e^2)
    #   anchor b2: positive a2 (0); others a1 (-2), b1 (0)  -> l = log(2 + e^-2)
    # L = (1/4) * 2 * [log(2 + e^-2) + log(2 + e^2)] = (1/2) log(5 + 4 cosh 2) ≈ 1.49908
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[0.0, 2.0], [-3.0, 0.0]], dtype=torch.float64)  # lengths do not matter
    expected = 0.5 * math.log(5 + 4 * math.cosh(2))
    assert nt_xent(z1, z2, temperature=0.5).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1.49908, abs=1e-5)


@pytest.mark.parametrize("n", [1, 2, 5, 64])
@pytest.mark.parametrize("tau", [0.05, 0.5, 2.0])
def test_identical_embeddings_give_log_2n_minus_1(n: int, tau: float) -> None:
    # Every similarity is 1: the positive is one of 2N - 1 equal terms.
    z = torch.randn(1, 7, dtype=torch.float64).expand(n, 7)
    loss = nt_xent(z, z.clone(), temperature=tau)
    assert loss.item() == pytest.approx(math.log(2 * n - 1), abs=1e-12)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_symmetric_in_views(n: int) -> None:
    z1, z2 = random_pair(n, 6, seed=n)
    a = nt_xent(z1, z2, temperature=0.3)
    b = nt_xent(z2, z1, temperature=0.3)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_invariant_to_scaling_each_row() -> None:
    z1, z2 = random_pair(5, 4, seed=3)
    g = torch.Generator().manual_seed(4)
    s1 = 10 ** torch.empty(5, 1, dtype=torch.float64).uniform_(-3, 3, generator=g)
    s2 = 10 ** torch.empty(5, 1, dtype=torch.float64).uniform_(-3, 3, generator=g)
    base = nt_xent(z1, z2, temperature=0.2).item()
    assert nt_xent(z1 * s1, z2 * s2, temperature=0.2).item() == pytest.approx(base, rel=1e-12)
    # ... but not to flipping a row's sign (a negative factor changes the cosine).
    flipped = z1.clone()
    flipped[0] *= -1
    assert nt_xent(flipped, z2, temperature=0.2).item() != pytest.approx(base, rel=1e-3)


def test_gradcheck_float64() -> None:
    z1, z2 = random_pair(3, 4, seed=5)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, temperature=0.5), (z1, z2))


def test_gradient_matches_reference_direction() -> None:
    # The gradient of the mean over 2N anchors, checked against finite differences of the
    # loop reference itself (independent of autograd through nt_xent).
    z1, z2 = random_pair(2, 3, seed=6)
    z1.requires_grad_(True)
    nt_xent(z1, z2, temperature=0.4).backward()
    eps = 1e-6
    numeric = torch.zeros_like(z1)
    for i in range(2):
        for j in range(3):
            plus, minus = z1.detach().clone(), z1.detach().clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric[i, j] = (reference_nt_xent(plus, z2, 0.4) - reference_nt_xent(minus, z2, 0.4)) / (2 * eps)
    torch.testing.assert_close(z1.grad, numeric, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)],
)
def test_input_dtypes(dtype: torch.dtype, tol: float) -> None:
    # bfloat16 keeps 8 bits of mantissa: inputs are rounded by ~0.4%, so the loss can only be
    # close to the float64 value, not equal.
    z1, z2 = random_pair(16, 32, seed=7)
    expected = reference_nt_xent(z1, z2, 0.5)
    a, b = z1.to(dtype).requires_grad_(True), z2.to(dtype).requires_grad_(True)
    loss = nt_xent(a, b, temperature=0.5)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected, abs=tol, rel=tol)
    loss.backward()
    assert a.grad is not None and a.grad.dtype == dtype and torch.isfinite(a.grad).all()


def test_bfloat16_small_temperature_stays_finite_and_close() -> None:
    # exp(sim / 0.1) over many negatives: the reason low precision must be upcast.
    z1, z2 = random_pair(128, 16, seed=8)
    expected = nt_xent(z1, z2, temperature=0.1).item()
    loss = nt_xent(z1.bfloat16(), z2.bfloat16(), temperature=0.1)
    assert loss.item() == pytest.approx(expected, abs=5e-2)


@pytest.mark.parametrize("tau", [0.0, -0.5])
def test_non_positive_temperature_raises(tau: float) -> None:
    z1, z2 = random_pair(2, 3, seed=10)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z1, z2, temperature=tau)


@pytest.mark.parametrize(
    ("shape1", "shape2"),
    [((3, 4), (2, 4)), ((3, 4), (3, 5)), ((4,), (4,)), ((2, 3, 4), (2, 3, 4))],
)
def test_bad_shapes_raise(shape1: tuple[int, ...], shape2: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        nt_xent(torch.randn(shape1), torch.randn(shape2))
