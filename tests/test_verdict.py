"""`simclr train`/`eval` say so in one line when a baseline beats SimCLR; the report shows it first."""

from __future__ import annotations

import json
import math
from pathlib import Path

from simclr.config import load_config, save_config
from simclr.metrics import verdict
from simclr.report import build_report

WON = {"simclr": {"linear": 0.9, "knn": 0.8, "few_shot_5": 0.7},
       "random_init": {"linear": 0.7, "knn": 0.5, "few_shot_5": 0.4},
       "raw_pixels": {"linear": 0.85, "knn": 0.8, "few_shot_5": 0.6},  # a tie is not a loss
       "supervised": {"linear": math.nan, "knn": math.nan, "few_shot_5": math.nan, "finetune_1pct": 0.99}}


def test_no_line_when_simclr_is_at_least_as_good() -> None:
    assert verdict(WON) is None


def test_each_loss_is_named_with_its_figures() -> None:
    lost = {**WON, "raw_pixels": {"linear": 0.95, "knn": 0.832, "few_shot_5": 0.6}}
    line = verdict(lost, "all")
    assert line is not None and "\n" not in line
    assert "raw_pixels beats SimCLR on linear (0.950 vs 0.900)" in line
    assert "raw_pixels beats SimCLR on knn (0.832 vs 0.800)" in line and "few_shot_5" not in line
    assert "data.pretrain_on=all" not in line  # it already did
    assert "data.pretrain_on=all" in verdict(lost, "train")  # type: ignore[operator]


def test_the_supervised_reference_is_not_a_baseline() -> None:
    assert verdict({**WON, "supervised": {"linear": 1.0, "knn": 1.0, "few_shot_5": 1.0}}) is None


def test_the_report_shows_the_line_at_the_top(tmp_path: Path) -> None:
    lost = {**WON, "random_init": {"linear": 0.7, "knn": 0.9, "few_shot_5": 0.4}}
    (tmp_path / "eval.json").write_text(json.dumps(lost))
    save_config(load_config(None, ["data.pretrain_on=train"]), tmp_path / "config.yaml")
    page = build_report(tmp_path).read_text()
    line = page.index("random_init beats SimCLR on knn (0.900 vs 0.800)")
    assert line < page.index("<h2>Evaluation</h2>") and "data.pretrain_on=all" in page
    (tmp_path / "eval.json").write_text(json.dumps(WON))
    assert "beats SimCLR" not in build_report(tmp_path).read_text()
