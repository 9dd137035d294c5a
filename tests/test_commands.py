"""simclr eval, embed and report on a trained run, end to end through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


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
    assert len(knn) == 2 and all(0 < v <= 1 for v in knn)  # one per epoch (eval_every=1)


def test_eval_writes_all_rows(run: Path) -> None:
    result = simclr("eval", str(run))
    assert result.returncode == 0, result.stderr
    data = json.loads((run / "eval.json").read_text())
    assert {"simclr", "random_init", "raw_pixels", "supervised", "notes"} <= data.keys()
    for name in ("simclr", "random_init", "raw_pixels"):
        for metric in ("linear", "knn", "few_shot_5", "linear_1pct", "linear_10pct"):
            assert 0 <= data[name][metric] <= 1
    assert 0 <= data["simclr"]["finetune_10pct"] <= 1 and 0 <= data["supervised"]["finetune_10pct"] <= 1
    assert data["raw_pixels"]["finetune_10pct"] is None


def test_eval_with_separate_eval_data(run: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255 / 16).astype(np.uint8)
    np.savez(tmp_path / "train.npz", x=images[:1000], y=d.target[:1000])
    np.savez(tmp_path / "test.npz", x=images[1000:], y=d.target[1000:])
    result = simclr("eval", str(run), "--data", str(tmp_path / "train.npz"), "--eval-data", str(tmp_path / "test.npz"),
                    "--no-finetune")
    assert result.returncode == 0, result.stderr
    assert 0.5 < json.loads((run / "eval.json").read_text())["simclr"]["linear"] <= 1


def test_embed_opens_in_one_line(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "h.npz"
    result = simclr("embed", str(run), "--data", "digits", "--out", str(out))
    assert result.returncode == 0, result.stderr
    h = np.load(out)
    assert h["embeddings"].shape == (1797, 256) and h["embeddings"].dtype == np.float32
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
