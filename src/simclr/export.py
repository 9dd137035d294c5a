"""The trained encoder f for use elsewhere: torchvision state dict, safetensors, or ONNX.

The safetensors file describes itself in its header (`encoder_metadata`): what the encoder
is, the input it expects (shape, channels, value range: a mismatched normalisation gives
features "only slightly better than random"), and the data and recipe it learned from, so
loading code can check what it is given:

    from safetensors import safe_open
    with safe_open("encoder.safetensors", "pt") as f:
        meta = f.metadata()   # {"simclr.input_shape": "[3, 32, 32]", "simclr.inputs": "...", ...}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from simclr.checkpoint import WRITE_ERRORS, atomic_write, write_failure
from simclr.errors import UserError
from simclr.extras import require

# What each modality's encoder takes: the one thing loading code gets silently wrong.
INPUTS = {
    "image": "float (B, C, H, W) in [0, 1]: uint8 pixels / 255, no mean/std normalisation",
    "video": "float (B, F, C, H, W) in [0, 1]: uint8 pixels / 255, no mean/std normalisation",
    "series": "float (B, C, T) as read; the encoder standardises them itself (its `norm` layer)",
    "text": "int64 token ids (B, L) from the run's tokenizer.json, right-padded with 0 ([PAD])",
    "paired": "the first side's inputs, as its modality's",
}


def encoder_metadata(cfg: Any, modality: str, input_shape: list[int]) -> dict[str, str]:
    """The safetensors header of an exported encoder: strings only (the format's rule)."""
    from simclr import __version__
    from simclr.image import resolved_recipe
    from simclr.model import resolve_encoder

    augment = resolved_recipe(cfg.augment, input_shape[-1]) if modality in ("image", "video") else cfg.augment
    section = getattr(cfg, modality, None)
    encoder = getattr(section, "encoder", None) or resolve_encoder(cfg.model.encoder, input_shape[-1])
    return {
        "format": "pt",
        "simclr.version": __version__,
        "simclr.modality": modality,
        "simclr.encoder": str(encoder),
        "simclr.input_shape": json.dumps(input_shape),
        "simclr.inputs": INPUTS.get(modality, "as the run's modality reads them"),
        "simclr.data": str(cfg.data.source),
        "simclr.recipe": json.dumps({"augment": vars(augment),
                                     "temperature": cfg.temperature, "epochs": cfg.epochs,
                                     "batch_size": cfg.batch_size}, default=str),
    }


def export_encoder(encoder: nn.Module, input_shape: list[int], fmt: str, out: Path,
                   metadata: dict[str, str] | None = None) -> Path:
    """Write `encoder` as `torchvision` (a .pt state dict that `torch.load(weights_only=True)`
    reads and a torchvision ResNet with `fc = nn.Identity()` loads with strict=True),
    `safetensors`, or `onnx` (input `x` (B, *input_shape), for images floats in [0, 1], output
    `h`, dynamic batch; needs the `onnx` extra). `metadata` goes into the safetensors header."""
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
            atomic_write(out, lambda p: save_file(weights, str(p), metadata=metadata))
    except WRITE_ERRORS as e:  # a full disk, a read-only folder
        raise UserError(f"cannot write {out}: {write_failure(e)}") from None
    return out


def export_onnx(encoder: nn.Module, input_shape: list[int], out: Path) -> None:
    """torch.onnx's current (dynamo) exporter; it needs onnx and onnxscript (the [onnx] extra)."""
    require("onnx", "onnx")
    require("onnx", "onnxscript")
    encoder = encoder.cpu().eval()
    example = torch.rand(2, *input_shape)
    batch = torch.export.Dim("batch", min=1)

    def write(path: Path) -> None:
        program = torch.onnx.export(encoder, (example,), input_names=["x"], output_names=["h"],
                                    dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
        assert program is not None
        program.save(str(path))

    try:
        atomic_write(out, write)
    except WRITE_ERRORS as e:
        raise UserError(f"cannot write {out}: {write_failure(e)}") from None
