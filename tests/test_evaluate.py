"""Frozen-encoder evaluation: exact kNN, seeded class-balanced fractions, the suite's table,
embeddings on disk, and the invariant that evaluation never changes the encoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from simclr.data import ImageData
from simclr.embed import embed_to_file
from simclr.evaluate import (
    ENCODERS,
    balanced_subset,
    evaluate_suite,
    extract_features,
    fraction_subset,
    knn_accuracy,
    knn_monitor,
    load_eval,
    save_eval,
    seeded,
)
from simclr.finetune import FinetuneSettings
from simclr.model import SmallCNN

CHEAP = FinetuneSettings(epochs=1, min_steps=3, batch_size=16)



def toy_images(n_per_class: int = 30, classes: int = 4, size: int = 8, seed: int = 0, bar: int = 250) -> ImageData:
    """Class c is a bright horizontal bar at row 2c (plus noise in 0..59): easy, labelled, uint8."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = torch.randint(0, 60, (len(labels), 1, size, size), generator=gen, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, 0, 2 * c % size] = bar
    return ImageData(images, labels, "toy")


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def used_encoder(train_mode: bool) -> nn.Module:
    """A SmallCNN whose BatchNorm statistics have moved away from their initial values."""
    torch.manual_seed(0)
    f = SmallCNN(1, width=8)
    f.train()
    with torch.no_grad():
        for _ in range(3):
            f(torch.rand(16, 1, 8, 8))
    return f.train(train_mode)


# kNN --------------------------------------------------------------------------------------------


def test_knn_is_exact_on_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(5, 32) * 10  # five orthogonal directions

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(5).repeat(n)
        return centres[y] + 0.5 * torch.randn(len(y), 32, generator=gen), y

    (xtr, ytr), (xte, yte) = sample(20), sample(10)
    assert knn_accuracy(xtr, ytr, xte, yte, k=200) == 1.0  # k above the 100 training points
    assert knn_accuracy(xtr, ytr, xte, yte, k=5) == 1.0
    assert knn_accuracy(xtr, ytr, xte, (yte + 1) % 5, k=5) == 0.0


def test_knn_votes_with_exp_similarity_over_temperature() -> None:
    """One class-1 neighbour at cosine 0.99 against two class-0 neighbours at cosine 0.8.
    Weights exp(sim/τ): τ=0.1 gives e^9.9 ≈ 19930 > 2e^8 ≈ 5962, so class 1 wins although
    the majority (and the plain sum of similarities, 0.99 < 1.6) says class 0; τ=10 makes the
    weights nearly equal (1.10 < 2·1.08), so the majority wins."""

    def at_cosine(c: float, sign: float) -> list[float]:
        return [c, sign * math.sqrt(1 - c * c)]

    train = torch.tensor([at_cosine(0.99, 1), at_cosine(0.8, 1), at_cosine(0.8, -1)])
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[3.0, 0.0]])  # not unit length: cosine similarity normalizes
    assert knn_accuracy(train, labels, query, torch.tensor([1]), k=3, temperature=0.1) == 1.0
    assert knn_accuracy(train, labels, query, torch.tensor([0]), k=3, temperature=10.0) == 1.0
    assert knn_accuracy(train, labels, query, torch.tensor([1]), k=1, temperature=10.0) == 1.0


# Label fractions ----------------------------------------------------------------------------------


def test_fractions_are_class_balanced_and_seeded() -> None:
    labels = np.repeat(np.arange(10), 100)  # 1,000 labels, 10 classes
    np.random.default_rng(0).shuffle(labels)
    for fraction, per_class in ((0.01, 1), (0.1, 10), (0.05, 5)):
        a, note = fraction_subset(labels, fraction, seed=0)
        assert note is None
        assert np.bincount(labels[a]).tolist() == [per_class] * 10
        assert np.array_equal(a, fraction_subset(labels, fraction, seed=0)[0])
        assert not np.array_equal(a, fraction_subset(labels, fraction, seed=1)[0])
    few = balanced_subset(labels, 5, seed=3)
    assert np.bincount(labels[few]).tolist() == [5] * 10


def test_a_fraction_below_one_label_per_class_uses_one_and_says_so() -> None:
    labels = np.repeat(np.arange(10), 45)  # 1% of 450 is 4.5 labels for 10 classes
    subset, note = fraction_subset(labels, 0.01, seed=0)
    assert np.bincount(labels[subset]).tolist() == [1] * 10
    assert note is not None and "one per class" in note


