"""Paired image + caption training: retrieval and zero-shot math, prompt sampling, manifests,
the learned temperature in the training step, and the CLI end to end."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_DEVICE
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from simclr.cli import main
from simclr.config import load_config
from simclr.errors import UserError
from simclr.modality import detect
from simclr.model import ProjectionHead, build_encoder
from simclr.paired.data import load_pairs
from simclr.paired.evaluate import caption_groups, retrieval_recall, zero_shot_accuracy
from simclr.paired.model import PairedObjective
from simclr.training import update

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def run(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 real scikit-learn digits as 8 px PNGs in class folders "zero".."nine"."""
    root = tmp_path_factory.mktemp("pairs") / "digits"
    d = load_digits()
    for i, (image, y) in enumerate(zip(d.images[:200], d.target[:200], strict=True)):
        folder = root / NAMES[y]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 16).clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def manifest(folder: Path, digits: Path, n: int = 60, suffix: str = ".csv", broken: int = 0) -> Path:
    """A manifest of `n` digit images (paths relative to it) with captions, plus `broken` rows
    whose image file is not an image."""
    files = sorted(digits.rglob("*.png"))[:n]
    rows = [(os.path.relpath(f, folder), f"a handwritten {f.parent.name}", f.parent.name) for f in files]
    for k in range(broken):
        (folder / f"bad{k}.png").write_bytes(b"not an image")
        rows.append((f"bad{k}.png", "a broken file", "zero"))
    path = folder / f"pairs{suffix}"
    if suffix == ".csv":
        path.write_text("image,caption,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    else:
        path.write_text("".join(json.dumps({"image": a, "text": b}) + "\n" for a, b, _ in rows))
    return path


def check_recall_grows_with_k(row: dict[str, float], directions: tuple[str, ...]) -> None:
    """Recall@k of a run's eval.json row can only grow with k: a hit in the top 1 is one in the top 5."""
    for d in directions:
        assert row[f"{d}_r1"] <= row[f"{d}_r5"] <= row[f"{d}_r10"], (d, row)


def test_retrieval_recall_on_hand_built_embeddings() -> None:
    image = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]]  # the captions of pairs 2 and 3 are swapped
    r = retrieval_recall(image, text, ks=(1, 2))
    assert r == {"i2t_r1": 0.5, "i2t_r2": 1.0, "t2i_r1": 0.5, "t2i_r2": 1.0}
    # Pairs 2 and 3 with one caption text: each is the other's partner.
    assert retrieval_recall(image, text, torch.tensor([0, 1, 2, 2]), ks=(1,))["i2t_r1"] == 1.0


def test_retrieval_recall_matches_a_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    image, text = torch.randn(40, 6, generator=gen), torch.randn(40, 6, generator=gen)
    groups = torch.randint(0, 30, (40,), generator=gen)
    got = retrieval_recall(image, text, groups, ks=(1, 5, 10), batch_size=7)
    a, b = torch.nn.functional.normalize(image, dim=1), torch.nn.functional.normalize(text, dim=1)
    for name, sim in (("i2t", a @ b.T), ("t2i", b @ a.T)):
        for k in (1, 5, 10):
            hits = sum(any(groups[j] == groups[i] for j in sim[i].argsort(descending=True)[:k]) for i in range(40))
            assert got[f"{name}_r{k}"] == pytest.approx(hits / 40)


def test_zero_shot_on_separable_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(30) % 3
    class_z = torch.eye(3)
    image_z = 5 * class_z[labels] + 0.1 * torch.randn(30, 3, generator=gen)
    assert zero_shot_accuracy(image_z, class_z, labels) == 1.0
    image_z[:6] = class_z[(labels[:6] + 1) % 3]  # 6 of 30 point at the wrong class
    assert zero_shot_accuracy(image_z, class_z, labels) == pytest.approx(0.8)
    assert caption_groups(["a", "b", "a"]).tolist() == [0, 1, 0]


