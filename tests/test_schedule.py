"""The schedule sized to the data (simclr.schedule) and the time budget (`simclr train --time`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TEST_DEVICE
from safetensors.torch import load_file

from simclr.config import load_config
from simclr.errors import UserError
from simclr.schedule import (
    default_batch,
    default_epochs,
    default_warmup,
    optimizer_settings,
    parse_duration,
    plan,
    pretrain_on,
)
from simclr.training import setup, sized_to_budget, train


@pytest.mark.parametrize(("samples", "world", "batch"), [
    (100_000, 1, 256),  # a large set: the cap
    (1000, 1, 64),  # 1000 / 8 = 125: the power of two below
    (2048, 1, 256),  # exactly 1/8
    (2047, 1, 128),
    (200, 1, 16),  # a UCR TRAIN split of 200 cases: 12 steps an epoch, not an error
    (15, 1, 2),  # the smallest SimCLR batch (one negative pair)
    (1000, 3, 63),  # three processes take 21 each
    (100_000, 8, 256),
])
def test_default_batch(samples: int, world: int, batch: int) -> None:
    assert default_batch(samples, world) == batch
    assert samples // batch >= 7 or samples < 16  # an epoch has about 8 steps or more


@pytest.mark.parametrize(("steps_per_epoch", "epochs"), [(15, 134), (20, 100), (19, 106), (5000, 100), (1, 2000)])
def test_default_epochs_give_100_epochs_and_2000_steps_at_least(steps_per_epoch: int, epochs: int) -> None:
    assert default_epochs(steps_per_epoch) == epochs
    assert epochs * steps_per_epoch >= 2000 and (epochs == 100 or (epochs - 1) * steps_per_epoch < 2000)


@pytest.mark.parametrize(("steps_per_epoch", "total", "warmup"), [
    (15, 2010, 150),  # 10 epochs: under a tenth of the run
    (500, 50_000, 5000),  # the paper's 10 of 100 epochs
    (500, 500_000, 5000),  # 1000 epochs: still 10
    (100, 200, 20),  # a 2-epoch run: a tenth of it
])
def test_default_warmup(steps_per_epoch: int, total: int, warmup: int) -> None:
    assert default_warmup(steps_per_epoch, total) == warmup


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400),
                                                ("45", 45), (" 2M ", 120)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10 minutes", "m", "10x", "0s", "1h-5m", ""])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UserError, match="time budget"):
        parse_duration(text)


@pytest.mark.parametrize(("setting", "modality", "labelled", "split", "chosen"), [
    ("auto", "small", 1797, True, "all"),  # digits: halved, both halves pretrain
    ("auto", "small", 2000, True, "all"),
    ("auto", "small", 2001, True, "train"),  # from here 1,000 or 10 % are held out
    ("auto", "small", 1000, False, "train"),  # --eval-data: a separate set stays unseen
    ("auto", "all", 50_000, False, "all"),  # series, text: their literature's protocol
    ("auto", "train", 100, True, "train"),  # paired data: its held-out pairs stay unseen
    ("train", "all", 100, True, "train"),  # a setting is kept
    ("all", "small", 50_000, False, "all"),
])
def test_pretrain_on(setting: str, modality: str, labelled: int, split: bool, chosen: str) -> None:
    assert pretrain_on(setting, modality, labelled, split) == chosen


def test_optimizer_settings_come_from_the_optimizer() -> None:
    cfg = load_config()
    lars = optimizer_settings(cfg.optim, "lars")
    assert (lars.name, lars.lr, lars.lr_scaling, lars.weight_decay) == ("lars", 0.075, "sqrt", 1e-6)
    adamw = optimizer_settings(cfg.optim, "adamw")
    assert (adamw.name, adamw.lr, adamw.lr_scaling, adamw.weight_decay) == ("adamw", 1e-3, "none", 0.01)
    set_by_user = optimizer_settings(load_config(None, ["optim.name=sgd", "optim.lr=0.5"]).optim, "adamw")
    assert (set_by_user.name, set_by_user.lr, set_by_user.lr_scaling) == ("sgd", 0.5, "sqrt")


def test_plan_of_a_small_set() -> None:
    cfg = load_config()
    cfg.optim = optimizer_settings(cfg.optim, "lars")
    s = plan(cfg, 1000)
    assert (s.batch_size, s.steps_per_epoch, s.epochs, s.total_steps, s.warmup_steps) == (64, 15, 134, 2010, 150)
    assert s.peak_lr == pytest.approx(0.075 * 8)  # sqrt(64)
    assert "2,010 steps = 134 epochs × 15 at global batch 64" in s.why and "lr 0.6" in s.why


def test_a_modality_sets_its_own_floor() -> None:
    """Text (AdamW on token views) has a floor of 10 epochs and 500 steps, not the images' 100 and
    2,000: the SMS Spam Collection's 5,573 texts get 24 epochs of 21 steps, not 100."""
    from simclr.modality import get

    cfg = load_config()
    cfg.optim = optimizer_settings(cfg.optim, "adamw")
    text = get("text")
    assert text.min_schedule == (10, 500) and get("image").min_schedule == (100, 2000)
    s = plan(cfg, 5573, floor=text.min_schedule)
    assert (s.batch_size, s.steps_per_epoch, s.epochs, s.total_steps) == (256, 21, 24, 504)
    assert "at least 10 epochs and 500 steps" in s.why
    assert plan(cfg, 5573).epochs == 100  # the default floor is the images'


