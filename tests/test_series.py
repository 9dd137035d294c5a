"""Time series: readers, resampling, augmentation (shapes, per-sample randomness, seeds),
encoders, the 1-NN baseline, modality detection, and one end-to-end CLI run on real data."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_DEVICE
from safetensors.torch import load_file
from sklearn.neighbors import KNeighborsClassifier

from simclr.cli import main
from simclr.data.columns import LABEL_COLUMNS
from simclr.errors import UserError
from simclr.modality import detect
from simclr.series import SeriesAugment, build_series_encoder, load_series, nearest_neighbour_accuracy
from simclr.series.data import read_csv, read_ts, resample
from simclr.text.data import read_texts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ucr_uea_ts"

TS_HEADER = "# a comment\n@problemName Toy\n@timeStamps false\n@univariate {uni}\n@classLabel true a b\n@data\n"


def write_ts(path: Path, rows: list[str], univariate: bool = True) -> Path:
    path.write_text(TS_HEADER.format(uni=str(univariate).lower()) + "\n".join(rows) + "\n")
    return path


def test_read_ts_multivariate_unequal_missing(tmp_path: Path) -> None:
    path = write_ts(tmp_path / "x.ts", ["1,2,3,4:5,6,7,8:a", "1,?,3:0,0,0:b", "2,4,6,8,10,12:1,1,1,1,1,1:a"], False)
    series, labels = read_ts(path)
    assert labels == ["a", "b", "a"] and [s.shape for s in series] == [(2, 4), (2, 3), (2, 6)]
    x = resample(series, 6)  # unequal lengths: every series resampled to the longest
    assert x.shape == (3, 2, 6) and x.dtype == np.float32
    assert np.allclose(x[1, 0], np.linspace(1, 3, 6))  # "?" interpolated, then stretched
    assert np.allclose(x[0, 0], np.linspace(1, 4, 6))


def test_folder_pair_shares_classes_in_numeric_order(tmp_path: Path) -> None:
    write_ts(tmp_path / "Toy_TRAIN.ts", ["1,2,3:10", "3,2,1:2", "1,1,1:10"])
    write_ts(tmp_path / "Toy_TEST.ts", ["1,2,3,4,5:2"])
    assert detect(str(tmp_path)) == "series"
    data, test = load_series(str(tmp_path))
    assert test is not None and data.classes == ["2", "10"] and data.inputs.shape == (3, 1, 5)
    assert data.labels is not None and data.labels.tolist() == [1, 0, 1]
    assert test.labels is not None and test.labels.tolist() == [0]


def test_npz_and_csv_sources(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", x_train=rng.normal(size=(4, 3, 9)), y_train=[0, 1, 0, 1],
             x_test=rng.normal(size=(2, 3, 9)), y_test=[1, 0])
    data, test = load_series(str(tmp_path / "s.npz"))
    assert data.inputs.shape == (4, 3, 9) and test is not None and test.inputs.shape == (2, 3, 9)
    (tmp_path / "wide.csv").write_text("label,v1,v2,v3\ncat,1,2,3\ndog,3,2,1\n")
    assert detect(str(tmp_path / "wide.csv")) == "series"
    series, labels = read_csv(tmp_path / "wide.csv", None)
    assert labels == ["cat", "dog"] and series[0].tolist() == [[1, 2, 3]]
    (tmp_path / "long.csv").write_text("id,time,x,y,label\n1,1,5,6,u\n1,0,1,2,u\n2,0,0,0,v\n2,1,1,1,v\n2,2,2,2,v\n")
    series, labels = read_csv(tmp_path / "long.csv", None)
    assert labels == ["u", "v"] and series[0].tolist() == [[1, 5], [2, 6]]  # sorted by time, (C, T)
    assert series[1].shape == (2, 3)


@pytest.mark.parametrize("column", [*LABEL_COLUMNS, "Category"])
def test_series_and_text_find_the_same_label_columns(tmp_path: Path, column: str) -> None:
    """One list of label-column names for every modality: a labelled CSV keeps its labels
    whether it is read as series or as text."""
    (tmp_path / "s.csv").write_text(f"{column},v1,v2,v3\ncat,1,2,3\ndog,3,2,1\n")
    assert read_csv(tmp_path / "s.csv", None)[1] == ["cat", "dog"]
    (tmp_path / "t.csv").write_text(f"text,{column}\na cat sat,cat\na dog ran,dog\n")
    assert read_texts(tmp_path / "t.csv") == (["a cat sat", "a dog ran"], ["cat", "dog"])
    with pytest.raises(UserError, match=r"s\.csv: no column 'kind' \(series\.label_column\); columns: "):
        read_csv(tmp_path / "s.csv", "kind")


@pytest.mark.parametrize(("content", "message"), [
    ("@data\n1,x,3:a\n", "not a number"),
    ("1,2,3\n", "no @data"),
])
def test_bad_ts_is_one_line_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "bad.ts").write_text("@classLabel true a\n" + content if "@data" in content else content)
    with pytest.raises(UserError, match=message) as e:
        load_series(str(tmp_path / "bad.ts"))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        load_series(str(tmp_path / "missing.ts"))


def test_detect() -> None:
    assert detect("x.ts") == "series" and detect("digits") == "image" and detect("notes.txt") == "text"
    assert detect("photos.zip") == "image" and detect("x.jsonl") == "text"


def test_augment_shapes_randomness_and_seeds() -> None:
    x = torch.sin(torch.linspace(0, 6, 50)).repeat(8, 3, 1)  # 8 identical series (8, 3, 50)
    augment = SeriesAugment()
    v = augment(x, torch.Generator().manual_seed(0))
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert not torch.allclose(v[0], v[1])  # every sample draws its own parameters
    assert torch.equal(v, augment(x, torch.Generator().manual_seed(0)))  # seeded: reproducible
    gen = torch.Generator().manual_seed(0)
    assert not torch.allclose(augment(x, gen), augment(x, gen))  # the two views differ
    off = SeriesAugment(crop_min=1.0, jitter=0, scale=0, magnitude_warp=0, time_warp=0, mask_fraction=0)
    assert torch.allclose(off(x, gen), x, atol=1e-5)  # everything off: the identity


def test_crop_is_a_stretched_window_and_mask_uses_the_mean() -> None:
    x = torch.arange(100.0).view(1, 1, 100).repeat(16, 1, 1)
    crop = SeriesAugment(crop_min=0.5, jitter=0, scale=0, magnitude_warp=0, time_warp=0, mask_fraction=0)
    v = crop(x, torch.Generator().manual_seed(1))
    span = v[:, 0, -1] - v[:, 0, 0]
    assert (span >= 49.4).all() and (span <= 99.01).all()  # a window of 50%..100% of the series
    assert (v.diff(dim=2) > 0).all()  # still increasing: no reordering of time
    mask = SeriesAugment(crop_min=1.0, jitter=0, scale=0, magnitude_warp=0, time_warp=0, mask_fraction=0.2,
                         mask_prob=1.0)
    m = mask(x, torch.Generator().manual_seed(2))
    assert ((m - 49.5).abs() < 1e-4).sum(dim=2).min() == 20  # a span of 20 steps at the mean


@pytest.mark.parametrize("name", ["fcn_s4", "fcn", "resnet1d", "gru", "lstm", "transformer"])
def test_encoders(name: str) -> None:
    data = 5 + 3 * torch.randn(6, 2, 40)
    f = build_series_encoder(name, 2, 40, width=16, layers=1, data=data)
    h = f(data)
    assert h.shape == (6, f.out_dim)
    assert torch.allclose(f.norm.mean.flatten(), data.mean((0, 2)), atol=1e-5)  # statistics travel as buffers
    assert "norm.mean" in f.state_dict()


def test_the_segment_encoder_keeps_when_a_pattern_occurs_and_averages_to_the_global_one() -> None:
    """fcn_s4's h is the last map averaged over each quarter of time (channel-major); the mean of the
    quarters is fcn's h with the same weights, and a pattern moved to another quarter changes h."""
    torch.manual_seed(0)
    segments, plain = build_series_encoder("fcn_s4", 2, 40, width=8), build_series_encoder("fcn", 2, 40, width=8)
    plain.load_state_dict(segments.state_dict())
    x = torch.zeros(2, 2, 40)
    x[0, :, 8:14] = 1.0  # the same bump early and late, both out of reach of the edges (receptive field ±6)
    x[1, :, 28:34] = 1.0
    h = segments.eval()(x)
    assert h.shape == (2, 32) and segments.out_dim == 32 and plain.out_dim == 8
    quarters, g = h.view(2, 8, 4), plain.eval()(x)
    assert torch.allclose(quarters.mean(2), g, atol=1e-6)
    assert torch.allclose(g[0], g[1], atol=1e-6)  # global pooling cannot tell early from late
    silent = segments(torch.zeros(1, 2, 40)).view(8, 4)
    assert torch.equal(quarters[1, :, 0], silent[:, 0])  # the late bump is out of the first quarter's reach
    assert not torch.allclose(quarters[0, :, 0], silent[:, 0], atol=1e-4)  # the early one is in it