class Recorder(torch.nn.Module):
    """A stand-in network that keeps the token ids it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append(ids.clone())
        return images.flatten(1)[:, :4] * self.scale, ids[:, :4].float() * self.scale


def test_prompt_templates_are_drawn_per_sample_seeded_and_varied() -> None:
    n, templates = 64, 8
    captions = (torch.arange(templates) + 3).view(1, templates, 1).expand(n, templates, 4).clone()  # id = template + 3
    model = Recorder()
    model.temperature = lambda: torch.tensor(0.1)  # type: ignore[assignment]
    objective = PairedObjective(model, lambda x, gen: x.float(), captions)  # type: ignore[arg-type]
    x, rows = torch.rand(n, 1, 4, 4), torch.arange(n)

    def draws(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        model.seen.clear()
        for _ in range(2):
            objective(model, x, rows, gen)
        return [s[:, 0] - 3 for s in model.seen]

    first, second = draws(0)
    assert set(first.tolist()) == set(range(templates))  # every template in one batch of 64
    assert not torch.equal(first, second)  # a new draw at every step
    assert all(torch.equal(a, b) for a, b in zip(draws(0), [first, second], strict=True))  # seeded


def test_learned_temperature_gets_gradients_and_stays_clamped(digits_folder: Path) -> None:
    from simclr.paired import MODALITY, build_paired_model

    cfg = load_config(None, ["data.modality=paired", "text.width=8", "paired.temperature=0.02",
                             "paired.min_temperature=0.01"])
    data, _ = load_pairs(str(digits_folder), cfg)
    model = build_paired_model(cfg, [1, 8, 8], data.second_shape, data)
    objective = MODALITY.objective(cfg, model, data, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    gen, rows = torch.Generator().manual_seed(0), torch.arange(32)
    log_inverse = model.temperature.log_inverse
    loss = objective(model, data.inputs[rows], rows, gen)
    loss.backward()  # type: ignore[no-untyped-call]
    assert log_inverse.grad is not None and torch.isfinite(log_inverse.grad) and log_inverse.grad.abs() > 0
    with torch.no_grad():
        log_inverse.fill_(math.log(1 / 0.001))  # past the clamp: tau stays at its minimum
    assert model.temperature().item() == pytest.approx(0.01)
    assert torch.isfinite(objective(model, data.inputs[rows], rows, gen))
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    update(optimizer, objective(model, data.inputs[rows], rows, gen))  # the loop's own update
    # Past the clamp no gradient reaches the temperature, so the step leaves it at its minimum,
    # while the networks' weights moved (to finite values).
    assert log_inverse.grad is not None and log_inverse.grad.item() == 0.0
    assert log_inverse.item() == pytest.approx(math.log(1 / 0.001))
    assert model.temperature().item() == pytest.approx(0.01)
    moved = [k for k, v in model.named_parameters() if not torch.equal(v, weights[k])]
    assert "encoder.features.0.weight" in moved and any(k.startswith("second_encoder.") for k in moved)
    assert all(torch.isfinite(v).all() for v in model.parameters())


def test_csv_and_jsonl_manifests_with_a_broken_image(
    tmp_path: Path, digits_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load_config(None, ["data.modality=paired", f"data.cache_dir={tmp_path / 'cache'}"])
    source = manifest(tmp_path, digits_folder, n=30, broken=2)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        data, _ = load_pairs(str(source), cfg)
    assert len(data) == 30 and data.second.shape[:2] == (30, 1) and data.inputs.dtype == torch.uint8
    assert data.texts[0] == [f"a handwritten {Path(data.ids[0]).parent.name}"]  # type: ignore[index]
    assert data.classes is not None and data.labels is not None
    assert [Path(p).name for p, _ in data.skipped] == ["bad0.png", "bad1.png"]
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "2 files skipped" in warning and "2 of 32 pairs left out" in warning and "bad1.png" in warning
    lines = manifest(tmp_path, digits_folder, n=10, suffix=".jsonl")
    data, _ = load_pairs(str(lines), cfg)
    assert len(data) == 10 and data.labels is None
    assert detect(str(source)) == "paired" and detect(str(lines)) == "paired"


def test_manifest_images_are_decoded_once_and_cached(
    tmp_path: Path, digits_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A captioning manifest names each image once per caption: one decode per distinct file,
    then the cache, until a file changes."""
    files = sorted(digits_folder.rglob("*.png"))[:12]
    rows = [(os.path.relpath(f, tmp_path), f"{word} {f.parent.name}") for f in files for word in ("a", "the")]
    source = tmp_path / "captions.csv"
    source.write_text("image,caption\n" + "".join(f"{a},{b}\n" for a, b in rows))
    cfg = load_config(None, ["data.modality=paired", f"data.cache_dir={tmp_path / 'cache'}"])
    with caplog.at_level(logging.INFO, logger="simclr"):
        first, _ = load_pairs(str(source), cfg)
    assert "decoding 12 images" in caplog.text and len(first) == 24
    assert torch.equal(first.inputs[0], first.inputs[1])  # one file, two captions
    assert first.texts[0] != first.texts[1] and first.ids[0] == first.ids[1]  # type: ignore[index]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simclr"):
        again, _ = load_pairs(str(source), cfg)
    assert "12 images from the cache" in caplog.text and "decoding" not in caplog.text
    assert torch.equal(again.inputs, first.inputs) and again.ids == first.ids
    os.utime(files[0], ns=(1, 1))  # a changed file is decoded again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="simclr"):
        load_pairs(str(source), cfg)
    assert "decoding 12 images" in caplog.text


