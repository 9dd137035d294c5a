"""The `series` config section: encoder and augmentation, all per sample."""

from __future__ import annotations

from dataclasses import dataclass

from simclr.config import Config, check, check_choice
from simclr.series.encoders import ENCODERS


@dataclass
class SeriesConfig:
    """Time series (`data.modality=series`): encoder and augmentation, all per sample."""

    encoder: str = "fcn_s4"  # fcn_s4 (the FCN pooled over 4 spans of time), fcn, resnet1d, gru, lstm, transformer
    width: int = 128  # channels of the convolutional encoders; hidden size of the others
    layers: int = 2  # recurrent / Transformer layers
    bidirectional: bool = True  # gru and lstm read the series both ways
    length: int | None = None  # None: the longest series; every series is resampled to it
    label_column: str | None = None  # CSV; None: one of simclr.data.columns.LABEL_COLUMNS
    crop_min: float = 0.5  # window length ~ U(crop_min, 1) × T, resized back to T (linear)
    jitter: float = 0.05  # additive noise std, relative to each series' channel std
    scale: float = 0.1  # per-channel factor ~ N(1, scale)
    magnitude_warp: float = 0.1  # smooth multiplicative curve, std of its 4 knots
    time_warp: float = 0.1  # smooth time distortion, std of the speed at its 4 knots
    mask_fraction: float = 0.1  # one span of this fraction of T set to the channel mean, p=0.5


def validate(cfg: Config) -> None:
    s: SeriesConfig = cfg.series
    check_choice("series.encoder", s.encoder, tuple(ENCODERS))
    check(0 < s.crop_min <= 1, f"series.crop_min must be in (0, 1], got {s.crop_min}")
    check(0 <= s.mask_fraction < 1, f"series.mask_fraction must be in [0, 1), got {s.mask_fraction}")
    for key in ("jitter", "scale", "magnitude_warp", "time_warp"):
        value = getattr(s, key)
        check(value >= 0, f"series.{key} must be >= 0, got {value}")
    for key in ("width", "layers"):
        check(getattr(s, key) >= 1, f"series.{key} must be at least 1, got {getattr(s, key)}")
    check(s.length is None or s.length >= 4, f"series.length must be at least 4, got {s.length}")
