"""The Python entry point: `simclr.training` gives a `Run`, as `simclr train` gives a run directory.

    import simclr
    run = simclr.train(data="photos/", epochs=50)        # any config key as a keyword
    h = run.embed(images)                                 # (N, d) features of uint8 or [0, 1] images
    run.evaluate()["simclr"]["linear"]                    # the held-out evaluation, as `simclr eval`
    run.export("torchvision")                             # a file torchvision's ResNet loads

Data is a path (everything `--data` reads), an array or tensor of images (N, H, W), (N, H, W, C)
or (N, C, H, W), uint8 or float in [0, 1] (time series: (N, C, T) with `modality="series"`), or
a torch `Dataset` of images or (image, label) pairs. In-memory data is written once into the
run directory (`inputs.npz`), so the run can be resumed, evaluated and reported from its
directory alone, as every other run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from simclr.config import Config, load_config
from simclr.errors import UserError

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from simclr.run import Run

Data = str | Path | np.ndarray | torch.Tensor | Any  # Any: a torch Dataset


def train(config: str | Path | Config | None = None, *, data: Data | None = None, labels: Any = None,
          out: str | Path | None = None, **settings: Any) -> Run:
    """Pretrain, evaluate and export as `simclr train` does; returns the opened run.

    `config`: a YAML file, a shipped recipe's name ("cifar10") or a `Config`. `settings`: config
    keys, nested with a dict or a double underscore (`optim={"lr": 0.3}` or `optim__lr=0.3`);
    `modality="series"` is short for `data={"modality": "series"}`. `labels` go with in-memory data.
    """
    from simclr.run import Run
    from simclr.training import train as run_training

    if isinstance(config, Config):
        base, path = config, None
    else:
        base, path = None, config
    if "modality" in settings:
        settings["data__modality"] = settings.pop("modality")
    overrides = as_overrides(settings)
    if out is not None:
        overrides.append(f"out={json.dumps(str(out))}")
    cfg = load_config(path, overrides, base=base)
    if data is not None:
        run_dir = Path(cfg.out) if cfg.out else Path("runs") / f"{name_of(data)}-{datetime.now():%Y%m%d-%H%M%S}"
        cfg.out = str(run_dir)
        cfg.data.source = as_source(data, labels, run_dir)
    elif labels is not None:
        raise UserError("labels go with in-memory data (data=array or tensor)")
    run_dir, _ = run_training(cfg)
    return Run.open(run_dir)


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.3}, "model__encoder": "resnet18"} -> {"optim.lr": 0.3, "model.encoder": ...}."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = prefix + key.replace("__", ".")
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def as_overrides(settings: Mapping[str, Any]) -> list[str]:
    """Keyword settings as `key=value` overrides; JSON values read back as the same YAML."""
    return [f"{key}={json.dumps(value)}" for key, value in flatten(settings).items()]


def name_of(data: Data) -> str:
    return Path(data).stem if isinstance(data, str | Path) else "arrays"


def as_source(data: Data, labels: Any, folder: Path) -> str:
    """A path `data.source` reads: the path itself, or in-memory data written to folder/inputs.npz."""
    if isinstance(data, str | Path):
        if labels is not None:
            raise UserError("labels go with in-memory data; a path brings its own (class folders, a label column)")
        return str(data)
    inputs, found = to_arrays(data)
    labels = found if labels is None else np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels is not None and len(labels) != len(inputs):
        raise UserError(f"{len(labels)} labels for {len(inputs)} inputs")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "inputs.npz"
    arrays = {"x": inputs} if labels is None else {"x": inputs, "y": labels.astype(np.int64)}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def to_arrays(data: np.ndarray | torch.Tensor | Dataset[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """(inputs, labels or None) from an array, a tensor or a Dataset of x or (x, y) items."""
    if isinstance(data, torch.Tensor):
        return data.detach().cpu().numpy(), None
    if isinstance(data, np.ndarray):
        return data, None
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise UserError(f"data must be a path, an array, a tensor or a Dataset, not {type(data).__name__}")
    items = [data[i] for i in range(len(data))]
    if not items:
        raise UserError("the Dataset is empty")
    pairs = isinstance(items[0], tuple | list)
    inputs = np.stack([as_array(item[0] if pairs else item) for item in items])
    labels = np.array([int(item[1]) for item in items]) if pairs else None
    return inputs, labels


def as_array(x: Any) -> np.ndarray:
    """One input as an array: a PIL image (H, W[, C]) or a tensor/array as it is."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
