"""simclr eval, embed and report on a trained run, end to end through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from sklearn.neighbors import KNeighborsClassifier

from simclr.config import Config, load_config
from simclr.evaluate import extract_features
from simclr.experiment import load_datasets
from simclr.modality import get
from simclr.model import build_encoder


def simclr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simclr", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmd") / "run"
    result = simclr("train", "--epochs", "2", "--out", str(out), "--batch-size", "128", "eval_every=1",
                    "eval_finetune=false", "report=false", "threads=1")
    assert result.returncode == 0, result.stderr
    return out


def test_monitor_logs_knn_each_epoch(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    knn = [r["knn"] for r in rows if "knn" in r]
    assert len(knn) == 2  # one per epoch (eval_every=1)
    # The last one is of the final encoder on the held-out set, as the evaluation's kNN (same k,
    # same split): equal, within one of the 899 test images (a tie broken the other way).
    final = json.loads((run / "eval.json").read_text())["simclr"]["knn"]
    assert knn[-1] == pytest.approx(final, abs=1.01 / 899)


FROZEN = ("linear", "knn", "few_shot_5", "linear_1pct", "linear_10pct")


def test_eval_writes_all_rows(run: Path) -> None:
    trained = json.loads((run / "eval.json").read_text())  # the evaluation at the end of training
    result = simclr("eval", str(run))
    assert result.returncode == 0, result.stderr
    data = json.loads((run / "eval.json").read_text())
    assert {"simclr", "random_init", "raw_pixels", "supervised", "notes"} <= data.keys()
    # `simclr eval` loads the run's encoder and split: every frozen-feature metric as training
    # computed it (seeded probes, the same features).
    for name in ("simclr", "random_init", "raw_pixels"):
        for metric in FROZEN:
            assert data[name][metric] == pytest.approx(trained[name][metric], abs=1e-9), (name, metric)
    # ...plus the fine-tuning rows training skipped (eval_finetune=false): there, and only for
    # the networks that are fine-tuned.
    assert trained["simclr"]["finetune_10pct"] is None
    assert isinstance(data["simclr"]["finetune_10pct"], float)
    assert isinstance(data["supervised"]["finetune_10pct"], float)
    assert data["raw_pixels"]["finetune_10pct"] is None and data["random_init"]["finetune_10pct"] is None


def test_eval_with_separate_eval_data(run: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255 / 16).astype(np.uint8)
    np.savez(tmp_path / "train.npz", x=images[:1000], y=d.target[:1000])
    np.savez(tmp_path / "test.npz", x=images[1000:], y=d.target[1000:])
    result = simclr("eval", str(run), "--data", str(tmp_path / "train.npz"), "--eval-data", str(tmp_path / "test.npz"),
                    "--no-finetune")
    assert result.returncode == 0, result.stderr
    data = json.loads((run / "eval.json").read_text())
    # Scored on the 797 images of test.npz, probes fit on train.npz: the kNN equals
    # scikit-learn's on those two files' pixels (resized to the run's 16 px) and on the trained
    # encoder's features of them.
    cfg = load_config(run / "config.yaml")
    train, test = load_datasets(cfg, get("image"), str(tmp_path / "train.npz"), str(tmp_path / "test.npz"),
                                input_shape=[1, 16, 16])
    assert len(train) == 1000 and test is not None and len(test) == 797
    encoder = build_encoder(cfg.model.encoder, in_channels=1, image_size=16)
    encoder.load_state_dict(load_file(str(run / "encoder.safetensors")), strict=True)
    features = {"simclr": (extract_features(encoder, train.inputs), extract_features(encoder, test.inputs)),
                "raw_pixels": (train.inputs.flatten(1).float() / 255, test.inputs.flatten(1).float() / 255)}
    for name, (xtr, xte) in features.items():
        knn = KNeighborsClassifier(200, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.1))
        expected = knn.fit(xtr.numpy(), d.target[:1000]).score(xte.numpy(), d.target[1000:])
        assert data[name]["knn"] == pytest.approx(expected, abs=1.01 / 797), name


def test_embed_opens_in_one_line(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "h.npz"
    result = simclr("embed", str(run), "--data", "digits", "--out", str(out))
    assert result.returncode == 0, result.stderr
    h = np.load(out)
    width = build_encoder(Config().model.encoder, in_channels=1, image_size=16).out_dim  # the size of h
    assert h["embeddings"].shape == (1797, width) and h["embeddings"].dtype == np.float32
    assert h["labels"].shape == (1797,) and set(h["labels"].tolist()) == set(range(10))
    assert len(h["ids"]) == 1797


def test_report_rebuilds(run: Path) -> None:
    result = simclr("report", str(run))
    assert result.returncode == 0, result.stderr
    html = (run / "report.html").read_text()
    assert "<img" in html and (run / "embedding_map.png").exists()


def test_eval_on_missing_run_is_one_line_error(tmp_path: Path) -> None:
    result = simclr("eval", str(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
