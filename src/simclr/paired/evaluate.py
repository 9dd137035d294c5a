"""Evaluation of a paired model on held-out pairs: retrieval recall@k both ways, zero-shot
classification from class-name prompts (CLIP, Radford et al. 2021, section 3.1.4: the text
embeddings of the templates averaged per class), and the image encoder's linear probe against
a random-init encoder and raw pixels (simclr.evaluate)."""

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
from simclr.paired.data import PairedData, class_prompts
from simclr.paired.model import PairedModel
from simclr.probe import linear_probe
from simclr.text.data import encode

log = logging.getLogger("simclr")

RECALL_AT = (1, 5, 10)


def retrieval_recall(
    image_z: torch.Tensor, text_z: torch.Tensor, groups: torch.Tensor | None = None,
    ks: Sequence[int] = RECALL_AT, batch_size: int = 1024,
) -> dict[str, float]:
    """Recall@k of cosine retrieval, image→text (`i2t_r<k>`) and text→image (`t2i_r<k>`): the
    fraction of pairs whose partner is among the k nearest items of the other side. Row i of
    both is one pair. `groups` (N,) marks pairs with identical captions: any of them counts as
    the partner (class-prompt captions repeat, and identical texts cannot be told apart)."""
    a, b = F.normalize(image_z.float(), dim=1), F.normalize(text_z.float(), dim=1)
    n = len(a)
    groups = torch.arange(n) if groups is None else groups
    top = min(max(ks), n)
    out: dict[str, float] = {}
    for name, query, gallery in (("i2t", a, b), ("t2i", b, a)):
        hits = torch.zeros(len(ks))
        for start in range(0, n, batch_size):
            sim = query[start : start + batch_size] @ gallery.T  # (q, n)
            idx = sim.topk(top, dim=1).indices  # (q, top), nearest first
            right = groups[idx] == groups[start : start + batch_size, None]  # (q, top)
            first = right.cumsum(1) > 0  # a hit at rank <= j
            hits += torch.stack([first[:, min(k, top) - 1].sum() for k in ks]).float()
        out.update({f"{name}_r{k}": float(h) / n for k, h in zip(ks, hits.tolist(), strict=True)})
    return out


def zero_shot_accuracy(image_z: torch.Tensor, class_z: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of predicting each image's class as the nearest class embedding (cosine)."""
    sim = F.normalize(image_z.float(), dim=1) @ F.normalize(class_z.float(), dim=1).T  # (N, K)
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
    """Retrieval on `data`'s pairs (one seeded caption each) and, with labels and class names,
    zero-shot accuracy; with a note on how many captions are distinct."""
    ids, texts = data.fixed_captions(seed)
    image_z = extract_features(model.image_tower(), data.images, device=device)
    text_z = extract_features(model.text_tower(), ids, device=device)
    groups = caption_groups(texts)
    row = retrieval_recall(image_z, text_z, groups)
    if data.labels is not None and data.classes:
        class_z = class_text_embeddings(model.text_tower(), data.tokenizer, data.classes, templates,
                                        data.text_length, max_length, device)
        row["zero_shot"] = zero_shot_accuracy(image_z, class_z, data.labels)
    distinct = int(groups.max()) + 1
    note = (f"retrieval over {len(data)} held-out pairs with {distinct} distinct captions"
            + ("; pairs with the same caption count as each other's partner" if distinct < len(data) else ""))
    return row, note


def text_probe(model: PairedModel, train: PairedData, test: PairedData, seed: int, device: torch.device | str) -> float:
    """The per-modality probe of the text side: the linear probe (as for images) on the text
    encoder's h of one seeded caption per pair. With class-prompt captions it is near 1 by
    construction (the caption names the class); with a labelled manifest it measures the text."""
    (train_ids, _), (test_ids, _) = train.fixed_captions(seed), test.fixed_captions(seed)
    assert train.labels is not None and test.labels is not None
    xtr = extract_features(model.text_encoder, train_ids, device=device).numpy()
    xte = extract_features(model.text_encoder, test_ids, device=device).numpy()
    return linear_probe(xtr, train.labels.numpy(), xte, test.labels.numpy(), seed)


def evaluate_paired(
    model: PairedModel, make_random: Callable[[], PairedModel], train: PairedData, test: PairedData,
    templates: list[str], max_length: int, seed: int, device: torch.device | str = "cpu",
    probe: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Rows `paired` (the trained model) and `random_init` (the same networks, seeded random
    weights) with the cross-modal metrics on `test`; with labels on both sides, also the image
    encoder's evaluation suite (`evaluate_suite` with keyword arguments `probe`: linear probe,
    kNN, label fractions; raw pixels and supervised rows)."""
    random_model = seeded(make_random, seed).to(device)
    assert isinstance(random_model, PairedModel)
    results: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for name, m in (("paired", model), ("random_init", random_model)):
        results[name], note = cross_modal_metrics(m, test, templates, max_length, seed, device)
        if train.labels is not None and test.labels is not None:  # the text side's own probe
            results[name]["text_linear"] = text_probe(m, train, test, seed, device)
    notes.append(note)
    if train.labels is not None and test.labels is not None:
        log.info("evaluating the image encoder: linear probe, kNN, label fractions")
        suite, suite_notes = evaluate_suite(
            model.encoder, lambda: make_random().encoder, train, test, device, seed,
            baseline=raw_pixels_baseline, **(probe or {}),
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
