"""MODEL_CARD.md for a run directory: what the encoder is, what it learned from and how, how
well, on what machine, and how to load it; built from the run's config.yaml and eval.json
(Hugging Face's model cards are the model), rewritten whenever those change."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from simclr.errors import UserError
from simclr.export import INPUTS
from simclr.image import resolved_recipe

CARD = "MODEL_CARD.md"


def hardware(device: torch.device | str) -> str:
    """The device as a user would name it, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu (x86_64, 16 threads)'."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} × {torch.cuda.device_count()}"
    return f"cpu ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    metrics = list(dict.fromkeys(m for row in results.values() for m in row))
    metrics = [m for m in metrics if any(not _missing(row.get(m)) for row in results.values())]
    lines = ["| encoder | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in results.items():
        cells = ["-" if _missing(row.get(m)) else f"{row[m]:.4f}" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_model_card(run_dir: Path, modality: str, input_shape: list[int], device: torch.device | str) -> Path:
    """Write run_dir/MODEL_CARD.md from run_dir/config.yaml and eval.json (when there)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserError(f"{config} is missing: the model card is built from it")
    text = config.read_text()
    schedule = next((line.lstrip("# ") for line in text.splitlines() if line.startswith("# schedule:")), None)
    from simclr import __version__
    from simclr.config import load_config

    cfg = load_config(config)
    evaluation = "No evaluation: the data had no labels (`simclr eval RUN --data labelled/` adds one)."
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        raw = json.loads(eval_path.read_text())
        evaluation = markdown_table({k: v for k, v in raw.items() if isinstance(v, dict)})
    a = resolved_recipe(cfg.augment, input_shape[-1])
    lines = [
        f"# SimCLR encoder: {run_dir.name}",
        "",
        f"An encoder of {modality} data trained with SimCLR (Chen et al. 2020, arXiv:2002.05709) "
        f"by simclr {__version__}.",
        "",
        "## Load it",
        "",
        "```python",
        "from simclr import Run",
        f'run = Run.open("{run_dir}")',
        "h = run.embed(inputs)  # (N, d) features; or run.encoder, an nn.Module",
        "```",
        "",
        "`encoder.safetensors` holds the same weights; its header describes the input (`simclr.inputs`).",
        "",
        "## Input",
        "",
        f"- shape of one input: {input_shape}",
        f"- {INPUTS.get(modality, 'as the modality reads them')}",
        "",
        "## Data and recipe",
        "",
        f"- data: `{cfg.data.source}`" + (f", evaluated on `{cfg.data.eval_source}`" if cfg.data.eval_source else ""),
        f"- pretrained on: {cfg.data.pretrain_on} (labels are never used to pretrain)",
        f"- encoder: {getattr(getattr(cfg, modality, None), 'encoder', None) or cfg.model.encoder}, "
        f"head version {cfg.model.head_version}, projection {cfg.model.proj_dim}",
        f"- temperature {cfg.temperature}, optimizer {cfg.optim.name}, global batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs",
        f"- image augmentation: recipe {a.recipe}, crops ≥ {a.min_scale}, flips {a.flip_prob}, "
        f"colour strength {a.color_jitter_strength}, blur {a.blur_prob}" if modality in ("image", "video") else
        "- augmentation: the modality's, as in config.yaml",
        f"- {schedule}" if schedule else "- schedule: as set in config.yaml",
        "",
        "## Evaluation (held-out split; probes see training labels only)",
        "",
        evaluation,
        "",
        "## Hardware",
        "",
        f"- {hardware(device)}, torch {torch.__version__}, Python {platform.python_version()}",
        "",
        "The full configuration is `config.yaml`; the training curves are in `metrics.jsonl` and `report.html`.",
        "",
    ]
    out = run_dir / CARD
    out.write_text("\n".join(lines))
    return out