def test_plan_keeps_what_is_set() -> None:
    cfg = load_config(None, ["batch_size=100", "epochs=3", "optim.lr=0.3", "optim.lr_scaling=linear",
                             "optim.warmup_steps=7"])
    cfg.optim = optimizer_settings(cfg.optim, "lars")
    s = plan(cfg, 1000)
    assert (s.batch_size, s.steps_per_epoch, s.epochs, s.warmup_steps) == (100, 10, 3, 7)
    assert s.peak_lr == pytest.approx(0.3 * 100 / 256)
    with pytest.raises(UserError, match="fewer than one batch"):
        plan(cfg, 99)


def test_plan_of_a_time_budget() -> None:
    cfg = load_config(None, ["time_budget=10m"])
    cfg.optim = optimizer_settings(cfg.optim, "lars")
    s = plan(cfg, 1000, seconds_per_step=0.5, budget_s=600)
    assert s.epochs == math.floor(600 / (0.5 * 15)) and "what fits in 10m at 0.5 s a step" in s.why
    assert plan(cfg, 1000, seconds_per_step=100.0, budget_s=600).epochs == 1  # at least one epoch


def test_epochs_and_a_time_budget_conflict() -> None:
    with pytest.raises(UserError, match="not both"):
        load_config(None, ["epochs=5", "time_budget=10m"])
    with pytest.raises(UserError, match="time budget"):
        load_config(None, ["time_budget=soon"])


def test_timing_for_a_budget_leaves_the_weights_and_optimizer_as_they_were(tmp_path: Path) -> None:
    cfg = load_config(None, ["time_budget=20s", f"out={tmp_path / 'run'}", TEST_DEVICE])
    run = setup(cfg)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    sized = sized_to_budget(run, run.inputs)
    after = run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert run.optimizer.state_dict()["state"] == {}  # no momentum from the timed steps
    assert sized.cfg.time_budget is None and sized.cfg.epochs == sized.schedule.epochs >= 1
    assert "what fits in 20s" in sized.schedule.why and "≤ 1/8 of 1,797 inputs" in sized.schedule.why


def test_a_time_budget_run_is_the_run_of_the_epochs_it_chose(tmp_path: Path) -> None:
    common = ["eval_finetune=false", "report=false", "eval_every=0", "threads=1", TEST_DEVICE]
    budget = tmp_path / "budget"
    train(load_config(None, ["time_budget=3s", f"out={budget}", *common]))
    header = (budget / "config.yaml").read_text().splitlines()[0]
    assert header.startswith("# schedule:") and "what fits in 3s" in header
    saved = load_config(budget / "config.yaml")
    assert saved.time_budget is None and saved.epochs is not None and saved.batch_size == 128  # digits: 1797 / 8
    assert saved.data.pretrain_on == "all" and saved.optim.name == "lars" and saved.optim.lr == 0.075
    # The timed steps left nothing behind: the same weights as a run told that many epochs.
    epochs = tmp_path / "epochs"
    train(load_config(None, [f"epochs={saved.epochs}", f"out={epochs}", *common]))
    a, b = load_file(str(budget / "encoder.safetensors")), load_file(str(epochs / "encoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