def test_a_class_too_small_for_its_share_is_noted() -> None:
    labels = np.array([0] * 100 + [1] * 100 + [2] * 3)
    subset, note = fraction_subset(labels, 0.1, seed=0)  # 0.1 * 203 / 3 ≈ 7 per class
    assert np.bincount(labels[subset]).tolist() == [7, 7, 3]
    assert note is not None and "class 2" in note


# The suite ----------------------------------------------------------------------------------------


def test_suite_table_and_eval_json(tmp_path: Path) -> None:
    data = toy_images(bar=75)  # a dim bar: the three rows' kNN differ (0.95, 0.967, 1.0)
    train, test = data.subset(np.arange(0, 120, 2)), data.subset(np.arange(1, 120, 2))
    results, notes = evaluate_suite(
        used_encoder(False), lambda: SmallCNN(1, width=8), train, test, seed=0, few_shot=5,
        finetune_settings=CHEAP,
    )
    metrics = ["linear", "knn", "few_shot_5", "linear_1pct", "linear_10pct", "finetune_1pct", "finetune_10pct"]
    assert list(results) == list(ENCODERS)
    for name, row in results.items():
        assert list(row) == metrics
        for metric, value in row.items():
            not_applicable = (
                (name == "supervised" and not metric.startswith("finetune"))
                or (name in ("random_init", "raw_pixels") and metric.startswith("finetune"))
            )
            assert math.isnan(value) is not_applicable, (name, metric)
    assert results["raw_pixels"]["linear"] == 1.0  # the bars are linearly separable in pixels
    # Each row's kNN is of its own features: scikit-learn's weighted kNN (k = 60, all the
    # training examples; votes exp(cosine / 0.1)) on the trained encoder's, the seeded random
    # one's and the pixels', which a row computed from the wrong features or labels would miss.
    assert train.labels is not None and test.labels is not None
    trained, random_init = used_encoder(False), seeded(lambda: SmallCNN(1, width=8), 0)
    features = {
        "simclr": (extract_features(trained, train.images), extract_features(trained, test.images)),
        "random_init": (extract_features(random_init, train.images), extract_features(random_init, test.images)),
        "raw_pixels": (train.images.flatten(1).float() / 255, test.images.flatten(1).float() / 255),
    }
    expected = {}
    for name, (xtr, xte) in features.items():
        knn = KNeighborsClassifier(60, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.1))
        expected[name] = knn.fit(xtr.numpy(), train.labels.numpy()).score(xte.numpy(), test.labels.numpy())
        assert results[name]["knn"] == pytest.approx(expected[name], abs=1e-9), name
    assert len(set(expected.values())) > 1  # the three rows tell their features apart
    assert any("one per class" in n for n in notes)  # 1% of 60 labels, 4 classes
    assert any("k lowered" in n for n in notes)  # 60 training examples < 200

    path = tmp_path / "eval.json"
    save_eval(path, results, notes)
    text = path.read_text()
    assert "NaN" not in text and "null" in text  # strict JSON
    raw = json.loads(text)
    assert set(raw) == {*ENCODERS, "notes"}
    back, back_notes = load_eval(path)
    assert back_notes == notes
    for name in ENCODERS:
        for m in metrics:
            a, b = results[name][m], back[name][m]
            assert (math.isnan(a) and math.isnan(b)) or a == b


def test_suite_without_finetuning_and_without_labels() -> None:
    data = toy_images(n_per_class=10)
    train, test = data.subset(np.arange(0, 40, 2)), data.subset(np.arange(1, 40, 2))
    results, _ = evaluate_suite(SmallCNN(1, width=8), lambda: SmallCNN(1, width=8), train, test, finetune=False)
    assert all(math.isnan(v) for row in results.values() for k, v in row.items() if k.startswith("finetune"))
    unlabelled = ImageData(train.images, None, "unlabelled")
    with pytest.raises(Exception, match="labels"):
        evaluate_suite(SmallCNN(1, width=8), lambda: SmallCNN(1, width=8), unlabelled, test)


