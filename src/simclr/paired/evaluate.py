"""Evaluation of a paired model on held-out pairs: retrieval recall@k both ways, zero-shot
classification from class-name prompts when a side is text (CLIP, Radford et al. 2021, section
3.1.4: the text embeddings of the templates averaged per class), the first side's evaluation
suite against a random-init encoder and its modality's baseline (simclr.evaluate), and the
second side's linear probe."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simclr.evaluate import evaluate_suite, extract_features, raw_pixels_baseline, seeded
from simclr.finetune import FinetuneSettings
from simclr.modality import Baseline
from simclr.paired.data import PairedData, class_prompts
from simclr.paired.model import PairedModel
from simclr.probe import linear_probe
from simclr.text.data import encode

log = logging.getLogger("simclr")

RECALL_AT = (1, 5, 10)
# Retrieval metrics are named by the sides' initials: i2t_r1 is image→text recall@1.
INITIAL = {"image": "i", "text": "t", "series": "s", "video": "v"}


def retrieval_recall(
    first_z: torch.Tensor, second_z: torch.Tensor, groups: torch.Tensor | None = None,
    ks: Sequence[int] = RECALL_AT, batch_size: int = 1024, sides: tuple[str, str] = ("i", "t"),
) -> dict[str, float]:
    """Recall@k of cosine retrieval, first→second (`i2t_r<k>` for image + text) and back
    (`t2i_r<k>`): the fraction of pairs whose partner is among the k nearest items of the other
    side. Row i of both is one pair. `groups` (N,) marks pairs with identical captions: any of
    them counts as the partner (class-prompt captions repeat, and identical texts cannot be
    told apart)."""
    a, b = F.normalize(first_z.float(), dim=1), F.normalize(second_z.float(), dim=1)
    x, y = sides
    n = len(a)
    groups = torch.arange(n) if groups is None else groups
    top = min(max(ks), n)
    out: dict[str, float] = {}
    for name, query, gallery in ((f"{x}2{y}", a, b), (f"{y}2{x}", b, a)):
        hits = torch.zeros(len(ks))
        for start in range(0, n, batch_size):
            sim = query[start : start + batch_size] @ gallery.T  # (q, n)
            idx = sim.topk(top, dim=1).indices  # (q, top), nearest first
            right = groups[idx] == groups[start : start + batch_size, None]  # (q, top)
            first = right.cumsum(1) > 0  # a hit at rank <= j
            hits += torch.stack([first[:, min(k, top) - 1].sum() for k in ks]).float()
        out.update({f"{name}_r{k}": float(h) / n for k, h in zip(ks, hits.tolist(), strict=True)})
    return out


def zero_shot_accuracy(z: torch.Tensor, class_z: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of predicting each sample's class as the nearest class embedding (cosine)."""
    sim = F.normalize(z.float(), dim=1) @ F.normalize(class_z.float(), dim=1).T  # (N, K)
    return float((sim.argmax(1) == labels).float().mean())


