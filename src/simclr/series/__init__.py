"""The time-series modality: UCR/UEA `.ts`, `.npz` and CSV sources, per-sample series
augmentations, FCN / ResNet-1D / GRU / LSTM / Transformer encoders, and the 1-nearest-neighbour
Euclidean baseline of the time-series classification literature (Dau et al. 2019)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from simclr.data.columns import numeric_field
from simclr.errors import UserError
from simclr.evaluate import feature_metrics
from simclr.experiment import SingleEncoder
from simclr.modality import Augment, Baseline
from simclr.series.augment import SeriesAugment
from simclr.series.config import SeriesConfig, validate
from simclr.series.data import SeriesData, load_series
from simclr.series.encoders import build_series_encoder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from simclr.config import Config


def nearest_neighbour_accuracy(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor) -> float:
    """1-NN with Euclidean distance on flattened series, the archive's reference classifier."""
    xtr, xte = xtr.flatten(1).double(), xte.flatten(1).double()
    correct = 0
    for start in range(0, len(xte), 512):
        d = torch.cdist(xte[start : start + 512], xtr)  # (b, n_train)
        correct += int((ytr[d.argmin(1)] == yte[start : start + 512]).sum())
    return correct / len(xte)


def raw_series_baseline(
    train: SeriesData, test: SeriesData, subsets: dict[str, np.ndarray], k: int, seed: int
) -> tuple[str, dict[str, float]]:
    """The frozen-feature metrics on the raw (flattened) series, plus `nn1_euclidean`."""
    assert train.labels is not None and test.labels is not None
    ytr, yte = train.labels.long(), test.labels.long()
    xtr, xte = train.inputs.flatten(1), test.inputs.flatten(1)
    row = feature_metrics(xtr, ytr, xte, yte, subsets, k, seed)
    row["nn1_euclidean"] = nearest_neighbour_accuracy(xtr, ytr, xte, yte)
    return "raw_series", row


class SeriesModality(SingleEncoder):
    name = "series"
    config = SeriesConfig
    pretrain_default = "all"  # the UCR/UEA protocol: pretrain on TRAIN+TEST inputs, probe with TRAIN labels

    def validate(self, cfg: Config) -> None:
        validate(cfg)

    def claims(self, path: Path) -> bool:
        """`.ts` (or a folder of them), or a CSV whose data fields are numbers (apart from an
        `id`/`label` column)."""
        if path.suffix.lower() == ".ts" or (path.is_dir() and any(path.glob("*.ts"))):
            return True
        if path.suffix.lower() != ".csv" or not path.is_file():
            return False
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = [row for _, row in zip(range(6), csv.reader(f), strict=False)]
        body = rows[1:] if len(rows) > 1 else rows
        fields = [v for row in body for v in row[1:-1]] or [v for row in body for v in row]
        return bool(fields) and all(numeric_field(v) for v in fields)

    def load(
        self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None, like: Any | None = None
    ) -> tuple[SeriesData, SeriesData | None]:
        length = input_shape[1] if input_shape else cfg.series.length  # a trained encoder's length
        data, test = load_series(source, length, cfg.series.label_column, like)
        if input_shape is not None and data.channels != input_shape[0]:
            raise UserError(f"{source}: {data.channels} channels, but the encoder takes {input_shape[0]}")
        return data, test

    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment:
        s = cfg.series
        return SeriesAugment(s.crop_min, s.jitter, s.scale, s.magnitude_warp, s.time_warp, s.mask_fraction)

    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module:
        s = cfg.series
        inputs = data.inputs if data is not None else None
        return build_series_encoder(s.encoder, input_shape[0], input_shape[1], s.width, s.layers, s.bidirectional,
                                    inputs)

    def baseline(self, cfg: Config) -> Baseline:
        return raw_series_baseline

    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure:
        return gallery_figure(data.inputs, augment, seed)


def gallery_figure(x: torch.Tensor, augment: Augment, seed: int) -> Figure:
    """Each column: a series x above its two views t(x) and t'(x), every channel a line."""
    from matplotlib.figure import Figure

    gen = torch.Generator().manual_seed(seed)
    x = x.float()
    x1, x2 = augment(x, gen), augment(x, gen)  # (n, c, t) each
    n = len(x)
    fig = Figure(figsize=(1.9 * n, 4.2), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False, sharex=True)
    for row, (title, batch) in enumerate((("input x", x), ("view t(x)", x1), ("view t'(x)", x2))):
        for i in range(n):
            ax = axes[row][i]
            for channel in batch[i, :6]:  # up to six channels stay readable
                ax.plot(channel.numpy(), linewidth=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(title, fontsize=9)
    return fig


MODALITY = SeriesModality()

__all__ = ["MODALITY", "SeriesAugment", "SeriesData", "build_series_encoder", "load_series",
           "nearest_neighbour_accuracy"]
