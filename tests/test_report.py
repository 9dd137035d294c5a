"""report.html: renders from whatever a run directory holds, with and without labels."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from simclr.augment import ImageAugment
from simclr.data import ImageData
from simclr.evaluate import save_eval
from simclr.model import SmallCNN
from simclr.report import FIGURES, build_report, curves_figure, embedding_map_figure, read_metrics


def images(n: int = 40, labelled: bool = True, channels: int = 1) -> ImageData:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, 12, 12), generator=gen, dtype=torch.uint8)
    return ImageData(x, torch.arange(n) % 4 if labelled else None, "toy")


def write_run(run_dir: Path, knn: bool, evaluated: bool) -> None:
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.yaml").write_text("epochs: 3\nmodel:\n  encoder: small_cnn  # <b>not bold</b>\n")
    rows = [{"step": s, "epoch": 1 + s // 4, "loss": 6.0 - 0.1 * s, "lr": 0.01 * s, "images_per_s": 100.0}
            for s in range(1, 13)]
    if knn:
        for r in rows[3::4]:
            r["knn"] = 0.5 + 0.01 * r["step"]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (run_dir / "metrics.jsonl").write_text(text + '{"step": 13, "lo')  # a line cut by a crash
    if evaluated:
        results = {
            "simclr": {"linear": 0.9, "finetune_1pct": 0.5},
            "raw_pixels": {"linear": 0.8, "finetune_1pct": math.nan},
        }
        save_eval(run_dir / "eval.json", results, ["1pct: used one per class"])


def inline_images(page: str) -> int:
    return len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page))


def test_full_report_with_labels(tmp_path: Path) -> None:
    write_run(tmp_path, knn=True, evaluated=True)
    encoder = SmallCNN(1, width=8).train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    out = build_report(tmp_path, encoder, images(), ImageAugment(12, blur_prob=0.0), gallery_size=4)
    page = out.read_text()
    assert out == tmp_path / "report.html"
    assert all((tmp_path / name).stat().st_size > 1000 for name in FIGURES)
    assert inline_images(page) == 3  # self-contained: opens offline without the PNGs
    assert "<table>" in page and "<td>90.0</td>" in page and "<td>–</td>" in page
    assert "used one per class" in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page  # the config is escaped
    assert encoder.training and all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


def test_report_without_labels_eval_or_knn(tmp_path: Path) -> None:
    write_run(tmp_path, knn=False, evaluated=False)
    out = build_report(tmp_path, SmallCNN(3, width=8), images(labelled=False, channels=3), None, gallery_size=3)
    page = out.read_text()
    assert "<table" not in page and "No eval.json" in page
    assert "not coloured" in page and "paper's default augmentation" in page
    assert inline_images(page) == 3


def test_report_of_an_empty_run_directory(tmp_path: Path) -> None:
    for name in FIGURES:  # left over from an earlier build: must not be shown as current
        (tmp_path / name).write_bytes(b"stale")
    page = build_report(tmp_path).read_text()
    assert inline_images(page) == 0
    assert not any((tmp_path / name).exists() for name in FIGURES)
    assert "No config.yaml" in page and "No eval.json" in page


def test_curves_show_knn_only_when_logged(tmp_path: Path) -> None:
    write_run(tmp_path, knn=True, evaluated=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert len(rows) == 12  # the cut line is skipped
    with_knn = curves_figure(rows)
    without = curves_figure([{k: v for k, v in r.items() if k != "knn"} for r in rows])
    assert with_knn is not None and without is not None
    assert [a.get_title() for a in with_knn.axes][-1].startswith("kNN")
    assert len(with_knn.axes) == 3 and len(without.axes) == 2
    assert curves_figure([]) is None


def test_embedding_map_colours_by_label_only_when_labels_exist() -> None:
    h = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    labels = np.arange(30) % 3
    coloured = embedding_map_figure(h, labels, ["cat", "dog", "emu"], seed=0).axes[0]
    legend = coloured.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["cat", "dog", "emu"]
    assert len(coloured.collections) == 3
    plain = embedding_map_figure(h, None, None, seed=0).axes[0]
    assert plain.get_legend() is None and len(plain.collections) == 1
