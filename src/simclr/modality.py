"""The modality seam: what differs between images, time series and text.

SimCLR itself (Chen et al. 2020, arXiv:2002.05709) is the same for every kind of input: two
random views of each sample, an encoder f, a projection head g and the NT-Xent loss. A modality
contributes only the parts that depend on the input:

    load            --data  -> (pretraining/probe data, official test split or None); a trained
                    run's input shape and directory, or data already loaded (`like`), fix the
                    encoding (image size, series length, tokenizer) a second source must share
    build_augment   one random view t(x) of a batch, per sample, on the device
    build_encoder   f: a batch of inputs -> h (B, d), with an integer `out_dim`
    baseline        the label-using baseline row of the evaluation (raw pixels, 1-NN, TF-IDF)
    gallery         the report's picture of view pairs
    save_artifacts  what the encoder needs beside its weights (the text tokenizer)

Paired data (simclr.paired) is a modality too; it also implements `Trainer`: its own network
(two encoders) and loss (cross-modal), plugged into the same loop.

The training loop, loss, evaluation, checkpoints and CLI are shared. This module is a leaf: the
modalities themselves are imported lazily, so an image run never imports a tokenizer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from simclr.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from simclr.config import Config
    from simclr.model import SimCLR


class Data(Protocol):
    """What every modality's data set offers the shared code. `inputs` is one tensor whose
    first axis is the sample: uint8 images (N, C, H, W), float series (N, C, T) or int64
    token ids (N, L); its dtype tells feature extraction how to feed the encoder."""

    @property
    def inputs(self) -> torch.Tensor: ...
    labels: torch.Tensor | None
    name: str
    skipped: list[tuple[str, str]]
    classes: list[str] | None

    def __len__(self) -> int: ...
    def subset(self, index: np.ndarray | torch.Tensor) -> Any: ...


Augment = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]
# (train, test, labelled subsets by metric name, kNN k, seed) -> (row name, metric -> accuracy)
Baseline = Callable[[Any, Any, dict[str, np.ndarray], int, int], tuple[str, dict[str, float]]]


class Modality(Protocol):
    name: str

    def load(
        self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None, like: Any | None = None
    ) -> tuple[Any, Any | None]: ...
    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment: ...
    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module: ...
    def baseline(self, cfg: Config) -> Baseline: ...
    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure: ...
    def save_artifacts(self, data: Any, out: Path) -> None: ...


# (network, this rank's inputs x, their rows in the training data, augmentation generator) -> loss
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


@runtime_checkable
class Trainer(Protocol):
    """What a modality adds when it trains its own network with its own loss instead of SimCLR's
    two views through one encoder (simclr.paired: the two sides of a pair, an image and its
    caption say, through two encoders, the cross-modal loss). The loop, schedule, checkpoints
    and signals stay shared. The network keeps SimCLR's `encoder` and `head` (for paired data,
    the first side) so the kNN monitor, the report and the exports work on it unchanged."""

    def build_model(self, cfg: Config, input_shape: list[int], data: Any) -> SimCLR: ...
    def objective(self, cfg: Config, model: SimCLR, data: Any, device: torch.device) -> Objective: ...
    def evaluate(
        self, cfg: Config, model: SimCLR, train: Any, test: Any | None, device: torch.device, out: Path
    ) -> dict[str, dict[str, float]] | None: ...


def trainer_of(modality: Modality) -> Trainer | None:
    """The modality's own training, or None for SimCLR's."""
    return modality if isinstance(modality, Trainer) else None


NAMES = ("image", "series", "text", "video", "paired")
_MODULES = {
    "image": "simclr.image", "series": "simclr.series", "text": "simclr.text", "video": "simclr.video",
    "paired": "simclr.paired",
}

SERIES_SUFFIXES = (".ts",)
TEXT_SUFFIXES = (".txt", ".jsonl", ".tsv")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


def video_folder(folder: Path, sample: int = 32) -> bool:
    """Whether most of the first `sample` files of a folder (or of its class subfolders) are
    videos. Stops early, so an image folder of a million files costs a few directory reads."""
    found: list[str] = []
    try:
        for entry in folder.iterdir():  # unsorted: no full listing of a huge folder
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                found += [p.suffix.lower() for _, p in zip(range(4), entry.iterdir(), strict=False)
                          if p.is_file() and not p.name.startswith(".")]
            elif entry.is_file():
                found.append(entry.suffix.lower())
            if len(found) >= sample:
                break
    except OSError:
        return False
    return sum(s in VIDEO_SUFFIXES for s in found) > len(found) / 2


def numeric_field(field: str) -> bool:
    """A CSV field a series may hold: a number, or empty / `?` / NaN for a missing value."""
    try:
        float(field)
    except ValueError:
        return field.strip() in ("", "?", "nan", "NaN")
    return True


def detect(source: str) -> str:
    """The modality of a `--data` value from its extension, or for CSV from its content:
    `.ts` (or a folder of them) is a time series; `.txt`, `.tsv`, `.jsonl` are text; a CSV
    whose data fields are numbers (apart from an `id`/`label` column) is a series, else text;
    a video file (.mp4, .mkv, ...) or a folder (with or without class subfolders) whose files are
    mostly videos is video; everything else (built-in names, image folders and archives,
    arrays) is an image source.
    An `.npz` of series needs `data.modality=series` (its shape alone is ambiguous)."""
    path = Path(source.split(":")[0]) if ":" in source and not Path(source).exists() else Path(source)
    suffix = path.suffix.lower()
    if suffix in SERIES_SUFFIXES or (path.is_dir() and any(path.glob("*.ts"))):
        return "series"
    if suffix in (".csv", ".jsonl") and path.is_file() and is_pair_manifest(path):
        return "paired"
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in VIDEO_SUFFIXES or (path.is_dir() and video_folder(path)):
        return "video"
    if suffix == ".csv" and path.is_file():
        import csv

        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = [row for _, row in zip(range(6), csv.reader(f), strict=False)]
        body = rows[1:] if len(rows) > 1 else rows
        fields = [v for row in body for v in row[1:-1]] or [v for row in body for v in row]
        return "series" if fields and all(numeric_field(v) for v in fields) else "text"
    return "image"


# A manifest of (image, caption) pairs names both columns; a text file never has an image column.
PAIR_IMAGE_COLUMNS = ("image", "image_path", "file", "filename", "path")
PAIR_TEXT_COLUMNS = ("text", "caption", "sentence", "description", "prompt")


def header_names(path: Path) -> list[str]:
    """The column names of a CSV header, or the keys of a JSONL file's first object."""
    import csv
    import json

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if path.suffix.lower() == ".jsonl":
        try:
            return list(json.loads(first)) if first.strip().startswith("{") else []
        except json.JSONDecodeError:
            return []
    return next(csv.reader([first]), [])


def is_pair_manifest(path: Path) -> bool:
    """A CSV header (or the first JSONL object) with both an image column and a caption column."""
    lower = {n.strip().lower() for n in header_names(path)}
    return bool(lower & set(PAIR_IMAGE_COLUMNS)) and bool(lower & set(PAIR_TEXT_COLUMNS))


def resolve(cfg: Config, source: str | None = None) -> str:
    """`data.modality`, or the one detected from the source when it is `auto`."""
    name = cfg.data.modality
    return detect(source or cfg.data.source) if name == "auto" else name


def get(name: str) -> Modality:
    if name not in _MODULES:
        raise UserError(f"unknown modality {name!r} (choose from {', '.join(NAMES)})")
    module = importlib.import_module(_MODULES[name])
    modality: Modality = module.MODALITY
    return modality