@pytest.mark.parametrize("train_mode", [True, False])
def test_evaluation_leaves_the_encoder_bit_identical(train_mode: bool, tmp_path: Path) -> None:
    """Parameters, BatchNorm buffers (running stats, num_batches_tracked), requires_grad,
    gradients and the train/eval mode are exactly as before: suite (with fine-tuning), kNN
    monitor, feature extraction and embedding."""
    f = used_encoder(train_mode)
    before = snapshot(f)
    assert any("running_mean" in k for k in before) and any("num_batches_tracked" in k for k in before)
    data = toy_images(n_per_class=10)
    train, test = data.subset(np.arange(0, 40, 2)), data.subset(np.arange(1, 40, 2))
    assert train.labels is not None and test.labels is not None
    if train_mode:  # the expensive one once
        evaluate_suite(f, lambda: SmallCNN(1, width=8), train, test, finetune_settings=CHEAP)
    knn_monitor(f, train.images, train.labels, test.images, test.labels, k=5)
    extract_features(f, data.images)
    embed_to_file(f, data.images, None, None, tmp_path / "h.npz", batch_size=7, progress=False)
    after = f.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert f.training is train_mode
    assert all(m.training is train_mode for m in f.modules())
    assert all(p.requires_grad and p.grad is None for p in f.parameters())


def test_knn_monitor_matches_knn_on_extracted_features() -> None:
    f = used_encoder(True)
    data = toy_images(n_per_class=10)
    assert data.labels is not None
    tr, te = torch.arange(0, 40, 2), torch.arange(1, 40, 2)
    h = extract_features(f, data.images)
    expected = knn_accuracy(h[tr], data.labels[tr], h[te], data.labels[te], k=7)
    assert knn_monitor(f, data.images[tr], data.labels[tr], data.images[te], data.labels[te], k=7) == expected


# Embeddings ---------------------------------------------------------------------------------------


def test_embedding_file_opens_with_numpy(tmp_path: Path) -> None:
    f = used_encoder(False)
    data = toy_images(n_per_class=5)
    ids = [f"images/{i:03d}.png" for i in range(len(data))]
    out = embed_to_file(f, data.images, ids, data.labels, tmp_path / "sub" / "emb.npz", batch_size=6, progress=False)
    assert out == tmp_path / "sub" / "emb.npz" and not list((tmp_path / "sub").glob(".*tmp"))
    loaded = np.load(out, allow_pickle=False)
    assert set(loaded.files) == {"embeddings", "ids", "labels"}
    assert loaded["embeddings"].shape == (20, f.out_dim) and loaded["embeddings"].dtype == np.float32
    assert loaded["ids"].tolist() == ids
    assert data.labels is not None and loaded["labels"].tolist() == data.labels.tolist()
    assert np.allclose(loaded["embeddings"], extract_features(f, data.images).numpy(), atol=1e-6)

    plain = np.load(embed_to_file(f, data.images, None, None, tmp_path / "plain.npz", progress=False))
    assert plain["ids"].tolist() == [str(i) for i in range(20)]
    assert plain["labels"].tolist() == [-1] * 20 and plain["labels"].dtype == np.int64
    with pytest.raises(ValueError, match="ids"):
        embed_to_file(f, data.images, ["a"], None, tmp_path / "bad.npz", progress=False)


def test_a_raw_pixel_baseline_beyond_memory_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a set whose float32 pixels would not fit, the long run's evaluation still ends: the
    raw_pixels row is empty, a note says why, and the other encoders are evaluated as usual."""
    import simclr.evaluate as ev

    data = toy_images(n_per_class=10)
    train, test = data.subset(np.arange(0, 40, 2)), data.subset(np.arange(1, 40, 2))
    pixels = 4 * 40 * 8 * 8  # float32 bytes of the 40 images
    monkeypatch.setattr(ev, "physical_memory", lambda: 4 * pixels - 1)  # a quarter is one byte short
    results, notes = evaluate_suite(SmallCNN(1, width=8), lambda: SmallCNN(1, width=8), train, test, finetune=False)
    assert all(math.isnan(v) for v in results["raw_pixels"].values())
    assert any(n.startswith("raw_pixels: skipped, its float32 pixels would take") for n in notes)
    assert not math.isnan(results["simclr"]["linear"]) and not math.isnan(results["random_init"]["knn"])
    monkeypatch.setattr(ev, "physical_memory", lambda: 4 * pixels)  # exactly fits: evaluated
    results, _ = evaluate_suite(SmallCNN(1, width=8), lambda: SmallCNN(1, width=8), train, test, finetune=False)
    assert not math.isnan(results["raw_pixels"]["linear"])
