"""The trained encoder f for use elsewhere: torchvision state dict, safetensors, or ONNX."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from simclr.checkpoint import WRITE_ERRORS, atomic_write, write_failure
from simclr.errors import UserError


def export_encoder(encoder: nn.Module, input_shape: list[int], fmt: str, out: Path) -> Path:
    """Write `encoder` as `torchvision` (a .pt state dict that `torch.load(weights_only=True)`
    reads and a torchvision ResNet with `fc = nn.Identity()` loads with strict=True),
    `safetensors`, or `onnx` (input `x` (B, *input_shape), for images floats in [0, 1], output
    `h`, dynamic batch; needs the `onnx` extra)."""
    if fmt == "onnx":
        export_onnx(encoder, input_shape, out)
        return out
    if fmt not in ("torchvision", "safetensors"):
        raise UserError(f"unknown export format {fmt!r} (choose torchvision, safetensors or onnx)")
    weights = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    try:
        if fmt == "torchvision":
            atomic_write(out, lambda p: torch.save(weights, p))
        else:
            atomic_write(out, lambda p: save_file(weights, str(p)))
    except WRITE_ERRORS as e:  # a full disk, a read-only folder
        raise UserError(f"cannot write {out}: {write_failure(e)}") from None
    return out


def export_onnx(encoder: nn.Module, input_shape: list[int], out: Path) -> None:
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError:
        raise UserError("ONNX export needs the onnx extra: pip install 'simclr[onnx]'") from None
    encoder = encoder.cpu().eval()
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        # The TorchScript exporter needs nothing beyond `onnx`; the newer one also needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        atomic_write(out, lambda p: torch.onnx.export(
            encoder, (example,), str(p), input_names=["x"], output_names=["h"],
            dynamic_axes={"x": {0: "batch"}, "h": {0: "batch"}}, dynamo=False,
        ))
