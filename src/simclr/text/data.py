"""Text sources and the tokenizer.

`--data` is a text file (one text per line), a CSV/TSV with a header naming a text column (or
several, joined: AG News' title + description) and optionally a label column, a headerless
two-column `label<TAB>text` file (SMS Spam Collection, SST), or JSONL (one object per line).

Tokenization: a WordPiece vocabulary learned on the user's own corpus with Hugging Face
`tokenizers` (offline, seconds), saved as `tokenizer.json` in the run directory so the encoder
can read new text later exactly as it was trained. Ids 0, 1, 2 are [PAD], [UNK], [MASK].
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclr.data.columns import LABEL_COLUMNS, pick_column
from simclr.errors import UserError
from simclr.extras import require

PAD, UNK, MASK = 0, 1, 2
SPECIAL = ["[PAD]", "[UNK]", "[MASK]"]
TEXT_NAMES = ("text", "sentence", "content", "document", "review", "message", "body")
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class TextData:
    """Texts as right-padded token ids, optionally labelled; `texts` keeps the raw strings (for
    the TF-IDF baseline and the report) and `tokenizer` the vocabulary that made the ids."""

    inputs: torch.Tensor  # (N, L) int64, PAD after each text
    labels: torch.Tensor | None
    name: str
    texts: list[str]
    tokenizer: Any  # tokenizers.Tokenizer
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] | None = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def subset(self, index: np.ndarray | torch.Tensor) -> TextData:
        idx = torch.as_tensor(index, dtype=torch.long)
        labels = self.labels[idx] if self.labels is not None else None
        return TextData(self.inputs[idx], labels, self.name, [self.texts[i] for i in idx.tolist()], self.tokenizer,
                        list(self.skipped), self.classes)


def _from_rows(
    rows: list[list[str]], names: list[str], path: Path, text_column: str | None, label_column: str | None
) -> tuple[list[str], list[str] | None]:
    label_at = pick_column(names, label_column, LABEL_COLUMNS, path, "text.label_column")
    text_at = pick_column(names, text_column, TEXT_NAMES, path, "text.text_column")
    text_cols = [text_at] if text_at is not None else [i for i in range(len(names)) if i != label_at]
    if not text_cols:
        raise UserError(f"{path}: no text column (set text.text_column)")
    texts = [" ".join(r[i].strip() for i in text_cols if i < len(r)) for r in rows]
    labels = [r[label_at].strip() if label_at < len(r) else "" for r in rows] if label_at is not None else None
    return texts, labels


def read_texts(
    path: Path, text_column: str | None = None, label_column: str | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> tuple[list[str], list[str] | None]:
    """(texts, labels or None) from one file, by the rules in the module docstring. Lines of a
    headerless label<TAB>text file without exactly one tab (at most 10%) are left out and
    listed in `skipped`."""
    if not path.is_file():
        raise UserError(f"text source not found: {path}")
    suffix = path.suffix.lower()
    raw = path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{path}: no text in the file")
    if suffix == ".jsonl":
        try:
            objects = [json.loads(line) for line in lines]
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not JSON Lines ({e.msg})") from None
        if not all(isinstance(o, dict) for o in objects):
            raise UserError(f"{path}: every line must be a JSON object")
        names = list(dict.fromkeys(k for o in objects for k in o))
        rows = [[str(o.get(k, "")) for k in names] for o in objects]
        return _from_rows(rows, names, path, text_column, label_column)
    if suffix == ".txt" and text_column is None and label_column is None:
        return [line.strip() for line in lines], None
    # CSV quotes fields; tab-separated text conventionally does not (an SMS may hold a lone ").
    dialect = {"delimiter": ","} if suffix == ".csv" else {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    rows = [r for r in csv.reader(raw.splitlines(), **dialect) if any(v.strip() for v in r)]  # type: ignore[arg-type]
    first = [v.strip().lower() for v in rows[0]]
    known = {*TEXT_NAMES, *LABEL_COLUMNS, *(c.lower() for c in (text_column, label_column) if c)}
    if known & set(first):  # a header row
        return _from_rows(rows[1:], rows[0], path, text_column, label_column)
    pairs = [r for r in rows if len(r) == 2]
    if len(pairs) >= 0.9 * len(rows):  # headerless label<TAB>text, a few malformed lines aside
        if skipped is not None:
            skipped += [(f"{path}: {' '.join(r)[:60]!r}", "format: not label<TAB>text") for r in rows if len(r) != 2]
        return [r[1].strip() for r in pairs], [r[0].strip() for r in pairs]
    if all(len(r) == 1 for r in rows):
        return [r[0].strip() for r in rows], None
    raise UserError(f"{path}: cannot tell the text column; add a header with a 'text' (and 'label') column "
                    "or set text.text_column")


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A lower-cased WordPiece vocabulary learned from `texts` (no download)."""
    tokenizers = require("text")
    models, trainers = require("text", "tokenizers.models"), require("text", "tokenizers.trainers")
    tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL,
                                        show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def load_tokenizer(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path} is missing: the text encoder needs the tokenizer saved with its run")
    return require("text").Tokenizer.from_file(str(path))


def encode(tokenizer: Any, texts: list[str], length: int | None, max_length: int) -> torch.Tensor:
    """Token ids (N, L), right-padded with PAD; L = `length`, else the longest text up to
    `max_length` tokens (longer texts keep their beginning)."""
    ids = [e.ids[:max_length] for e in tokenizer.encode_batch(texts)]
    length = length or max(1, max(len(i) for i in ids))
    out = torch.full((len(ids), length), PAD, dtype=torch.long)
    for row, i in enumerate(ids):
        out[row, : min(len(i), length)] = torch.tensor(i[:length], dtype=torch.long)
    return out


def load_text(
    source: str, cfg_text: Any, length: int | None = None, tokenizer: Any | None = None,
    classes: list[str] | None = None,
) -> TextData:
    """A text source as token ids. Without a `tokenizer` one is learned from these texts."""
    path = Path(source)
    skipped: list[tuple[str, str]] = []
    texts, labels = read_texts(path, cfg_text.text_column, cfg_text.label_column, skipped)
    if tokenizer is None:
        tokenizer = train_tokenizer(texts, cfg_text.vocab_size)
    inputs = encode(tokenizer, texts, length, cfg_text.max_length)
    y = None
    if labels is not None:
        classes = classes or sorted(set(labels))
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(labels) - index.keys())
        if unknown:
            raise UserError(f"{path}: labels {unknown[:5]} are not among the training classes")
        y = torch.tensor([index[v] for v in labels], dtype=torch.long)
    return TextData(inputs, y, path.stem, texts, tokenizer, skipped, classes if labels is not None else None)
