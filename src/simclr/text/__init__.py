"""The text modality: a WordPiece tokenizer learned on the user's corpus, span / token-dropout /
masking augmentations plus dropout noise (SimCSE), GRU / LSTM / Transformer encoders with padding
masks, and TF-IDF + logistic regression as the baseline."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from simclr.errors import UserError
from simclr.evaluate import over_draws
from simclr.experiment import SingleEncoder
from simclr.modality import Augment, Baseline
from simclr.probe import stratified_split
from simclr.text.augment import TextAugment
from simclr.text.config import TextConfig, validate
from simclr.text.data import TOKENIZER_FILE, TextData, load_text, load_tokenizer
from simclr.text.encoders import build_text_encoder

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from simclr.config import Config


def tfidf_lr(
    train_texts: list[str], train_y: np.ndarray, test_texts: list[str], test_y: np.ndarray, seed: int = 0,
    c_grid: tuple[float, ...] = (1.0, 10.0, 100.0),
) -> tuple[float, np.ndarray]:
    """TF-IDF on word 1-2-grams (sublinear tf) + logistic regression, C chosen on a stratified
    validation fifth of the training texts when every class has 5 of them; returns (test
    accuracy, test predictions)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def fit(texts: list[str], y: np.ndarray, c: float) -> Any:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        return make_pipeline(vectorizer, LogisticRegression(C=c, max_iter=2000)).fit(texts, y)

    c_best = 10.0
    if np.bincount(train_y).min(initial=0) >= 5:
        tr, va = stratified_split(train_y, 0.2, seed)
        scores = [fit([train_texts[i] for i in tr], train_y[tr], c).score([train_texts[i] for i in va], train_y[va])
                  for c in c_grid]
        c_best = c_grid[int(np.argmax(scores))]
    predictions = fit(train_texts, train_y, c_best).predict(test_texts)
    return float((predictions == test_y).mean()), predictions


def tfidf_baseline(
    train: TextData, test: TextData, subsets: dict[str, np.ndarray], k: int, seed: int
) -> tuple[str, dict[str, float]]:
    """TF-IDF + logistic regression on all training labels (`linear`) and on each labelled
    subset; `knn` is the weighted cosine kNN on the TF-IDF vectors."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    assert train.labels is not None and test.labels is not None
    ytr, yte = train.labels.numpy(), test.labels.numpy()
    row = {"linear": tfidf_lr(train.texts, ytr, test.texts, yte, seed)[0]}
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(train.texts)
    xtr, xte = vectorizer.transform(train.texts), vectorizer.transform(test.texts)  # rows have unit norm
    n_classes = int(max(ytr.max(), yte.max())) + 1
    correct = 0
    for start in range(0, xte.shape[0], 1024):
        sim = torch.from_numpy((xte[start : start + 1024] @ xtr.T).toarray()).float()
        top, idx = sim.topk(min(k, xtr.shape[0]), dim=1)
        votes = torch.zeros(len(sim), n_classes).scatter_add_(1, torch.from_numpy(ytr)[idx], torch.exp(top / 0.1))
        correct += int((votes.argmax(1).numpy() == yte[start : start + 1024]).sum())
    row["knn"] = correct / len(yte)
    for metric, index in subsets.items():  # a (draws, m) index: the mean over its draws
        row[metric] = over_draws(index, lambda i: tfidf_lr([train.texts[j] for j in i], ytr[i], test.texts, yte,
                                                           seed)[0])
    return "tfidf_lr", row


class TextModality(SingleEncoder):
    name = "text"
    config = TextConfig
    pretrain_default = "all"  # sentence embeddings learn from every text; the probes see training labels only
    optimizer = "adamw"  # a Transformer from scratch, as benchmarks/quality_text.py trains it
    # AdamW on dropout and token views converges in far fewer steps than LARS on image crops (the
    # text benchmark's short runs beat TF-IDF's few-label probe), and a Transformer step costs many
    # small-CNN steps: the image floor would make a small corpus a long run (docs/defaults.md).
    min_schedule = (10, 500)

    def validate(self, cfg: Config) -> None:
        validate(cfg)

    def claims(self, path: Path) -> bool:
        """Text files, and CSVs the modalities asked before (series: numbers) did not claim; also
        a file without an extension that reads as tab-separated UTF-8 text (read as a .tsv: the
        SMS Spam Collection's `label<TAB>text` file, say). Binary files without an extension,
        such as MNIST's IDX files, hold NUL bytes or are not UTF-8."""
        if path.suffix.lower() in (".txt", ".jsonl", ".tsv", ".csv"):
            return True
        if path.suffix or not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(4096)
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as e:  # only a character cut at the 4096th byte is allowed
            if e.start < len(head) - 3:
                return False
            text = head[: e.start].decode("utf-8")
        return "\x00" not in text and "\t" in text.split("\n", 1)[0]

    def load(
        self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None, like: Any | None = None
    ) -> tuple[TextData, None]:
        if like is not None:  # a second source of this run: the same tokenizer, length and classes
            return load_text(source, cfg.text, like.inputs.shape[1], like.tokenizer, like.classes), None
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE) if run_dir is not None else None
        length = input_shape[0] if input_shape else None
        return load_text(source, cfg.text, length, tokenizer), None

    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment:
        t = cfg.text
        # Random replacements draw from the configured vocabulary size (the embedding's rows);
        # ids the learned vocabulary did not fill act as extra unknown-word noise.
        return TextAugment(t.vocab_size, t.crop_min, t.word_dropout, t.mask_prob, t.replace_prob)

    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module:
        t = cfg.text
        if data is not None and data.vocab_size > t.vocab_size:
            raise UserError(f"the tokenizer has {data.vocab_size} tokens, more than text.vocab_size={t.vocab_size}")
        return build_text_encoder(t.encoder, t.vocab_size, input_shape[0], t.width, t.layers, t.bidirectional,
                                  t.dropout)

    def baseline(self, cfg: Config) -> Baseline:
        return tfidf_baseline

    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure:
        return gallery_figure(data, augment, seed)

    def save_artifacts(self, data: Any, out: Path) -> None:
        data.tokenizer.save(str(out / TOKENIZER_FILE))


def gallery_figure(data: TextData, augment: Augment, seed: int, shown: int = 4) -> Figure:
    """For a few texts: the text as the encoder reads it, and the token spans of its two views."""
    from matplotlib.figure import Figure

    gen = torch.Generator().manual_seed(seed)
    ids = data.inputs[:shown]
    x1, x2 = augment(ids, gen), augment(ids, gen)

    def decode(row: torch.Tensor) -> str:
        return str(data.tokenizer.decode([int(i) for i in row if i != 0], skip_special_tokens=False))

    fig = Figure(figsize=(10, 1.2 * len(ids)), layout="constrained")
    axes = fig.subplots(len(ids), 1, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        lines = []
        for title, batch in (("x", ids), ("t(x)", x1), ("t'(x)", x2)):
            body = textwrap.shorten(decode(batch[i]), 330, placeholder=" …")
            lines.append(f"{title:>6}: " + "\n        ".join(textwrap.wrap(body, 110)))
        ax.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7.5)
        ax.axis("off")
    return fig


MODALITY = TextModality()

__all__ = ["MODALITY", "TextAugment", "TextData", "build_text_encoder", "load_text", "tfidf_lr"]
