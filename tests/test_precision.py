"""bf16 autocast and torch.compile in the training step: the same SimCLR update, within rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from simclr import device as device_module
from simclr.config import load_config
from simclr.device import NATIVE_BF16_ENV, native_bf16, use_bf16
from simclr.errors import UserError
from simclr.loss import nt_xent
from simclr.modality import get
from simclr.model import build_model
from simclr.optim import build_optimizer
from simclr.training import train_step


def _pair() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 8)
    x1, x2 = torch.rand(2, 32, 1, 8, 8)
    return model, copy.deepcopy(model), x1, x2


# bf16 keeps 8 significant bits: rounding to it errs by at most U16 relative; float32 by U32.
U16, U32 = 2.0**-8, 2.0**-24


def bf16_error_bound(terms: int) -> float:
    """Relative to sum |x_k w_k|: the most a bf16 autocast product of `terms` terms may err.
    Inputs and weights are rounded to bf16 (U16 each), their products are exact in float32,
    the sum accumulates in float32 (gamma_K = K U32 / (1 - K U32)) and the output is rounded to
    bf16 (U16 again). Doubled: a blocked or reordered algorithm may round a partial sum twice."""
    gamma = terms * U32 / (1 - terms * U32)
    return 2 * ((1 + U16) ** 3 * (1 + gamma) - 1)


def _check_layer(forward: object, layer: torch.nn.Module, x: torch.Tensor, terms: int) -> None:
    assert callable(forward)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = forward(layer, x)
    assert y.dtype == torch.bfloat16
    exact = forward(copy.deepcopy(layer).double(), x.double())  # float64: the reference
    scale = forward(_absolute(layer), x.double().abs())  # sum |x_k w_k| (+ |b|) per output
    err = (y.double() - exact).abs()
    assert (err <= bf16_error_bound(terms) * scale).all(), (err / scale).max().item()
    # Not vacuous: the output was really computed in bf16, beyond any float32 rounding.
    assert (err > 2 * terms * U32 * scale).any()


def _absolute(layer: torch.nn.Module) -> torch.nn.Module:
    out = copy.deepcopy(layer).double()
    with torch.no_grad():
        for p in out.parameters():
            p.abs_()
    return out


def test_bf16_convolution_is_within_the_bf16_bound_of_float64_on_any_cpu() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, padding=1)
    _check_layer(lambda m, x: m(x), conv, torch.randn(4, 16, 12, 12), terms=16 * 9 + 1)


def test_bf16_linear_is_within_the_bf16_bound_of_float64_on_any_cpu() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 64)
    _check_layer(lambda m, x: m(x), linear, torch.randn(32, 512), terms=512 + 1)


# The bf16 step's change of each parameter against the float64 step's, relative to its norm:
# 0.02-0.18 measured (2026-12-06, 2-core AMD EPYC CPU with native bf16); a skipped step is 1.0 off, a
# step at half the learning rate 0.5. (The gradient bound below allows 0.375 per gradient and a
# LARS step twice a gradient's relative error: too loose to tell a half step.)
BF16_STEP = 0.3


def test_bf16_step_stays_within_bf16_rounding_of_the_float64_step() -> None:
    """The whole step: loss and gradients under autocast against the same network in float64.
    Each of the D weight layers (4 convolutions, 2 linear) adds its rounding, so the bound is
    D times one layer's (16 U16: bf16_error_bound plus the error BatchNorm passes on)."""
    fp64, bf16, x1, x2 = _pair()
    fp64.double()
    before = [p.detach().double().clone() for p in fp64.parameters()]
    depth = sum(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in bf16.modules())
    bound = depth * 16 * U16
    opt16 = build_optimizer(bf16, "lars", 0.3, 1e-6)
    opt64 = build_optimizer(fp64, "lars", 0.3, 1e-6)
    loss64 = nt_xent(*fp64(x1.double(), x2.double()), 0.5)
    loss64.backward()
    bf16.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = bf16(x1, x2)
    loss16 = nt_xent(z1.float(), z2.float(), 0.5)
    loss16.backward()
    assert loss16.dtype == torch.float32  # the loss is computed outside autocast
    assert abs(loss16.item() - loss64.item()) <= bound * loss64.item()
    assert abs(loss16.item() - loss64.item()) > 4 * U32 * loss64.item()  # autocast really ran in bf16
    for p16, p64 in zip(bf16.parameters(), fp64.parameters(), strict=True):
        assert p16.dtype == torch.float32 and p16.grad is not None and p64.grad is not None
        assert (p16.grad.double() - p64.grad).norm() <= bound * p64.grad.norm()
    opt16.step()
    opt64.step()
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights stay float32
    # The LARS step itself: each parameter's change within BF16_STEP of the float64 step's (a LARS
    # step is 0.3 × 0.001 of a weight's norm, so comparing weights could not tell a skipped step).
    for p16, p64, p0 in zip(bf16.parameters(), fp64.parameters(), before, strict=True):
        step64 = p64.detach() - p0
        assert step64.norm() > 0
        assert (p16.detach().double() - p0 - step64).norm() <= BF16_STEP * step64.norm()


