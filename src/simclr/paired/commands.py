"""`simclr eval`, `embed` and `export` for a paired run: both encoders from its checkpoint."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from simclr.checkpoint import atomic_write, load_checkpoint
from simclr.config import Config, from_dict
from simclr.errors import UserError
from simclr.evaluate import extract_features
from simclr.paired import MODALITY, build_paired_model, read_settings
from simclr.paired.data import load_pairs
from simclr.paired.model import PairedModel
from simclr.text.data import TOKENIZER_FILE, load_tokenizer

log = logging.getLogger("simclr")

SIDES = ("image", "text")


def load_paired_model(run_dir: Path) -> tuple[Config, PairedModel, list[int]]:
    """(config, both encoders and heads with the last checkpoint's weights, image shape)."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    cfg = from_dict(state["config"])
    cfg.data.modality = "paired"
    shape = [int(v) for v in state["input_shape"]]
    model = build_paired_model(cfg, shape, int(read_settings(run_dir)["text_length"]))
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise UserError(f"{run_dir / 'checkpoint.pt'} does not fit a paired model: {str(e).splitlines()[0]}") from None
    return cfg, model, shape


def evaluate_run(
    run_dir: Path, cfg: Config, train: Any, test: Any | None, device: torch.device
) -> dict[str, dict[str, float]]:
    """`simclr eval` of a paired run (with `cfg`'s evaluation settings); writes eval.json."""
    if test is None:
        raise UserError("paired evaluation needs held-out pairs")
    _, model, _ = load_paired_model(run_dir)
    results = MODALITY.evaluate(cfg, model.to(device), train, test, device, run_dir)
    assert results is not None
    return results


def embed_run(run_dir: Path, source: str, out: Path, side: str | None, device: torch.device) -> Path:
    """Write an .npz of every pair of `source`: for each side, `<side>_embeddings` (h, the
    encoder's output) and `<side>_shared` (the normalized projection into the shared space,
    what retrieval compares), with `ids` (image paths), `labels` (-1 where unknown) and
    `texts` (the caption embedded: one seeded draw of the prompt templates). With a `side`,
    `embeddings` holds that side's h as for a single-modality run."""
    cfg, model, shape = load_paired_model(run_dir)
    settings = read_settings(run_dir)
    data = load_pairs(source, cfg, shape, load_tokenizer(run_dir / TOKENIZER_FILE), int(settings["text_length"]),
                      settings.get("classes"))
    ids, texts = data.fixed_captions(cfg.seed)
    model = model.to(device)
    arrays: dict[str, np.ndarray] = {}
    towers = {"image": (model.encoder, model.head, data.images), "text": (model.text_encoder, model.text_head, ids)}
    for name in [side] if side else SIDES:
        encoder, head, inputs = towers[name]
        h = extract_features(encoder, inputs, device=device, progress=f"embedding {name}s")
        z = F.normalize(extract_features(head, h, device=device), dim=1)
        arrays[f"{name}_embeddings"], arrays[f"{name}_shared"] = h.numpy(), z.numpy()
        if side:
            arrays["embeddings"] = h.numpy()
    n = len(data)
    arrays["ids"] = np.array(data.ids if data.ids is not None else [str(i) for i in range(n)], dtype=str)
    arrays["labels"] = data.labels.numpy() if data.labels is not None else np.full(n, -1, dtype=np.int64)
    arrays["texts"] = np.array(texts, dtype=str)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, out)
    return out


def export_paired(run_dir: Path, state: dict[str, Any], out: Path | None) -> Path:
    """safetensors: the image encoder at `out` (default RUN/encoder.safetensors; the same file an
    image run exports), the text encoder beside it (`<stem>-text.safetensors`) and both heads
    with the temperature (`<stem>-heads.safetensors`: keys image.*, text.*, temperature.*)."""
    out = out or run_dir / "encoder.safetensors"
    model = state["model"]

    def part(prefix: str, rename: str = "") -> dict[str, torch.Tensor]:
        return {rename + k[len(prefix) :]: v.contiguous() for k, v in model.items() if k.startswith(prefix)}

    files = {
        out: part("encoder."),
        out.with_name(f"{out.stem}-text{out.suffix}"): part("text_encoder."),
        out.with_name(f"{out.stem}-heads{out.suffix}"): {
            **part("head.", "image."), **part("text_head.", "text."), **part("temperature.", "temperature."),
        },
    }
    for path, tensors in files.items():
        atomic_write(path, lambda p, t=tensors: save_file(t, str(p)))  # type: ignore[misc]
        log.info("wrote %s (%d tensors)", path, len(tensors))
    return out
