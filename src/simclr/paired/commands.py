"""`simclr eval`, `embed` and `export` for a paired run: both encoders from its checkpoint."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from simclr.checkpoint import atomic_write
from simclr.config import Config
from simclr.errors import UserError
from simclr.evaluate import extract_features
from simclr.paired import build_paired_model, read_settings, run_encoding
from simclr.paired.data import load_pairs
from simclr.paired.model import PairedModel

if TYPE_CHECKING:
    from simclr.run import Run

log = logging.getLogger("simclr")


def load_network(cfg: Config, shape: list[int], run_dir: Path, state: dict[str, Any]) -> PairedModel:
    """Both encoders and heads with the checkpoint's weights; `cfg` takes the run's sides."""
    settings = read_settings(run_dir)
    cfg.paired.modalities = list(settings["modalities"])
    model = build_paired_model(cfg, shape, [int(v) for v in settings["second_shape"]])
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise UserError(f"{run_dir / 'checkpoint.pt'} does not fit a paired model: {str(e).splitlines()[0]}") from None
    return model


def embed_run(run: Run, source: str, out: Path, side: str | None, device: torch.device) -> Path:
    """Write an .npz of every pair of `source`: for each side (named by its modality),
    `<side>_embeddings` (h, the encoder's output) and `<side>_shared` (the normalized projection
    into the shared space, what retrieval compares), with `ids` (first-side files, or rows),
    `labels` (-1 where unknown) and, with a text side, `texts` (the text embedded: for
    class-prompt captions one seeded draw of the templates). With a `side`, `embeddings` holds
    that side's h as for a single-modality run."""
    cfg, model = run.cfg, run.model
    assert isinstance(model, PairedModel)
    sides = [str(m) for m in cfg.paired.modalities]
    if side is not None and side not in sides:
        raise UserError(f"--side {side}: this run pairs {sides[0]} with {sides[1]}")
    data, _ = load_pairs(source, cfg, run_encoding(run.dir, run.input_shape))
    inputs = data.side_inputs(cfg.seed)
    model = model.to(device)
    arrays: dict[str, np.ndarray] = {}
    for k, name in enumerate(sides):
        if side is not None and name != side:
            continue
        h = extract_features(model.side_encoder(k), inputs[k], device=device, progress=f"embedding {name}")
        z = F.normalize(extract_features(model.side_head(k), h, device=device), dim=1)
        arrays[f"{name}_embeddings"], arrays[f"{name}_shared"] = h.numpy(), z.numpy()
        if side:
            arrays["embeddings"] = h.numpy()
    n = len(data)
    arrays["ids"] = np.array(data.ids if data.ids is not None else [str(i) for i in range(n)], dtype=str)
    arrays["labels"] = data.labels.numpy() if data.labels is not None else np.full(n, -1, dtype=np.int64)
    texts = data.side_texts(cfg.seed)
    if texts is not None:
        arrays["texts"] = np.array(texts, dtype=str)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, out)
    return out


def export_paired(run: Run, out: Path | None) -> Path:
    """safetensors: the first side's encoder at `out` (default RUN/encoder.safetensors; the file
    a single-modality run exports), the second side's beside it (`<stem>-<modality>.safetensors`,
    e.g. encoder-text.safetensors) and both heads with the temperature (`<stem>-heads.safetensors`:
    keys <first>.*, <second>.*, temperature.*, e.g. image.*, text.*)."""
    out = out or run.dir / "encoder.safetensors"
    first, second = (str(m) for m in run.cfg.paired.modalities)
    model = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}

    def part(prefix: str, rename: str = "") -> dict[str, torch.Tensor]:
        return {rename + k[len(prefix) :]: v.contiguous() for k, v in model.items() if k.startswith(prefix)}

    files = {
        out: part("encoder."),
        out.with_name(f"{out.stem}-{second}{out.suffix}"): part("second_encoder."),
        out.with_name(f"{out.stem}-heads{out.suffix}"): {
            **part("head.", f"{first}."), **part("second_head.", f"{second}."),
            **part("temperature.", "temperature."),
        },
    }
    for path, tensors in files.items():
        atomic_write(path, lambda p, t=tensors: save_file(t, str(p)))  # type: ignore[misc]
        log.info("wrote %s (%d tensors)", path, len(tensors))
    return out
