"""Evaluation of a frozen encoder, as in the SimCLR paper (Chen et al. 2020, arXiv:2002.05709,
section 4 and appendix B): linear probe, weighted kNN, few-label probes and fine-tuning, with
the random-init encoder, raw pixels and a from-scratch supervised network as baselines.

Features are extracted once per encoder in eval mode under `no_grad`; the encoder's
parameters, buffers (BatchNorm statistics) and train/eval mode are left exactly as they were.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from simclr import dist
from simclr.errors import UserError
from simclr.finetune import FinetuneSettings, clip_batch, finetune_accuracy
from simclr.probe import linear_probe

log = logging.getLogger("simclr")

ENCODERS = ("simclr", "random_init", "raw_pixels", "supervised")


@torch.no_grad()
def extract_features(
    encoder: nn.Module, images: torch.Tensor, batch_size: int = 512,
    device: torch.device | str = "cpu", progress: str | None = None,
) -> torch.Tensor:
    """h = f(x) for a batch of inputs (uint8 images (N, C, H, W) and videos (N, F, C, H, W) are
    scaled to [0, 1]; series and token ids go in as they are), encoder in eval mode; its training
    mode is restored afterwards and no parameter or buffer is touched. `progress` names a tqdm
    bar. A video counts as F images towards `batch_size`."""
    was_training = encoder.training
    encoder.eval()
    feats = []
    batch_size = clip_batch(images, batch_size)
    starts = range(0, len(images), batch_size)
    try:
        for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None, dynamic_ncols=True):
            x = to_model_input(images[start : start + batch_size].to(device))
            feats.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    if not feats:
        return torch.zeros(0, 0)
    return torch.cat(feats)


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """What an encoder takes: uint8 pixels become floats in [0, 1]; other inputs (float
    series, int64 token ids) are already in the encoder's form."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def extract_features_sharded(
    encoder: nn.Module, inputs: torch.Tensor, batch_size: int = 512, device: torch.device | str = "cpu",
) -> torch.Tensor:
    """`extract_features` split across the ranks of a process group: every rank must call it;
    each encodes its contiguous share of the N inputs and every rank gets all N features, in
    order. Without a process group it is `extract_features`."""
    world = dist.world_size()
    if world == 1 or len(inputs) == 0:
        return extract_features(encoder, inputs, batch_size, device)
    share = -(-len(inputs) // world)  # ceil: equal shares, the last rank repeats the last input
    start = dist.rank() * share
    if start + share <= len(inputs):  # a slice: read in batches (inputs may be rows of a memory map)
        part = inputs[start : start + share]
    else:
        part = inputs[torch.arange(start, start + share).clamp(max=len(inputs) - 1)]
    local = extract_features(encoder, part, batch_size, device)
    return dist.all_gather_rows(local)[: len(inputs)]


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` indices of each class (all of a class if it has fewer), seeded."""
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == c), min(per_class, int((labels == c).sum())), replace=False)
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(picked))


# The few-label probe is the mean over this many seeded draws of its labels: one draw of 5 per
# class moves the accuracy by several points (on 500 CIFAR-10 images, 3.8 to 10.2 points between
# the same two encoders over four seeds), more than the differences it is read for.
FEW_SHOT_DRAWS = 5


def few_shot_draws(labels: np.ndarray, per_class: int, seed: int, draws: int = FEW_SHOT_DRAWS) -> np.ndarray:
    """(draws, m): `draws` seeded `balanced_subset`s of `per_class` labels per class."""
    return np.stack([balanced_subset(labels, per_class, seed + i) for i in range(draws)])


def over_draws(index: np.ndarray, probe: Callable[[np.ndarray], float]) -> float:
    """`probe` of a labelled subset, or its mean over the rows of a (draws, m) index."""
    return float(np.mean([probe(i) for i in np.atleast_2d(index)]))


def fraction_name(fraction: float) -> str:
    """0.01 -> '1pct', 0.1 -> '10pct' (the suffix of the `linear_*` and `finetune_*` metrics)."""
    return f"{fraction * 100:g}pct"


def finetune_metric(layer: str, fraction: float) -> str:
    """finetune_10pct for fine-tuning from h, finetune_head1_10pct from the head's first layer."""
    return f"finetune_{fraction_name(fraction)}" if layer == "h" else f"finetune_{layer}_{fraction_name(fraction)}"


def fraction_subset(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, str | None]:
    """A class-balanced, seeded `fraction` of the labels: round(fraction × N / classes) indices of
    every class, at least one. Returns the indices and a note when the fraction had to be
    raised to one label per class or a class had too few examples for an equal share."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = fraction * len(labels) / len(classes)  # labels per class the fraction allows
    per_class = max(1, math.floor(exact + 0.5))
    notes = []
    if exact < 1:
        notes.append(
            f"{fraction_name(fraction)}: {fraction:g} of {len(labels)} labels is fewer than one per class; "
            f"used one per class ({len(classes)} labels)"
        )
    if counts.min() < per_class:
        notes.append(
            f"{fraction_name(fraction)}: class {classes[counts.argmin()]} has only {counts.min()} examples "
            f"(wanted {per_class} per class); all of them were used"
        )
    return balanced_subset(labels, per_class, seed), "; ".join(notes) or None


def knn_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    k: int = 200, temperature: float = 0.1, batch_size: int = 1024,
) -> float:
    """Weighted kNN (Wu et al. 2018): cosine similarity, the k nearest training features vote
    with weight exp(sim / temperature)."""
    train_x = F.normalize(train_x.float(), dim=1)
    k = min(k, len(train_x))
    n_classes = int(train_y.max()) + 1
    correct = 0
    for start in range(0, len(test_x), batch_size):
        q = F.normalize(test_x[start : start + batch_size].float(), dim=1)
        sim, idx = (q @ train_x.T).topk(k, dim=1)  # (b, k)
        votes = torch.zeros(len(q), n_classes)
        votes.scatter_add_(1, train_y[idx], torch.exp(sim / temperature))
        correct += int((votes.argmax(1) == test_y[start : start + batch_size]).sum())
    return correct / len(test_x)


def raw_pixels(images: torch.Tensor) -> torch.Tensor:
    return images.float().flatten(1) / 255


def feature_metrics(
    xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
    subsets: dict[str, np.ndarray], k: int, seed: int,
) -> dict[str, float]:
    """The frozen-feature metrics: linear probe on all labels, weighted kNN, and a linear probe
    on each labelled subset (the mean over its draws where it has several rows)."""
    row = {
        "linear": linear_probe(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), seed),
        "knn": knn_accuracy(xtr, ytr, xte, yte, k=k),
    }
    for metric, index in subsets.items():
        row[metric] = over_draws(index, lambda i: linear_probe(xtr[i].numpy(), ytr[i].numpy(), xte.numpy(),
                                                               yte.numpy(), seed))
    return row


class BaselineSkipped(Exception):
    """A baseline that cannot run on this machine: its row stays empty (NaN) and the message
    goes into eval.json's notes."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: skipped, {reason}")
        self.name = name


# The raw-pixel baseline holds every training and test pixel as float32: above this share of the
# machine's memory it is skipped (with a note) rather than end a long run out of memory.
RAW_PIXELS_MEMORY_SHARE = 0.25


def physical_memory() -> int | None:
    """The machine's RAM in bytes, where the OS says (Linux, macOS)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def raw_pixels_baseline(
    train: Any, test: Any, subsets: dict[str, np.ndarray], k: int, seed: int
) -> tuple[str, dict[str, float]]:
    """The image baseline: the frozen-feature metrics on the raw pixels."""
    assert train.labels is not None and test.labels is not None
    need = 4 * (math.prod(train.inputs.shape) + math.prod(test.inputs.shape))
    ram = physical_memory()
    if ram is not None and need > RAW_PIXELS_MEMORY_SHARE * ram:
        raise BaselineSkipped("raw_pixels", f"its float32 pixels would take {need / 2**30:.1f} GiB, more than "
                              f"{RAW_PIXELS_MEMORY_SHARE:.0%} of this machine's {ram / 2**30:.1f} GiB")
    ytr, yte = train.labels.long().cpu(), test.labels.long().cpu()
    return "raw_pixels", feature_metrics(raw_pixels(train.inputs), ytr, raw_pixels(test.inputs), yte, subsets, k, seed)


def knn_monitor(
    encoder: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
    test_images: torch.Tensor, test_labels: torch.Tensor, device: torch.device | str = "cpu",
    k: int = 200, temperature: float = 0.1, batch_size: int = 512,
) -> float:
    """Weighted kNN accuracy of h = f(x) (the cheap monitor of the SimCLR/InstDisc literature),
    for calling during training: eval mode and `no_grad` for the extraction, then the
    encoder's mode is restored; no parameter or buffer changes. Under torchrun every rank
    calls it and encodes its share of the images; all get the same accuracy."""
    train_x = extract_features_sharded(encoder, train_images, batch_size, device)
    test_x = extract_features_sharded(encoder, test_images, batch_size, device)
    return knn_accuracy(train_x, train_labels.cpu(), test_x, test_labels.cpu(), k=k, temperature=temperature)


def seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    """`make()` under a fixed seed, without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def evaluate_suite(
    encoder: nn.Module, make_random_encoder: Callable[[], nn.Module], train_data: Any,
    test_data: Any, device: torch.device | str = "cpu", seed: int = 0, few_shot: int = 5,
    knn_k: int = 200, fractions: Sequence[float] = (0.01, 0.1), finetune: bool = True,
    finetune_settings: FinetuneSettings | None = None, batch_size: int = 512,
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    baseline: Callable[..., tuple[str, dict[str, float]]] = raw_pixels_baseline,
    finetune_from: Mapping[str, nn.Module] | None = None,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The full evaluation of one trained encoder; returns results and notes.

    results[encoder][metric] is a test accuracy in [0, 1], for the encoders `simclr` (the
    trained, frozen encoder), `random_init` (same architecture, seeded random weights),
    the modality's `baseline` (`raw_pixels` for images; it may add metrics of its own) and
    `supervised` (the same architecture trained from scratch on the labelled fractions).
    Metrics, all on features extracted once from `train_data` and `test_data`:
    `linear` (logistic regression on all training labels), `knn` (weighted, cosine, k ≤ knn_k,
    temperature 0.1), `few_shot_<n>` (linear probe on n labels per class, the mean of
    FEW_SHOT_DRAWS seeded draws), `linear_<p>pct` and
    `finetune_<p>pct` for each fraction p (class-balanced and seeded; fine-tuning trains a copy
    of the whole encoder plus a linear head, SimCLR paper section 6). A metric that does not
    apply is NaN: fine-tuning for `random_init` (that network is `supervised`) and
    `raw_pixels`, and every frozen-feature metric for `supervised`. `notes` say where the
    protocol had to bend (k lowered, a fraction raised to one label per class).

    `features` may hold the (train, test) features of `simclr` and `random_init` already
    extracted, e.g. by every rank of a process group (`frozen_features`); `random_init` must
    then come from `seeded(make_random_encoder, seed)`, as here.
    `finetune_from` names the networks fine-tuning starts from, by layer: "h" is `encoder`
    (metrics `finetune_<p>pct`); any other name, such as "head1" for the encoder plus the first
    layer of its projection head (SimCLRv2), gives metrics `finetune_<name>_<p>pct`. Default:
    h only. The `supervised` baseline always starts from h.
    """
    if train_data.labels is None or test_data.labels is None:
        raise UserError("evaluation needs labels for both the training and the test data")
    ytr, yte = train_data.labels.long().cpu(), test_data.labels.long().cpu()
    notes: list[str] = []
    k = min(knn_k, len(ytr))
    if k < knn_k:
        notes.append(f"knn: k lowered from {knn_k} to {k}, the number of training examples")
    subsets: dict[str, np.ndarray] = {f"few_shot_{few_shot}": few_shot_draws(ytr.numpy(), few_shot, seed)}
    for fraction in fractions:
        subsets[f"linear_{fraction_name(fraction)}"], note = fraction_subset(ytr.numpy(), fraction, seed)
        if note:
            notes.append(note)
    tune = finetune_settings or FinetuneSettings()
    starts = dict(finetune_from) if finetune_from is not None else {"h": encoder}
    finetune_names = [finetune_metric(layer, f) for f in fractions for layer in dict.fromkeys(["h", *starts])]
    nan_row = dict.fromkeys(["linear", "knn", *subsets, *finetune_names], math.nan)  # metric order

    random_encoder = seeded(make_random_encoder, seed).to(device)
    if features is None:
        features = frozen_features({"simclr": encoder, "random_init": random_encoder},
                                   train_data.inputs, test_data.inputs, batch_size, device)

    results: dict[str, dict[str, float]] = {}
    for name in ("simclr", "random_init"):
        xtr, xte = features[name]
        log.info("evaluating %s: linear probe, kNN, label fractions", name)
        results[name] = {**nan_row, **feature_metrics(xtr, ytr, xte, yte, subsets, k, seed)}
    try:
        name, row = baseline(train_data, test_data, subsets, k, seed)
        log.info("evaluated the %s baseline", name)
        results[name] = {**nan_row, **row}
    except BaselineSkipped as e:  # the other rows stand; the note says why this one is empty
        results[e.name] = dict(nan_row)
        notes.append(str(e))
        log.warning("%s", e)
    results["supervised"] = dict(nan_row)
    for fraction in fractions if finetune else ():
        labelled = torch.as_tensor(subsets[f"linear_{fraction_name(fraction)}"])
        runs = [("simclr", layer, init) for layer, init in starts.items()] + [("supervised", "h", random_encoder)]
        for name, layer, init in runs:
            metric = finetune_metric(layer, fraction)
            log.info("fine-tuning %s on %d labels (%s)", name, len(labelled), metric)
            results[name][metric] = finetune_accuracy(
                init, train_data.inputs[labelled], ytr[labelled], test_data.inputs, yte, device, seed, tune,
            )
    metrics = list(dict.fromkeys(m for row in results.values() for m in row))  # a baseline's own metrics too
    return {name: {m: row.get(m, math.nan) for m in metrics} for name, row in results.items()}, notes


def frozen_features(
    encoders: dict[str, nn.Module], train_inputs: torch.Tensor, test_inputs: torch.Tensor,
    batch_size: int = 512, device: torch.device | str = "cpu",
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(train, test) features of each named encoder; under a process group every rank must call
    it, encodes its share, and gets all the features."""
    return {
        name: (extract_features_sharded(f, train_inputs, batch_size, device),
               extract_features_sharded(f, test_inputs, batch_size, device))
        for name, f in encoders.items()
    }


def save_eval(path: Path, results: dict[str, dict[str, float]], notes: Sequence[str] = ()) -> None:
    """eval.json: one object per encoder (metric → accuracy, NaN written as null) and a
    `notes` list."""
    clean = {name: {m: None if math.isnan(v) else v for m, v in row.items()} for name, row in results.items()}
    path.write_text(json.dumps({**clean, "notes": list(notes)}, indent=2) + "\n")


def load_eval(path: Path) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Read eval.json back: results (null as NaN) and notes (empty if the file has none)."""
    raw: dict[str, Any] = json.loads(path.read_text())
    notes = [str(n) for n in raw.pop("notes", [])]
    results = {
        name: {m: math.nan if v is None else float(v) for m, v in row.items()}
        for name, row in raw.items() if isinstance(row, dict)
    }
    return results, notes
