"""Text: readers, the tokenizer, augmentation (padding, per-sample randomness, seeds), encoders
with padding masks and dropout views, the TF-IDF baseline, and one end-to-end CLI run."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_DEVICE

from simclr.cli import main
from simclr.errors import UserError
from simclr.modality import detect
from simclr.text import TextAugment, build_text_encoder, load_text, tfidf_lr
from simclr.text.config import TextConfig
from simclr.text.data import MASK, PAD, read_texts

SMS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sms_spam" / "SMSSpamCollection"
WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "in", "the", "park", "and", "birds",
         "sang", "songs"]


def corpus(n: int = 60, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(n)]


def test_readers(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first text\n\nsecond one\n")
    assert read_texts(tmp_path / "a.txt") == (["first text", "second one"], None)
    (tmp_path / "b.csv").write_text('label,title,description\n3,Oil up,"Prices, again"\n1,Vote,Polls open\n')
    assert detect(str(tmp_path / "b.csv")) == "text"
    assert read_texts(tmp_path / "b.csv") == (["Oil up Prices, again", "Vote Polls open"], ["3", "1"])
    (tmp_path / "c").write_text("ham\tsee you\nspam\tWIN a prize\n")  # headerless label<TAB>text
    assert read_texts(tmp_path / "c") == (["see you", "WIN a prize"], ["ham", "spam"])
    assert detect(str(tmp_path / "c")) == "text"  # no extension: tab-separated UTF-8 text


def test_binary_files_without_an_extension_are_not_text(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02\t\n" + bytes(50))
    (tmp_path / "latin1").write_bytes("caf\xe9\tau lait\n".encode("latin-1"))
    (tmp_path / "notes").write_text("one line without a tab\n")
    (tmp_path / "cut").write_bytes(("a\tb" + "é" * 3000).encode("utf-8")[:4097])  # an é cut by the 4,096-byte read
    assert [detect(str(tmp_path / n)) for n in ("train-images-idx3-ubyte", "latin1", "notes", "cut")] == [
        "image", "image", "image", "text"]
    (tmp_path / "d.jsonl").write_text('{"text": "hello", "label": "x"}\n{"text": "bye", "label": "y"}\n')
    assert read_texts(tmp_path / "d.jsonl") == (["hello", "bye"], ["x", "y"])


def test_bad_text_sources_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (tmp_path / "b.csv").write_text("label,title\n1,x\n")
    for path, kwargs, message in [(tmp_path / "bad.jsonl", {}, "not JSON Lines"),
                                  (tmp_path / "b.csv", {"text_column": "body2"}, "no column"),
                                  (tmp_path / "none.txt", {}, "not found")]:
        with pytest.raises(UserError, match=message) as e:
            read_texts(path, **kwargs)
        assert "\n" not in str(e.value)


def test_tokenizer_and_padding(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("\n".join(corpus()) + "\n" + " ".join(WORDS * 3) + "\n")
    data = load_text(str(tmp_path / "t.txt"), TextConfig(vocab_size=100, max_length=20))
    assert data.inputs.shape == (61, 20) and data.inputs.dtype == torch.long  # the long text is truncated
    lengths = (data.inputs != PAD).sum(1)
    assert (data.inputs[0, lengths[0]:] == PAD).all() and (data.inputs[0, : lengths[0]] != PAD).all()
    assert data.vocab_size <= 100 and data.tokenizer.token_to_id("[MASK]") == MASK


def test_augment_padding_randomness_and_seeds() -> None:
    ids = torch.full((16, 30), PAD)
    ids[:, :20] = torch.arange(10, 30)  # 16 identical texts of 20 tokens
    augment = TextAugment(vocab_size=50)
    v = augment(ids, torch.Generator().manual_seed(0))
    n = (v != PAD).sum(1)
    assert v.shape == ids.shape and (n >= 1).all() and (n <= 20).all()
    assert all((row[k:] == PAD).all() for row, k in zip(v, n.tolist(), strict=True))  # still right-padded
    assert ((v >= 0) & (v < 50)).all()
    assert len({tuple(row.tolist()) for row in v}) > 8  # every text draws its own view
    assert torch.equal(v, augment(ids, torch.Generator().manual_seed(0)))  # seeded
    crop = TextAugment(50, crop_min=0.5, word_dropout=0, mask_prob=0, replace_prob=0)
    c = crop(ids, torch.Generator().manual_seed(1))
    for row in c:  # a contiguous span of at least half the text
        k = int((row != PAD).sum())
        assert k >= 10 and (row[:k].diff() == 1).all()
    empty = torch.zeros(2, 5, dtype=torch.long)
    assert (augment(empty, torch.Generator().manual_seed(0)) == PAD).all()


@pytest.mark.parametrize("name", ["gru", "lstm", "transformer"])
def test_encoders_masks_and_dropout_views(name: str) -> None:
    torch.manual_seed(0)
    f = build_text_encoder(name, 60, 12, width=16, layers=1, dropout=0.2)
    ids = torch.randint(3, 60, (4, 8))
    ids[1, 5:] = PAD
    ids[2, :] = PAD  # an empty text
    f.eval()
    h = f(ids)
    assert h.shape == (4, f.out_dim) and torch.isfinite(h).all()
    longer = torch.cat([ids, torch.full((4, 4), PAD)], 1)  # more padding changes nothing: it is masked
    assert torch.allclose(f(longer), h, atol=1e-5)
    f.train()
    assert not torch.allclose(f(ids[:1]), f(ids[:1]))  # SimCSE: two passes, two dropout masks


def test_tfidf_baseline_learns() -> None:
    texts = ["stocks fell market"] * 10 + ["team won match"] * 10
    y = np.array([0] * 10 + [1] * 10)
    accuracy, predicted = tfidf_lr(texts, y, ["market stocks", "match won"], np.array([0, 1]))
    assert accuracy == 1.0 and predicted.tolist() == [0, 1]


def run(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


def test_cli_end_to_end_on_sms_spam(tmp_path: Path) -> None:
    if not SMS.is_file():
        pytest.skip(f"{SMS} is absent (the shared text data sets)")
    lines = SMS.read_text(encoding="utf-8").splitlines()[:400]  # real texts, a small slice
    source = tmp_path / "sms.tsv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    code, err = run("train", "--data", str(source), "--epochs", "1", "--batch-size", "64", "--out", str(out),
                    "text.encoder=transformer", "text.width=16", "text.vocab_size=500", "text.max_length=32",
                    "threads=1", TEST_DEVICE, "eval_finetune=false", "report=false", "eval_knn_k=20")
    assert code == 0, err[-3000:]
    assert (out / "tokenizer.json").is_file()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["modality"] == "text" and state["input_shape"] == [32]
    results = json.loads((out / "eval.json").read_text())
    assert {"simclr", "random_init", "tfidf_lr"} <= results.keys() and results["tfidf_lr"]["linear"] > 0.85
    assert run("eval", str(out), "--no-finetune")[0] == 0
    (tmp_path / "new.txt").write_text("free prize call now\nsee you at lunch\n")
    code, err = run("embed", str(out), "--data", str(tmp_path / "new.txt"), "--out", str(tmp_path / "h.npz"))
    assert code == 0, err[-2000:]
    assert np.load(tmp_path / "h.npz")["embeddings"].shape == (2, 16)
    assert run("report", str(out))[0] == 0 and (out / "augmentations.png").is_file()
    assert run("export", str(out), "--format", "safetensors")[0] == 0
    code, err = run("export", str(out), "--format", "torchvision")
    assert code == 2 and err.strip().count("\n") == 0 and "safetensors" in err