def test_nearest_neighbour_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(30, 2, 7)), rng.normal(size=(20, 2, 7))
    ytr, yte = rng.integers(0, 3, 30), rng.integers(0, 3, 20)
    ref = KNeighborsClassifier(1).fit(xtr.reshape(30, -1), ytr).score(xte.reshape(20, -1), yte)
    got = nearest_neighbour_accuracy(*(torch.as_tensor(a) for a in (xtr, ytr, xte, yte)))
    assert got == pytest.approx(ref)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`simclr ARGS` in this process (test_cli.py covers the subprocess path): seconds, not tens."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


def test_cli_end_to_end_on_racket_sports(tmp_path: Path) -> None:
    source = SHARED / "RacketSports"
    if not source.is_dir():
        pytest.skip(f"{source} is absent (the shared UCR/UEA data sets)")
    out = tmp_path / "run"
    proc = run("train", "--data", str(source), "--epochs", "1", "--batch-size", "64", "--out", str(out),
               "series.width=16", "data.pretrain_on=all", "threads=1", TEST_DEVICE, "eval_finetune=false",
               "report=false", "eval_knn_k=5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["modality"] == "series" and state["input_shape"] == [6, 30]
    assert state["progress"]["step"] == (151 + 152) // 64  # TRAIN+TEST pretrained on
    results = json.loads((out / "eval.json").read_text())
    assert results["raw_series"]["nn1_euclidean"] == pytest.approx(0.8224, abs=1e-4)  # the archive's figure
    assert run("eval", str(out), "--no-finetune", cwd=tmp_path).returncode == 0
    for part in ("TRAIN", "TEST"):
        proc = run("embed", str(out), "--data", str(source / f"RacketSports_{part}.ts"), "--out",
                   str(tmp_path / f"{part}.npz"), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    train, test = np.load(tmp_path / "TRAIN.npz"), np.load(tmp_path / "TEST.npz")
    assert train["embeddings"].shape == (151, 64) and test["embeddings"].shape == (152, 64)  # fcn_s4: 4 × 16
    # The evaluation's kNN (k = 5, votes exp(cosine / 0.1)) is scikit-learn's on what `simclr
    # embed` gives for the two files: the probe is fit on TRAIN and scored on TEST, with the
    # trained encoder, as embed applies it to raw series.
    knn = KNeighborsClassifier(5, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.1))
    expected = knn.fit(train["embeddings"], train["labels"]).score(test["embeddings"], test["labels"])
    assert results["simclr"]["knn"] == pytest.approx(expected, abs=1.01 / 152)
    assert run("report", str(out), cwd=tmp_path).returncode == 0
    assert (out / "augmentations.png").stat().st_size > 0
    assert run("export", str(out), "--format", "safetensors", cwd=tmp_path).returncode == 0
    proc = run("export", str(out), "--format", "onnx", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "safetensors" in proc.stderr


# The recurrent encoders, pretrained briefly on Libras (15 hand-movement classes, 2 channels of
# 45 steps; 180 TRAIN + 180 TEST series, pretrained on all 360): 40 epochs of 5 steps at batch 64,
# a 1-layer bidirectional GRU or LSTM of width 32. Measured 2026-12-06 on a 2-core AMD EPYC CPU
# (7-9 s a run), seeds 0-4, kNN (k = 5) SimCLR minus random_init on the fixed TEST set:
#     gru   +0.122 +0.117 +0.100 +0.094 +0.094   random_init 0.178-0.206 (std 0.011)
#     lstm  +0.139 +0.167 +0.172 +0.133 +0.167   random_init 0.200-0.228 (std 0.011)
# The margin, 0.05, is over four standard deviations of the random-init spread (its range is
# 0.028) and about half the smallest gap. A run that learns nothing (optim.lr=1e-9) scores exactly
# random_init's kNN: these encoders have no BatchNorm statistics to drift, and random_init is the
# network training started from. (Chance is 1/15; 1-NN Euclidean on the raw series 0.828.)
RECURRENT_MARGIN = 0.05


@pytest.mark.parametrize("encoder", ["gru", "lstm"])
def test_recurrent_encoders_learn_on_libras(tmp_path: Path, encoder: str) -> None:
    source = SHARED / "Libras"
    if not source.is_dir():
        pytest.skip(f"{source} is absent (the shared UCR/UEA data sets)")
    out = tmp_path / "run"
    proc = run("train", "--data", str(source), "--epochs", "40", "--batch-size", "64", "--out", str(out),
               f"series.encoder={encoder}", "series.width=32", "series.layers=1", "optim.lr_scaling=sqrt",
               "optim.lr=0.075", "temperature=0.2", "data.pretrain_on=all", "eval_knn_k=5", "eval_every=0",
               "threads=1", "device=cpu", "eval_finetune=false", "report=false", "seed=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["progress"]["step"] == 40 * (360 // 64)
    assert any(k.startswith("body.") for k in load_file(out / "encoder.safetensors"))  # the recurrent encoder
    results = json.loads((out / "eval.json").read_text())
    gap = results["simclr"]["knn"] - results["random_init"]["knn"]
    assert gap > RECURRENT_MARGIN, (results["simclr"]["knn"], results["random_init"]["knn"])


def test_finetune_takes_series_and_token_ids() -> None:
    """Fine-tuning (the semi-supervised rows) feeds non-image inputs as they are, no image crops,
    and fits them: two separable classes of 4 each (a sine and its negative; token ids below and
    above 15), scored on the same inputs, reach 1.0, where the untrained classifier (its head
    starts at zero, so it says class 0) scores 0.5."""
    from simclr.finetune import FinetuneSettings, finetune_accuracy
    from simclr.text import build_text_encoder

    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 4)
    sign = (1 - 2 * y).view(-1, 1, 1).float()
    x = sign * torch.sin(torch.linspace(0, 6, 20)).repeat(8, 2, 1) + 0.3 * torch.randn(8, 2, 20, generator=gen)
    series = FinetuneSettings(epochs=1, min_steps=40, batch_size=4)
    assert finetune_accuracy(build_series_encoder("fcn", 2, 20, width=8), x, y, x, y, settings=series) == 1.0
    ids = torch.where(y.view(-1, 1) == 0, torch.randint(3, 15, (8, 6), generator=gen),
                      torch.randint(15, 30, (8, 6), generator=gen))
    text = FinetuneSettings(epochs=1, min_steps=20, batch_size=4, lr=1.0)  # a GRU from scratch: a high rate
    assert finetune_accuracy(build_text_encoder("gru", 30, 6, width=8), ids, y, ids, y, settings=text) == 1.0
