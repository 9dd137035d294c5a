"""A trained run, opened once: its config, modality, input shape and network.

    run = Run.open("runs/mine")
    h = run.encoder(x)                       # f, the representation SimCLR keeps
    train, test = run.datasets()             # the run's own data, encoded as it was trained

`simclr eval`, `embed`, `report`, `distill` and `export` all start here.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simclr.checkpoint import load_checkpoint
from simclr.config import Config, changed_keys, from_dict, load_config
from simclr.errors import UserError
from simclr.modality import DEFAULT, Modality, get
from simclr.model import ProjectionHead, SimCLR

CHECKPOINT = "checkpoint.pt"


@dataclass
class Run:
    dir: Path
    cfg: Config  # as trained; `data.modality` is the modality it was trained on
    modality: Modality
    input_shape: list[int]  # one sample's: images (C, H, W), series (C, T), text (L,), ...
    model: SimCLR  # the last checkpoint's network: encoder f and projection head g

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def head(self) -> ProjectionHead:
        return self.model.head

    @classmethod
    def open(cls, run_dir: str | Path) -> Run:
        """Read `run_dir/checkpoint.pt` once: config, modality (as recorded, never re-detected),
        input shape and weights. The run's own cache folder and download setting are not kept
        (see `_local`)."""
        run_dir = Path(run_dir)
        state = load_checkpoint(run_dir / CHECKPOINT)
        if "config" not in state or "input_shape" not in state:
            raise UserError(f"{run_dir / CHECKPOINT} does not record its config and input shape")
        cfg = _local(from_dict(state["config"]))
        cfg.data.modality = str(state.get("modality", DEFAULT))  # checkpoints before modalities: images
        modality = get(cfg.data.modality)
        shape = [int(v) for v in state["input_shape"]]
        model = modality.load_network(cfg, shape, run_dir, state)
        return cls(run_dir, cfg, modality, shape, model.eval())

    def config(self, overrides: list[str] | None = None) -> Config:
        """The run's config with evaluation settings changed; what it trained cannot change."""
        cfg = load_config(None, overrides or [], base=self.cfg)
        changed = changed_keys(self.cfg, cfg, ("model",))
        if changed:
            raise UserError(f"{self.dir} was trained with its own {', '.join(changed)}; it cannot change now")
        return cfg

    def load(self, source: str, cfg: Config | None = None) -> Any:
        """One data source, encoded as this run's encoder takes it (size, length, tokenizer)."""
        data, _ = self.modality.load(cfg or self.cfg, source, self.input_shape, self.dir)
        return data

    def datasets(
        self, cfg: Config | None = None, source: str | None = None, eval_source: str | None = None
    ) -> tuple[Any, Any | None]:
        """(training data, labelled held-out data or None), as `simclr.experiment.load_datasets`
        splits them; by default the run's own sources."""
        from simclr.experiment import load_datasets

        return load_datasets(cfg or self.cfg, self.modality, source, eval_source, self.input_shape, self.dir)


    def embed(self, data: Any, batch_size: int = 256, device: str | None = None) -> torch.Tensor:
        """h = f(x), (N, d) float32 on the CPU, for a path (read as `simclr embed` reads it) or
        in-memory inputs (an array, tensor or Dataset: see `simclr.api`), prepared as in training."""
        from simclr.api import as_source
        from simclr.device import resolve_device
        from simclr.evaluate import extract_features

        with tempfile.TemporaryDirectory() as folder:
            inputs = self.load(as_source(data, None, Path(folder))).inputs
        target = resolve_device(device or self.cfg.device)
        return extract_features(self.encoder.to(target), inputs, batch_size, target)

    def evaluate(self, data: str | None = None, eval_data: str | None = None, **settings: Any
                 ) -> dict[str, dict[str, float]]:
        """`simclr eval`: the evaluation suite on the run's own data (or `data`, `eval_data`);
        writes eval.json and returns results[encoder][metric]. `settings`: evaluation keys,
        e.g. eval_finetune=False."""
        from simclr.api import as_overrides
        from simclr.device import resolve_device

        cfg = self.config(as_overrides(settings))
        train_data, test_data = self.datasets(cfg, data, eval_data)
        return self.modality.evaluate(self, cfg, train_data, test_data, resolve_device(cfg.device))

    def export(self, fmt: str = "safetensors", out: str | Path | None = None) -> Path:
        """`simclr export`: the encoder as safetensors, a torchvision state dict or ONNX; the
        folder of `out` is made if missing."""
        path = Path(out) if out is not None else None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot create the folder of {path}: {e.strerror or e}") from None
        return self.modality.export(self, fmt, path)


def _local(cfg: Config) -> Config:
    """`cfg` with this machine's settings for where files are written: a run may come from
    someone else, and its recorded data.cache_dir (or data.download into data.root) would let
    it choose where reading its data writes. Caches go to $SIMCLR_CACHE or ~/.cache/simclr, or
    to the data.cache_dir a command sets (`Run.config`); nothing is downloaded unless asked."""
    cfg.data.cache_dir = None
    cfg.data.download = False
    return cfg
