"""The modality seam: what differs between images, time series, text, video and paired data.

SimCLR itself (Chen et al. 2020, arXiv:2002.05709) is the same for every kind of input: two
random views of each sample, an encoder f, a projection head g and the NT-Xent loss. A modality
contributes only the parts that depend on the input, and the shared code never names one:

    config, validate  its own config section (a dataclass, `<name>.key=value`) and its checks
    claims            whether a `--data` source is of this kind (detection)
    load              --data -> (pretraining/probe data, official test split or None); a trained
                      run's input shape and directory, or data already loaded (`like`), fix the
                      encoding (image size, series length, tokenizer) a second source must share
    build_augment     one random view t(x) of a batch, per sample, on the device
    build_encoder     f: a batch of inputs -> h (B, d), with an integer `out_dim`
    baseline          the label-using baseline row of the evaluation (raw pixels, 1-NN, TF-IDF)
    gallery           the report's picture of view pairs
    save_artifacts    what the encoder needs beside its weights (the text tokenizer)
    load_network      a trained run's network from its checkpoint
    evaluate, embed, export   what `simclr eval`, `embed` and `export` do with a trained run

Most modalities inherit the last four from `simclr.experiment.SingleEncoder`. Paired data
(simclr.paired) also implements `Trainer`: its own network (two encoders) and loss.

Adding a modality is a folder (or module) with a `MODALITY` object and one line in `MODALITIES`;
`register` adds one at run time (a plugin, a test). This module is a leaf: the modalities are
imported lazily, so an image run never imports a tokenizer.
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
    from simclr.run import Run


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
Results = dict[str, dict[str, float]]


class Modality(Protocol):
    name: str
    config: type | None  # the dataclass of its config section `<name>`, or None
    bf16_on_cpu: bool  # whether precision=auto autocasts it on CPUs with native bf16
    evaluates_unlabelled: bool  # whether held-out data without labels is still evaluated
    distills: bool  # whether `simclr distill` applies
    # What `data.pretrain_on=auto` chooses (simclr.schedule.pretrain_on): "all" pretrains on the
    # held-out inputs too, without their labels (its literature's protocol: UCR/UEA series,
    # sentence embeddings); "small" does so for small sets only; "train" never.
    pretrain_default: str
    optimizer: str  # what `optim.name=auto` picks: lars, or adamw (Transformers from scratch)
    min_schedule: tuple[int, int]  # a default run's least (epochs, optimizer steps): simclr.schedule
    loads_together: bool  # whether torchrun's ranks share the first decode (experiment.load_datasets)

    def validate(self, cfg: Config) -> None: ...
    def claims(self, path: Path) -> bool: ...
    def load(
        self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None, like: Any | None = None
    ) -> tuple[Any, Any | None]: ...
    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment: ...
    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module: ...
    def baseline(self, cfg: Config) -> Baseline: ...
    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure: ...
    def save_artifacts(self, data: Any, out: Path) -> None: ...
    def load_network(self, cfg: Config, input_shape: list[int], run_dir: Path, state: dict[str, Any]) -> SimCLR: ...
    def evaluate(self, run: Run, cfg: Config, train: Any, test: Any | None, device: torch.device) -> Results: ...
    def embed(self, run: Run, source: str, out: Path, side: str | None, device: torch.device) -> str: ...
    def export(self, run: Run, fmt: str, out: Path | None) -> Path: ...


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
    def evaluate_trained(
        self, cfg: Config, model: SimCLR, train: Any, test: Any | None, device: torch.device, out: Path
    ) -> Results | None: ...


def trainer_of(modality: Modality) -> Trainer | None:
    """The modality's own training, or None for SimCLR's."""
    return modality if isinstance(modality, Trainer) else None


# The registry: a modality's name and the module whose `MODALITY` implements it. Detection asks
# them in this order; DEFAULT (images: built-in names, folders, archives, arrays) takes the rest.
MODALITIES: dict[str, str] = {
    "paired": "simclr.paired",
    "series": "simclr.series",
    "text": "simclr.text",
    "video": "simclr.video",
    "image": "simclr.image",
}
DEFAULT = "image"
_loaded: dict[str, Modality] = {}


def register(name: str, modality: Modality | str) -> None:
    """Add a modality (an object, or the module that holds its `MODALITY`) under `name`."""
    MODALITIES[name] = modality if isinstance(modality, str) else f"<registered {name}>"
    _loaded.pop(name, None)
    if not isinstance(modality, str):
        _loaded[name] = modality


def names() -> tuple[str, ...]:
    return tuple(MODALITIES)


def get(name: str) -> Modality:
    if name not in MODALITIES:
        raise UserError(f"unknown modality {name!r} (choose from {', '.join(MODALITIES)})")
    if name not in _loaded:
        _loaded[name] = importlib.import_module(MODALITIES[name]).MODALITY
    return _loaded[name]


def source_path(source: str) -> Path:
    """The file or folder of a `--data` value; `mnist:test` names a split of a built-in set."""
    return Path(source.split(":")[0]) if ":" in source and not Path(source).exists() else Path(source)


def detect(source: str) -> str:
    """The modality of a `--data` value: the first in `MODALITIES` that claims its path, else
    DEFAULT. An `.npz` of series needs `data.modality=series` (its shape alone is ambiguous)."""
    path = source_path(source)
    for name in MODALITIES:
        if name != DEFAULT and get(name).claims(path):
            return name
    return DEFAULT


def resolve(cfg: Config, source: str | None = None) -> Modality:
    """The run's modality: `data.modality`, or the one detected from the source when `auto`.
    Resolve it once per command and pass it on: detection reads the file system."""
    name = cfg.data.modality
    return get(detect(source or cfg.data.source) if name == "auto" else name)

