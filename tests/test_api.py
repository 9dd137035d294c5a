"""The Python API (`simclr.training`, `Run.embed/evaluate/export`), `simclr config`, `--version`,
shipped recipes, self-describing exports, the model card and the optional-extra hints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_DEVICE
from safetensors import safe_open
from sklearn.datasets import load_digits
from torch.utils.data import Dataset

import simclr
from simclr import Run
from simclr.cli import main
from simclr.config import load_config, recipes
from simclr.errors import UserError
from simclr.evaluate import extract_features
from simclr.extras import install_hint, require, wanted
from simclr.reference import keys

TINY = {"epochs": 1, "batch_size": 64, "eval_finetune": False, "report": False, "device": TEST_DEVICE.split("=")[1],
        "threads": 1}


def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images * 16).clip(0, 255).astype(np.uint8), d.target


AS_TRAINED: dict[str, str] = {}  # the model card and eval.json as training wrote them


@pytest.fixture(scope="module")
def array_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, np.ndarray, np.ndarray]:
    x, y = digits()
    run = simclr.train(data=x, labels=y, out=tmp_path_factory.mktemp("api") / "run", **TINY)
    AS_TRAINED.update(card=(run.dir / "MODEL_CARD.md").read_text(), eval=(run.dir / "eval.json").read_text())
    return run, x, y


def test_train_on_an_array_returns_the_opened_run(array_run: tuple[Run, np.ndarray, np.ndarray]) -> None:
    run, x, y = array_run
    assert run.cfg.epochs == 1 and run.cfg.batch_size == 64
    assert run.cfg.data.source == str(run.dir / "inputs.npz")  # in-memory data lives with the run
    with np.load(run.dir / "inputs.npz") as saved:
        assert np.array_equal(saved["x"], x) and np.array_equal(saved["y"], y)
    assert (run.dir / "eval.json").is_file()


def test_embed_of_an_array_equals_the_encoder_on_the_runs_own_inputs(
    array_run: tuple[Run, np.ndarray, np.ndarray],
) -> None:
    """Run.embed prepares in-memory inputs exactly as the run's data path does."""
    run, x, _ = array_run
    expected = extract_features(run.encoder, run.load(run.cfg.data.source).inputs[:7], 256, "cpu")
    h = run.embed(x[:7], device="cpu")
    assert h.shape == (7, run.encoder.out_dim)
    torch.testing.assert_close(h, expected, rtol=0, atol=0)
    # float input in [0, 1] reads as the same images
    torch.testing.assert_close(run.embed(x[:7].astype(np.float32) / 255, device="cpu"), expected,
                               rtol=0, atol=1e-6)


def test_evaluate_and_export_from_python(array_run: tuple[Run, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    run, _, _ = array_run
    results = run.evaluate(eval_finetune=False)
    saved = json.loads((run.dir / "eval.json").read_text())
    assert results["simclr"]["linear"] == pytest.approx(saved["simclr"]["linear"])
    path = run.export("safetensors", tmp_path / "missing" / "enc.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["simclr.input_shape"]) == run.input_shape
    assert meta["simclr.modality"] == "image" and meta["simclr.encoder"] == run.cfg.model.encoder
    assert "[0, 1]" in meta["simclr.inputs"] and "no mean/std" in meta["simclr.inputs"]
    assert json.loads(meta["simclr.recipe"])["augment"]["min_scale"] == 0.2  # resolved: 16 px images, cifar


class Pairs(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.x[i]).float().div(255).unsqueeze(0), int(self.y[i])  # (1, H, W) in [0, 1]


def test_a_dataset_of_pairs_gives_inputs_and_labels(tmp_path: Path) -> None:
    from simclr.api import as_source

    x, y = digits()
    path = as_source(Pairs(x[:50], y[:50]), None, tmp_path)
    with np.load(path) as saved:
        assert saved["x"].shape == (50, 1, 8, 8) and np.array_equal(saved["y"], y[:50])
        assert np.allclose(saved["x"][:, 0] * 255, x[:50])


def test_nested_settings_and_bad_data(tmp_path: Path) -> None:
    from simclr.api import flatten

    assert flatten({"optim": {"lr": 0.3}, "model__encoder": "resnet18"}) == {"optim.lr": 0.3,
                                                                           "model.encoder": "resnet18"}
    with pytest.raises(UserError, match="path, an array, a tensor or a Dataset"):
        simclr.train(data=42, out=tmp_path / "r", **TINY)
    with pytest.raises(UserError, match="3 labels for 1797 inputs"):
        simclr.train(data=digits()[0], labels=[0, 1, 2], out=tmp_path / "r", **TINY)


def test_shipped_recipes_load_by_name() -> None:
    assert {"cifar10", "imagenet", "series", "text"} <= set(recipes())
    cfg = load_config("cifar10")
    assert cfg.augment.recipe == "cifar" and cfg.model.encoder == "resnet18"
    with pytest.raises(UserError, match="shipped recipe: cifar10"):
        load_config("cifar11")


def test_config_command_lists_every_key_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    found = keys()
    assert len(found) > 80 and all(k.help for k in found)  # every key says what it does
    for k in found:
        assert f"{k.name}: " in text
    assert "temperature: float = 0.2" in text
    assert main(["config", "optim"]) == 0
    assert capsys.readouterr().out.startswith("optim.name: str = 'auto'")


def test_version_and_help_list_keys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"simclr {simclr.__version__}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "model.encoder" in capsys.readouterr().out


def test_model_card_describes_the_run(array_run: tuple[Run, np.ndarray, np.ndarray]) -> None:
    run, _, _ = array_run
    card, saved = AS_TRAINED["card"], json.loads(AS_TRAINED["eval"])
    assert f"| simclr | {saved['simclr']['linear']:.4f} |" in card
    assert f'Run.open("{run.dir}")' in card and "schedule: 28 steps" in card
    assert "crops ≥ 0.2" in card and "[0, 1]" in card


def test_a_missing_extra_is_a_one_line_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setattr("simclr.extras.available", lambda extra: extra != "report")
    with pytest.raises(UserError, match=r"report.html needs the \[report\] extra: pip install 'simclr-torch\["):
        require("report")
    assert wanted("report", None) is False  # left to the install: off, said once
    with pytest.raises(UserError, match="simclr-torch"):
        wanted("report", True)
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: report.html needs the [report] extra: {install_hint('report')}"]
