"""The `text` config section: tokenizer, encoder and augmentation, all per sample."""

from __future__ import annotations

from dataclasses import dataclass

from simclr.config import Config, check, check_choice


@dataclass
class TextConfig:
    """Text (`data.modality=text`): tokenizer, encoder and augmentation, all per sample."""

    encoder: str = "transformer"  # transformer, gru, lstm (the Transformer is the faster on a CPU)
    width: int = 128  # hidden size (and token embedding size)
    layers: int = 1  # recurrent / Transformer layers
    bidirectional: bool = True  # GRU and LSTM encoders read both ways
    dropout: float = 0.1  # in the encoder; two passes differ by it (SimCSE's dropout views)
    vocab_size: int = 8000  # word pieces, learned from the corpus (Hugging Face tokenizers)
    max_length: int = 64  # tokens kept per text: most sentences and messages fit (docs/defaults.md)
    text_column: str | None = None  # CSV/TSV/JSONL; None: text/sentence/..., else all text columns
    label_column: str | None = None  # None: one of simclr.data.columns.LABEL_COLUMNS
    crop_min: float = 0.6  # one span of ~U(crop_min, 1) of the tokens
    word_dropout: float = 0.1  # each token deleted with this probability
    mask_prob: float = 0.1  # each token replaced by [MASK]...
    replace_prob: float = 0.05  # ...or by a random token


def validate(cfg: Config) -> None:
    t: TextConfig = cfg.text
    check_choice("text.encoder", t.encoder, ("gru", "lstm", "transformer"))
    check(0 < t.crop_min <= 1, f"text.crop_min must be in (0, 1], got {t.crop_min}")
    for key in ("word_dropout", "mask_prob", "replace_prob", "dropout"):
        value = getattr(t, key)
        check(0 <= value < 1, f"text.{key} must be in [0, 1), got {value}")
    for key in ("width", "layers", "max_length"):
        check(getattr(t, key) >= 1, f"text.{key} must be at least 1, got {getattr(t, key)}")
    check(t.vocab_size >= 100, f"text.vocab_size must be at least 100, got {t.vocab_size}")
