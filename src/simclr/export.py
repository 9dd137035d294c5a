"""The trained encoder f for use elsewhere: torchvision state dict, safetensors, or ONNX."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from simclr.checkpoint import atomic_write, load_checkpoint
from simclr.config import from_dict
from simclr.errors import UserError
from simclr.model import build_encoder

FORMATS = ("torchvision", "safetensors", "onnx")


def encoder_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """The encoder's weights from a run's last checkpoint, and the checkpoint itself."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    prefix = "encoder."
    weights = {k[len(prefix) :]: v.contiguous() for k, v in state["model"].items() if k.startswith(prefix)}
    return weights, state


def export_encoder(run_dir: Path, fmt: str, out: Path | None = None) -> Path:
    """Write the encoder as `torchvision` (a .pt state dict that `torch.load(weights_only=True)`
    reads and a torchvision ResNet with `fc = nn.Identity()` loads with strict=True),
    `safetensors`, or `onnx` (input `x` (B, C, H, W) floats in [0, 1], output `h`, dynamic batch;
    needs the `onnx` extra)."""
    weights, state = encoder_state(run_dir)
    modality = str(state.get("modality", "image"))
    if modality == "paired":
        if fmt == "safetensors":  # both encoders and heads
            from simclr.paired.commands import export_paired

            return export_paired(run_dir, state, out)
        config = state.get("config", {})
        assert isinstance(config, dict)
        modality = str(config.get("paired", {}).get("modalities", ["image"])[0])  # other formats: the first side
    if modality != "image" and fmt != "safetensors":
        raise UserError(
            f"--format {fmt} is for image encoders; a {modality} encoder exports as --format safetensors "
            "(rebuild it with simclr.experiment.load_trained_encoder)"
        )
    if fmt == "torchvision":
        out = out or run_dir / "encoder.pt"
        atomic_write(out, lambda p: torch.save(weights, p))
    elif fmt == "safetensors":
        out = out or run_dir / "encoder.safetensors"
        atomic_write(out, lambda p: save_file(weights, str(p)))
    elif fmt == "onnx":
        out = out or run_dir / "encoder.onnx"
        export_onnx(weights, state, out)
    else:
        raise UserError(f"unknown export format {fmt!r} (choose {', '.join(FORMATS)})")
    return out


def export_onnx(weights: dict[str, torch.Tensor], state: dict[str, object], out: Path) -> None:
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError:
        raise UserError("ONNX export needs the onnx extra: pip install 'simclr[onnx]'") from None
    if "input_shape" not in state or "config" not in state:
        raise UserError("this checkpoint does not record its input shape; re-train with this version to export ONNX")
    cfg = from_dict(state["config"])  # type: ignore[arg-type]
    shape = state["input_shape"]
    assert isinstance(shape, list | tuple)
    c, h, w = (int(v) for v in shape)
    encoder = build_encoder(cfg.model.encoder, c, h, cfg.model.cifar_stem)
    encoder.load_state_dict(weights, strict=True)
    encoder.eval()
    example = torch.rand(2, c, h, w)
    with warnings.catch_warnings():
        # The TorchScript exporter needs nothing beyond `onnx`; the newer one also needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        atomic_write(out, lambda p: torch.onnx.export(
            encoder, (example,), str(p), input_names=["x"], output_names=["h"],
            dynamic_axes={"x": {0: "batch"}, "h": {0: "batch"}}, dynamo=False,
        ))
