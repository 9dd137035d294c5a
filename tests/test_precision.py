"""bf16 autocast and torch.compile in the training step: the same SimCLR update, within rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from simclr import train
from simclr.config import load_config
from simclr.errors import UserError
from simclr.loss import nt_xent
from simclr.model import build_model
from simclr.optim import build_optimizer
from simclr.train import native_bf16, train_step, use_bf16


def _pair() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 8)
    x1, x2 = torch.rand(2, 32, 1, 8, 8)
    return model, copy.deepcopy(model), x1, x2


def test_bf16_step_matches_float32_within_bf16_rounding() -> None:
    fp32, bf16, x1, x2 = _pair()
    opt32 = build_optimizer(fp32, "lars", 0.3, 1e-6)
    opt16 = build_optimizer(bf16, "lars", 0.3, 1e-6)
    loss32 = train_step(fp32, opt32, x1, x2, 0.5, bf16=False)
    loss16 = train_step(bf16, opt16, x1, x2, 0.5, bf16=True)
    assert loss16.dtype == torch.float32  # the loss is computed outside autocast
    assert abs(loss16.item() - loss32.item()) / loss32.item() < 1e-2
    assert loss16.item() != loss32.item()  # autocast really ran in bf16
    for p32, p16 in zip(fp32.parameters(), bf16.parameters(), strict=True):
        assert p16.dtype == torch.float32  # master weights stay float32
        torch.testing.assert_close(p16, p32, rtol=0, atol=5e-3)


def test_bf16_loss_is_nt_xent_of_the_bf16_projections_in_float32() -> None:
    model, _, x1, x2 = _pair()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = model(x1, x2)
    assert z1.dtype == torch.bfloat16
    expected = nt_xent(z1.float(), z2.float(), 0.5)
    loss = train_step(model, build_optimizer(model, "sgd", 0.0, 0.0), x1, x2, 0.5, bf16=True)
    torch.testing.assert_close(loss, expected.detach())


def test_compiled_step_equals_eager() -> None:
    eager, compiled, x1, x2 = _pair()
    opt_e = build_optimizer(eager, "lars", 0.3, 1e-6)
    opt_c = build_optimizer(compiled, "lars", 0.3, 1e-6)
    net = torch.compile(compiled)
    for _ in range(2):
        loss_e = train_step(eager, opt_e, x1, x2, 0.5)
        loss_c = train_step(net, opt_c, x1, x2, 0.5)  # type: ignore[arg-type]
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for pe, pc in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(pc, pe, rtol=1e-4, atol=1e-6)


def test_precision_is_validated() -> None:
    with pytest.raises(UserError, match="precision must be one of auto, bf16, fp32, got 'fp16'"):
        load_config(None, ["precision=fp16"])


def test_native_bf16_reads_the_cpu_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    for avx512_bf16, amx, expected in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert native_bf16() is expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert native_bf16() is False  # a torch without the probes


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_on_cuda_and_for_images_on_cpus_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool,
) -> None:
    monkeypatch.setattr(train, "native_bf16", lambda: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_bf16("auto", cpu, "image") is native
    for modality in ("series", "text", "video"):  # not measured: float32
        assert use_bf16("auto", cpu, modality) is False
        assert use_bf16("auto", cuda, modality) is True
    for device in (cpu, cuda):  # an explicit choice is kept everywhere
        assert use_bf16("bf16", device, "series") is True
        assert use_bf16("fp32", device, "image") is False
