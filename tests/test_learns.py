"""Pretraining learns: a short SimCLR run on the embedded scikit-learn digits gives features that
beat the same network at its seeded random initialization on the 5-label probe, by a margin
outside what the choice of random weights, or BatchNorm statistics alone, move.

Measured on 2026-12-06 on a 2-core AMD EPYC CPU (shared with other jobs; native bf16, so
precision=auto ran bf16 autocast), the settings of `SETTINGS` (6 epochs at batch 32: 336 steps,
10-17 s a run), seeds 0-4, each seed its own split. SimCLR minus eval.json's random_init row,
and minus the same random network with its BatchNorm statistics estimated on the training
images (`calibrated`: no weight changed):

    seed                          0       1       2       3       4
    few_shot_5 - random_init   +0.060  +0.044  +0.051  +0.065  +0.051   (smallest +0.044)
    few_shot_5 - calibrated    +0.051  +0.042  +0.057  +0.086  +0.043   (smallest +0.042)
    knn - random_init          +0.062  +0.103  +0.103  +0.068  +0.088
    knn - calibrated           +0.006  +0.019  +0.028  +0.034  +0.018

In float32 (SIMCLR_NATIVE_BF16=0), seed 0: few-shot +0.051 and kNN +0.059 over random_init.
Six random initializations on one split (seed 0; seed 1 in brackets), no training: few_shot_5
0.810-0.835, std 0.008 [0.813-0.843, std 0.012]; kNN 0.809-0.851, std 0.018 [0.808-0.860, 0.021].
A run that learns nothing (optim.lr=1e-9, seed 0: its weights stay, its BatchNorm statistics
follow the data) scores few-shot +0.009 and kNN +0.049 over random_init.

So the margin is few-shot +0.025 over both random networks: two to three standard deviations of
the random-init spread, above the non-learning run's +0.009, under three fifths of the smallest gap.
kNN is not asserted here: at this budget nearly all of its lead over eval.json's random_init is
the BatchNorm statistics (random_init is evaluated with them at their initial values), the
non-learning run's +0.049 is 0.013 short of the smallest trained gap, and the lead over the
calibrated network (+0.006 to +0.034) is within the random-init spread. (The recurrent series
encoders, which have no BatchNorm, show kNN learning: test_series.py's
test_recurrent_encoders_learn_on_libras.)
The linear probe on all labels is not asserted either: random features already reach 0.96-0.98
on digits, and the measured gaps (-0.007 to +0.011) are within its noise.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from simclr.config import load_config
from simclr.evaluate import extract_features, feature_metrics, few_shot_draws, seeded
from simclr.experiment import load_datasets, random_encoder_maker
from simclr.modality import get
from simclr.training import train

SETTINGS = ["epochs=6", "batch_size=32", "seed=0", "eval_finetune=false", "report=false", "eval_every=0",
            "threads=1", "device=cpu", "log_every=50"]
FEW_SHOT_MARGIN = 0.025


def calibrated(encoder: nn.Module, images: torch.Tensor) -> nn.Module:
    """`encoder`'s weights as they are, its BatchNorm statistics the training images' (one pass in
    train mode, cumulative averages), in eval mode: random features at their best for a probe."""
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
    encoder.train()
    with torch.no_grad():
        for start in range(0, len(images), 64):
            encoder(images[start : start + 64].float() / 255)
    return encoder.eval()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    out = tmp_path_factory.mktemp("learns") / "run"
    _, evaluation = train(load_config(None, [*SETTINGS, f"out={out}"]))
    assert evaluation is not None
    assert json.loads((out / "eval.json").read_text())["simclr"]["few_shot_5"] == evaluation["simclr"]["few_shot_5"]
    # The calibrated random network on the run's split, with the same seeded 5-label draws.
    cfg = load_config(out / "config.yaml")
    modality = get("image")
    train_data, test_data = load_datasets(cfg, modality)
    assert train_data.labels is not None and test_data is not None and test_data.labels is not None
    f = calibrated(seeded(random_encoder_maker(cfg, modality, train_data), cfg.seed), train_data.inputs)
    ytr, yte = train_data.labels.long(), test_data.labels.long()
    subsets = {"few_shot_5": few_shot_draws(ytr.numpy(), 5, cfg.seed)}
    evaluation["calibrated"] = feature_metrics(extract_features(f, train_data.inputs), ytr,
                                               extract_features(f, test_data.inputs), yte, subsets, 200, cfg.seed)
    return evaluation


@pytest.mark.parametrize("baseline", ["random_init", "calibrated"])
def test_simclr_beats_random_init_on_five_labels_per_class(
    results: dict[str, dict[str, float]], baseline: str,
) -> None:
    gap = results["simclr"]["few_shot_5"] - results[baseline]["few_shot_5"]
    assert gap > FEW_SHOT_MARGIN, (results["simclr"]["few_shot_5"], results[baseline]["few_shot_5"])