def test_manifest_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("image,label\na.png,x\n")  # no caption column
    code, err = run("train", "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "r"), "data.modality=paired")
    assert code == 2 and err.strip().count("\n") == 0 and "no text column" in err
    with pytest.raises(UserError, match="two different"):
        load_config(None, ["paired.modalities=[image,image]"])
    with pytest.raises(UserError, match="two different"):
        load_config(None, ["paired.modalities=[image,audio]"])
    with pytest.raises(UserError, match="heldout_fraction"):
        load_config(None, ["paired.heldout_fraction=0"])


def test_cli_class_prompts_train_eval_embed_export(tmp_path: Path, digits_folder: Path) -> None:
    out = tmp_path / "run"
    code, err = run("train", "--data", str(digits_folder), "--epochs", "1", "--batch-size", "32", "--out", str(out),
                    "data.modality=paired", "text.width=16", "threads=1", TEST_DEVICE, "eval_finetune=false",
                    "model.encoder=small_cnn",
                    "report=false", "eval_knn_k=20", f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 0, err[-3000:]
    results = json.loads((out / "eval.json").read_text())
    assert {"paired", "random_init", "raw_pixels"} <= results.keys()
    row = results["paired"]
    assert all(isinstance(row[m], float) for m in ("zero_shot", "i2t_r1", "i2t_r10", "t2i_r5", "linear"))
    check_recall_grows_with_k(row, ("i2t", "t2i"))
    # The text side's probe: every caption names its class, so any text encoder, trained or not,
    # separates the classes: 0.85-1.0 for both rows over repeated runs (they vary from run to run),
    # where probe labels out of step with the captions would score chance, 0.1. A wiring check, not
    # one of learning.
    assert row["text_linear"] > 0.5 and results["random_init"]["text_linear"] > 0.5
    assert run("eval", str(out), "--no-finetune")[0] == 0
    code, err = run("embed", str(out), "--data", str(digits_folder), "--out", str(tmp_path / "e.npz"))
    assert code == 0, err[-2000:]
    e = np.load(tmp_path / "e.npz")
    assert e["image_embeddings"].shape == (200, 256) and e["text_shared"].shape == (200, 128)
    assert np.allclose(np.linalg.norm(e["image_shared"], axis=1), 1, atol=1e-5) and e["texts"][0].startswith("a ")
    code, _ = run("embed", str(out), "--data", str(digits_folder), "--out", str(tmp_path / "t.npz"), "--side", "text")
    assert code == 0 and "image_embeddings" not in np.load(tmp_path / "t.npz")
    assert run("export", str(out), "--format", "safetensors")[0] == 0
    image = build_encoder("small_cnn", 1, 8)
    image.load_state_dict(load_file(out / "encoder.safetensors"), strict=True)  # as an image run's export
    assert load_file(out / "encoder-text.safetensors") and "temperature.log_inverse" in load_file(
        out / "encoder-heads.safetensors")


def test_cli_on_an_unlabelled_csv_manifest(tmp_path: Path, digits_folder: Path) -> None:
    (tmp_path / "m").mkdir()
    rows = [f"{os.path.relpath(f, tmp_path / 'm')},a digit drawn as {f.parent.name}\n"
            for f in sorted(digits_folder.rglob("*.png"))[:80]]
    source = tmp_path / "m" / "pairs.csv"
    source.write_text("path,caption\n" + "".join(rows))
    out = tmp_path / "run"
    code, err = run("train", "--data", str(source), "--epochs", "1", "--batch-size", "16", "--out", str(out),
                    "text.width=16", "threads=1", TEST_DEVICE, "report=false", "paired.learn_temperature=false")
    assert code == 0, err[-3000:]
    results = json.loads((out / "eval.json").read_text())
    assert set(results) == {"paired", "random_init", "notes"} and "zero_shot" not in results["paired"]
    assert "8 held-out pairs" in results["notes"][0]


# Pairs of other modalities: the same core with each side's own data, views and encoder.


@pytest.fixture(scope="module")
def digit_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 real scikit-learn digits as labelled 64-step series (the pixels in reading order),
    one per CSV row, classes named "zero".."nine"."""
    path = tmp_path_factory.mktemp("series") / "digits.csv"
    d = load_digits()
    rows = [",".join(f"{v:g}" for v in x) + f",{NAMES[y]}" for x, y in zip(d.data[:200], d.target[:200], strict=True)]
    path.write_text(",".join(f"p{i}" for i in range(64)) + ",label\n" + "\n".join(rows) + "\n")
    return path


def series_manifest(folder: Path, digits: Path, n: int = 60, broken: int = 0) -> Path:
    """Digit images paired with a series written inline: each image's column sums (ink per
    column), a second view of the same digit in another modality."""
    files = sorted(digits.rglob("*.png"))[:n]
    rows = []
    for f in files:
        profile = np.asarray(Image.open(f), dtype=np.float64).sum(0) / 255
        rows.append(f"{os.path.relpath(f, folder)},{' '.join(f'{v:.3f}' for v in profile)},{f.parent.name}")
    rows += [f"{os.path.relpath(files[k], folder)},1 2 oops,zero" for k in range(broken)]
    path = folder / "image_series.csv"
    path.write_text("image,series,label\n" + "\n".join(rows) + "\n")
    return path


def test_series_written_inline_parse_and_a_bad_one_is_skipped(tmp_path: Path, digits_folder: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from simclr.paired.data import parse_series

    series, kept, skipped = parse_series(["1 2 3", "4,5;6", "x 1", ""], None, None)
    assert kept == [0, 1] and series.shape == (2, 1, 3) and series[1, 0].tolist() == [4, 5, 6]
    assert [r for r, _ in skipped] == ["row 3", "row 4"] and "not a number" in skipped[0][1]
    two, _, _ = parse_series(["0 2|1 1", "0 4|1 1 1"], None, None)  # two channels, resampled to 3 steps
    assert two.shape == (2, 2, 3) and two[0, 0].tolist() == [0, 1, 2]
    with pytest.raises(UserError, match="channels"):
        parse_series(["1 2", "1 2|3 4"], None, None)
    cfg = load_config(None, ["data.modality=paired", "paired.modalities=[image,series]",
                             f"data.cache_dir={tmp_path / 'cache'}"])
    with caplog.at_level(logging.WARNING, logger="simclr"):
        data, _ = load_pairs(str(series_manifest(tmp_path, digits_folder, n=30, broken=2)), cfg)
    assert len(data) == 30 and data.second.shape == (30, 1, 1, 8) and data.modalities == ("image", "series")
    assert data.tokenizer is None and data.texts is None and data.labels is not None
    assert "2 of 32 pairs left out" in caplog.text and "row 31" in caplog.text
    # The column sums of the decoded image are the series of its row (within the 3 decimals written).
    assert torch.allclose(data.inputs[0, 0].double().sum(0) / 255, data.second[0, 0, 0].double(), atol=2e-3)


def test_text_can_be_the_first_side(tmp_path: Path, digits_folder: Path) -> None:
    from simclr.paired import MODALITY, build_paired_model

    cfg = load_config(None, ["data.modality=paired", "paired.modalities=[text,image]", "text.width=8",
                             f"data.cache_dir={tmp_path / 'cache'}"])
    data, _ = load_pairs(str(manifest(tmp_path, digits_folder, n=40)), cfg)
    assert data.inputs.dtype == torch.long and data.second.shape == (40, 1, 1, 8, 8)
    assert data.side_texts(0) == data.first.texts and data.ids[0].endswith(".png")  # type: ignore[index]
    model = build_paired_model(cfg, [int(data.inputs.shape[1])], data.second_shape, data)
    loss = MODALITY.objective(cfg, model, data, torch.device("cpu"))(model, data.inputs[:16], torch.arange(16),
                                                                       torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_checkpoints_from_before_generic_sides_still_load(tmp_path: Path) -> None:
    """Runs saved the second side as text_encoder/text_head and paired.json with text_length."""
    from simclr.paired import read_settings
    from simclr.paired.model import FixedTemperature, PairedModel

    def model() -> PairedModel:
        return PairedModel(torch.nn.Linear(3, 4), ProjectionHead(4, 2), torch.nn.Linear(5, 4), ProjectionHead(4, 2),
                           FixedTemperature(0.1))

    trained = model()
    old = {k.replace("second_", "text_"): v for k, v in trained.state_dict().items()}
    assert any(k.startswith("text_encoder.") for k in old)
    fresh = model()
    fresh.load_state_dict(old, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values(),
                                                 strict=True))
    (tmp_path / "paired.json").write_text(json.dumps({"text_length": 7, "classes": None}))
    settings = read_settings(tmp_path)
    assert settings["modalities"] == ["image", "text"] and settings["second_shape"] == [7]


def test_cli_series_with_class_prompts_train_eval_embed_export(tmp_path: Path, digit_series: Path) -> None:
    out = tmp_path / "run"
    code, err = run("train", "--data", str(digit_series), "--epochs", "2", "--batch-size", "32", "--out", str(out),
                    "data.modality=paired", "paired.modalities=[series,text]", "paired.templates=['a {} digit',"
                    "'the digit {}']", "series.width=16", "text.width=16", "threads=1", TEST_DEVICE,
                    "eval_finetune=false", "report=false", "eval_knn_k=20")
    assert code == 0, err[-3000:]
    results = json.loads((out / "eval.json").read_text())
    assert {"paired", "random_init", "raw_series"} <= results.keys()
    row = results["paired"]
    assert all(isinstance(row[m], float) for m in ("zero_shot", "s2t_r1", "t2s_r5", "linear", "knn"))
    check_recall_grows_with_k(row, ("s2t", "t2s"))
    assert row["text_linear"] > 0.5 and results["random_init"]["text_linear"] > 0.5  # as above; chance 0.1
    code, err = run("embed", str(out), "--data", str(digit_series), "--out", str(tmp_path / "e.npz"))
    assert code == 0, err[-2000:]
    e = np.load(tmp_path / "e.npz")
    assert e["series_embeddings"].shape[0] == 200 and e["text_shared"].shape == (200, 128)
    assert e["texts"][0] in ("a zero digit", "the digit zero") and e["labels"][0] == sorted(NAMES).index("zero")
    code, err = run("embed", str(out), "--data", str(digit_series), "--out", str(tmp_path / "x.npz"), "--side", "image")
    assert code == 2 and "pairs series with text" in err
    assert run("export", str(out), "--format", "safetensors")[0] == 0
    heads = load_file(out / "encoder-heads.safetensors")
    assert load_file(out / "encoder-text.safetensors") and any(k.startswith("series.") for k in heads)
    code, err = run("export", str(out), "--format", "torchvision")
    assert code == 2 and "series encoder" in err


def test_cli_image_series_manifest_end_to_end(tmp_path: Path, digits_folder: Path) -> None:
    source = series_manifest(tmp_path, digits_folder, n=120)
    out = tmp_path / "run"
    code, err = run("train", "--data", str(source), "--epochs", "2", "--batch-size", "32", "--out", str(out),
                    "data.modality=paired", "paired.modalities=[image,series]", "series.width=16", "threads=1",
                    TEST_DEVICE, "eval_finetune=false", "report=false", "eval_knn_k=10",
                    f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 0, err[-3000:]
    results = json.loads((out / "eval.json").read_text())
    assert "zero_shot" not in results["paired"] and "text_linear" not in results["paired"]
    row = results["paired"]
    assert all(isinstance(row[m], float) for m in ("i2s_r1", "s2i_r10", "linear", "series_linear"))
    check_recall_grows_with_k(row, ("i2s", "s2i"))
    assert run("eval", str(out), "--no-finetune")[0] == 0
    code, err = run("embed", str(out), "--data", str(source), "--out", str(tmp_path / "e.npz"), "--side", "series")
    assert code == 0, err[-2000:]
    e = np.load(tmp_path / "e.npz")
    assert e["embeddings"].shape[0] == 120 and "texts" not in e and e["ids"][0].endswith(".png")