def class_text_embeddings(
    text_tower: nn.Module, tokenizer: Any, classes: list[str], templates: list[str], length: int,
    max_length: int, device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(K, d): per class, the mean of its normalized prompt embeddings, normalized again."""
    prompts = [p for c in classes for p in class_prompts(c, templates)]
    ids = encode(tokenizer, prompts, length, max_length)  # (K*T, L)
    z = F.normalize(extract_features(text_tower, ids, device=device), dim=1)
    return F.normalize(z.view(len(classes), len(templates), -1).mean(1), dim=1)


def caption_groups(texts: list[str]) -> torch.Tensor:
    """(N,) the index of each caption among the distinct captions."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(t, len(index)) for t in texts], dtype=torch.long)


def cross_modal_metrics(
    model: PairedModel, data: PairedData, templates: list[str], max_length: int, seed: int,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], str]:
    """Retrieval on `data`'s pairs (one seeded second-side candidate each) and, with a text
    side, labels and class names, zero-shot accuracy of the other side; with a note on how many
    texts are distinct."""
    inputs = data.side_inputs(seed)
    z = [extract_features(model.tower(k), inputs[k], device=device) for k in (0, 1)]
    texts = data.side_texts(seed)
    groups = caption_groups(texts) if texts is not None else None
    row = retrieval_recall(z[0], z[1], groups, sides=(INITIAL[data.modalities[0]], INITIAL[data.modalities[1]]))
    if "text" in data.modalities and data.labels is not None and data.classes:
        text_side = data.modalities.index("text")
        length = int(inputs[text_side].shape[1])
        class_z = class_text_embeddings(model.tower(text_side), data.tokenizer, data.classes, templates, length,
                                        max_length, device)
        row["zero_shot"] = zero_shot_accuracy(z[1 - text_side], class_z, data.labels)
    if groups is None:
        return row, f"retrieval over {len(data)} held-out pairs"
    distinct = int(groups.max()) + 1
    note = (f"retrieval over {len(data)} held-out pairs with {distinct} distinct texts"
            + ("; pairs with the same text count as each other's partner" if distinct < len(data) else ""))
    return row, note


def second_probe(model: PairedModel, train: PairedData, test: PairedData, seed: int,
                 device: torch.device | str) -> float:
    """The per-modality probe of the second side: the linear probe (as for the first) on its
    encoder's h of one seeded candidate per pair. With class-prompt captions it is near 1 by
    construction (the caption names the class); with a labelled manifest it measures that side."""
    (xtr, _), (xte, _) = train.fixed_second(seed), test.fixed_second(seed)
    assert train.labels is not None and test.labels is not None
    ftr = extract_features(model.second_encoder, xtr, device=device).numpy()
    fte = extract_features(model.second_encoder, xte, device=device).numpy()
    return linear_probe(ftr, train.labels.numpy(), fte, test.labels.numpy(), seed)


def evaluate_paired(
    model: PairedModel, make_random: Callable[[], PairedModel], train: PairedData, test: PairedData,
    templates: list[str], max_length: int, seed: int, device: torch.device | str = "cpu",
    probe: dict[str, Any] | None = None, baseline: Baseline = raw_pixels_baseline,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Rows `paired` (the trained model) and `random_init` (the same networks, seeded random
    weights) with the cross-modal metrics on `test`; with labels on both sides, also the second
    side's probe (`<modality>_linear`) and the first side's evaluation suite (`evaluate_suite`
    with keyword arguments `probe`: linear probe, kNN, label fractions; the `baseline` row of
    its modality, raw pixels for images, and the supervised rows)."""
    random_model = seeded(make_random, seed).to(device)
    assert isinstance(random_model, PairedModel)
    results: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    labelled = train.labels is not None and test.labels is not None
    for name, m in (("paired", model), ("random_init", random_model)):
        results[name], note = cross_modal_metrics(m, test, templates, max_length, seed, device)
        if labelled:
            results[name][f"{train.modalities[1]}_linear"] = second_probe(m, train, test, seed, device)
    notes.append(note)
    if labelled:
        log.info("evaluating the %s encoder: linear probe, kNN, label fractions", train.modalities[0])
        suite, suite_notes = evaluate_suite(
            model.encoder, lambda: make_random().encoder, train.first, test.first, device, seed,
            baseline=baseline, **(probe or {}),
        )
        suite["paired"] = suite.pop("simclr")
        for name, row in suite.items():
            results[name] = {**row, **results.get(name, {})}
        notes += suite_notes
    metrics = list(dict.fromkeys(m for row in results.values() for m in row))
    return {name: {m: row.get(m, math.nan) for m in metrics} for name, row in results.items()}, notes


def probe_settings(cfg: Any) -> dict[str, Any]:
    """`evaluate_suite`'s settings from a run's config."""
    return {"few_shot": cfg.eval_few_shot, "knn_k": cfg.eval_knn_k, "finetune": cfg.eval_finetune,
            "finetune_settings": FinetuneSettings(flip_prob=cfg.augment.flip_prob)}
