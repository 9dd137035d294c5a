"""Where a run computes, and in what precision."""

from __future__ import annotations

import torch

from simclr import dist
from simclr.env import env_flag
from simclr.errors import UserError

# Set to 0 (or 1) to make `native_bf16` report this CPU as lacking (or having) native bf16:
# how the tests run both branches of `precision=auto` on any machine.
NATIVE_BF16_ENV = "SIMCLR_NATIVE_BF16"


def resolve_device(name: str) -> torch.device:
    """`device` of the config as a torch device; under torchrun, this rank's own."""
    if dist.is_distributed():
        return dist.local_device()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Elsewhere bf16 is
    emulated through float32 and is slower than float32 itself, so `precision=auto` avoids it."""
    forced = env_flag(NATIVE_BF16_ENV)
    if forced is not None:
        return forced
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


def use_bf16(precision: str, device: torch.device, on_cpu: bool) -> bool:
    """Whether the forward passes run under bf16 autocast. `auto`: on CUDA, and on a CPU with
    native bf16 where the modality asks for it (`on_cpu`: images, whose convolutions are where
    bf16 pays off and whose quality tables were checked in both precisions)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and on_cpu and native_bf16())