def test_bf16_loss_is_nt_xent_of_the_bf16_projections_in_float32() -> None:
    model, _, x1, x2 = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = model(x1, x2)
    assert z1.dtype == torch.bfloat16
    expected = nt_xent(z1.float(), z2.float(), 0.5)
    loss = train_step(model, build_optimizer(model, "sgd", 0.0, 0.0), x1, x2, 0.5, bf16=True)
    torch.testing.assert_close(loss, expected.detach())


def test_compiled_step_equals_eager() -> None:
    """Two steps, compared by each parameter's change (0.3 × 0.001 of a weight's norm a LARS
    step): within 5e-4 of eager's, relative to its norm; 2.3e-5 measured (2026-12-06), 1.0 for
    a step not taken, about 0.5 for one of the two."""
    eager, compiled, x1, x2 = _pair()
    before = [p.detach().clone() for p in eager.parameters()]
    opt_e = build_optimizer(eager, "lars", 0.3, 1e-6)
    opt_c = build_optimizer(compiled, "lars", 0.3, 1e-6)
    net = torch.compile(compiled)
    for _ in range(2):
        loss_e = train_step(eager, opt_e, x1, x2, 0.5)
        loss_c = train_step(net, opt_c, x1, x2, 0.5)  # type: ignore[arg-type]
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for pe, pc, p0 in zip(eager.parameters(), compiled.parameters(), before, strict=True):
        step = (pe.detach() - p0).double()
        assert step.norm() > 0
        assert ((pc.detach() - p0).double() - step).norm() <= 5e-4 * step.norm()


def test_precision_is_validated() -> None:
    with pytest.raises(UserError, match="precision must be one of auto, bf16, fp32, got 'fp16'"):
        load_config(None, ["precision=fp16"])


def test_native_bf16_reads_the_cpu_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)
    for avx512_bf16, amx, expected in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert native_bf16() is expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert native_bf16() is False  # a torch without the probes


def test_the_environment_overrides_the_cpu_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: True, raising=False)
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    assert native_bf16() is False
    assert use_bf16("auto", torch.device("cpu"), on_cpu=True) is False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    assert native_bf16() is True


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_on_cuda_and_for_images_on_cpus_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool,
) -> None:
    monkeypatch.setattr(device_module, "native_bf16", lambda: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_bf16("auto", cpu, get("image").bf16_on_cpu) is native
    for modality in ("series", "text", "video"):  # float32 on the CPU
        assert use_bf16("auto", cpu, get(modality).bf16_on_cpu) is False
        assert use_bf16("auto", cuda, get(modality).bf16_on_cpu) is True
    for device in (cpu, cuda):  # an explicit choice is kept everywhere
        assert use_bf16("bf16", device, on_cpu=False) is True
        assert use_bf16("fp32", device, on_cpu=True) is False
