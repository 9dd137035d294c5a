"""The modality seam: a modality defined in this file alone, registered with one line, trains,
evaluates, embeds and exports through the command line; nothing shared names it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file
from torch import nn

from simclr import modality
from simclr.cli import main
from simclr.config import Config, check, load_config
from simclr.errors import UserError
from simclr.evaluate import feature_metrics
from simclr.experiment import SingleEncoder
from simclr.modality import Augment
from simclr.run import Run


@dataclass
class VectorsConfig:
    noise: float = 0.3  # std of the Gaussian noise each view adds
    width: int = 16  # h's dimension


@dataclass
class Vectors:
    inputs: torch.Tensor  # (N, D) float
    labels: torch.Tensor | None
    name: str = "vectors"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, index: Any) -> Vectors:
        index = torch.as_tensor(index)
        return Vectors(self.inputs[index], None if self.labels is None else self.labels[index])


class Noisy:
    def __init__(self, noise: float) -> None:
        self.noise = noise

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return x + self.noise * torch.randn(x.shape, generator=gen, device=x.device)


class MLP(nn.Sequential):
    def __init__(self, d: int, width: int) -> None:
        super().__init__(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, width))
        self.out_dim = width


class VectorsModality(SingleEncoder):
    """Noisy copies of a few constant vectors, one per class, in a `.vec` file (an .npz of x, y)."""

    name = "vectors"
    config = VectorsConfig

    def validate(self, cfg: Config) -> None:
        check(cfg.vectors.noise >= 0, f"vectors.noise must be >= 0, got {cfg.vectors.noise}")

    def claims(self, path: Path) -> bool:
        return path.suffix == ".vec"

    def load(self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None,
             like: Any | None = None) -> tuple[Vectors, None]:
        with np.load(source) as f:
            return Vectors(torch.from_numpy(f["x"]), torch.from_numpy(f["y"])), None

    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment:
        return Noisy(cfg.vectors.noise)

    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module:
        return MLP(input_shape[0], cfg.vectors.width)

    def baseline(self, cfg: Config) -> Any:
        def raw(train: Vectors, test: Vectors, subsets: dict[str, np.ndarray], k: int, seed: int) -> Any:
            assert train.labels is not None and test.labels is not None
            row = feature_metrics(train.inputs, train.labels, test.inputs, test.labels, subsets, k, seed)
            return "raw_vectors", row

        return raw

    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure:
        return Figure()


@pytest.fixture
def vectors(tmp_path: Path) -> Iterator[Path]:
    modality.register("vectors", VectorsModality())  # the one line a new modality needs
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=gen)
    y = torch.arange(256) % 4
    x = centres[y] + 0.1 * torch.randn(256, 8, generator=gen)
    path = tmp_path / "points.vec"
    with open(path, "wb") as f:
        np.savez(f, x=x.numpy().astype(np.float32), y=y.numpy())
    yield path
    del modality.MODALITIES["vectors"]
    modality._loaded.pop("vectors", None)


def test_a_modality_from_one_file_trains_evaluates_embeds_and_exports(
    vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    settings = ["epochs=2", "batch_size=64", "eval_every=1", "eval_finetune=false", "report=false",
                "vectors.width=12", "eval_knn_k=5"]
    assert main(["train", "--data", str(vectors), "--out", str(run_dir), *settings]) == 0  # detected by .vec
    run = Run.open(run_dir)
    assert run.modality.name == "vectors" and run.cfg.vectors.width == 12 and run.input_shape == [8]
    assert {"simclr", "random_init", "raw_vectors"} <= set(json.loads((run_dir / "eval.json").read_text()))

    assert main(["eval", str(run_dir), "--no-finetune"]) == 0

    out = tmp_path / "h.npz"
    assert main(["embed", str(run_dir), "--data", str(vectors), "--out", str(out)]) == 0
    with np.load(vectors) as f:
        x = torch.from_numpy(f["x"])
    with torch.no_grad():
        expected = run.encoder.eval()(x)  # (256, 12)
    h = np.load(out)["embeddings"]
    assert h.shape == (256, 12)
    torch.testing.assert_close(torch.from_numpy(h), expected, rtol=1e-5, atol=1e-6)

    assert main(["export", str(run_dir), "--format", "safetensors"]) == 0
    weights = load_file(str(run_dir / "encoder.safetensors"))
    assert weights.keys() == run.encoder.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in run.encoder.state_dict().items())

    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "torchvision"]) == 2
    assert "--format torchvision is not for vectors encoders" in capsys.readouterr().err


def test_its_config_section_is_checked_like_the_core_keys(vectors: Path) -> None:
    assert load_config(None, ["vectors.noise=0.5"]).vectors.noise == 0.5
    with pytest.raises(UserError, match=r"vectors\.noise must be >= 0"):
        load_config(None, ["vectors.noise=-1"])
    with pytest.raises(UserError, match=r"unknown config key 'vectors\.nois'"):
        load_config(None, ["vectors.nois=1"])
    assert modality.detect(str(vectors)) == "vectors"
