"""Paired data: images with captions.

`--data` is either
- a manifest: CSV (with a header) or JSONL, one pair per row: an image path (relative to the
  manifest's folder, or absolute), its caption, optionally a label; or
- an image folder or archive with class subfolders: every image's captions are the prompt
  templates filled with its class name ("a photo of a cat.", "a blurry photo of a cat.", ...),
  one drawn per sample per step.

Captions are tokenized with a WordPiece vocabulary learned from them (simclr.text), stored as
token ids (N, T, L): T candidate captions per pair (the templates; 1 for a manifest).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from simclr.data import load_images
from simclr.data.cache import Built, Slot, cache_root
from simclr.data.decode import auto_size, decode_entries
from simclr.data.imagedata import ImageData
from simclr.data.images import UNREADABLE
from simclr.data.listing import MAX_FILE_BYTES, Entry, printable
from simclr.data.skipped import refuse_if_strict, skip_summary
from simclr.errors import UserError
from simclr.modality import PAIR_IMAGE_COLUMNS, PAIR_TEXT_COLUMNS
from simclr.probe import stratified_split
from simclr.text.data import LABEL_NAMES, encode, train_tokenizer

if TYPE_CHECKING:
    from simclr.config import Config

log = logging.getLogger("simclr")

MANIFEST_SUFFIXES = (".csv", ".jsonl")
SHOWN_SKIPPED = 5  # skipped files named in the warning; all of them go to skipped_files.txt


@dataclass(kw_only=True)
class PairedData(ImageData):
    """Pairs: the images of `ImageData` (uint8, with labels, classes, ids = image paths) plus
    caption token ids. `inputs` (the images) is what the shared code sees: the image side is
    probed, monitored and reported as usual."""

    captions: torch.Tensor  # (N, T, L) int64: T candidate captions per pair, right-padded
    texts: list[list[str]]  # the same captions as text, (N, T)
    tokenizer: Any  # tokenizers.Tokenizer

    @property
    def text_length(self) -> int:
        return int(self.captions.shape[2])

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def subset(self, index: np.ndarray | torch.Tensor) -> PairedData:
        idx = torch.as_tensor(index, dtype=torch.long)
        images = super().subset(idx)
        return PairedData(images.images, images.labels, images.name, images.skipped, images.classes, images.ids,
                          captions=self.captions[idx], texts=[self.texts[i] for i in idx.tolist()],
                          tokenizer=self.tokenizer)

    def fixed_captions(self, seed: int) -> tuple[torch.Tensor, list[str]]:
        """One caption per pair, drawn once (seeded): what evaluation and `embed` use.
        Returns token ids (N, L) and the texts."""
        gen = torch.Generator().manual_seed(seed)
        choice = torch.randint(self.captions.shape[1], (len(self),), generator=gen)
        ids = self.captions[torch.arange(len(self)), choice]
        return ids, [self.texts[i][int(c)] for i, c in enumerate(choice)]


def class_prompts(name: str, templates: list[str]) -> list[str]:
    """The captions of one class: each template filled with its name (underscores as spaces)."""
    return [t.replace("{}", name.replace("_", " ")) for t in templates]


def _column(names: list[str], wanted: str | None, defaults: tuple[str, ...], path: Path, key: str) -> str | None:
    lower = {n.strip().lower(): n for n in names}
    if wanted is not None:
        if wanted.lower() not in lower:
            raise UserError(f"{path}: no column {wanted!r} ({key}); columns: {', '.join(names)}")
        return lower[wanted.lower()]
    return next((lower[n] for n in defaults if n in lower), None)


def read_manifest(path: Path, cfg: Config) -> tuple[list[str], list[str], list[str] | None]:
    """(image paths as written, captions, labels or None) from a CSV or JSONL manifest."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{number}: not JSON Lines ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: every line must be a JSON object")
            rows.append({str(k): "" if v is None else str(v) for k, v in row.items()})
        names = list(dict.fromkeys(k for r in rows for k in r))
    else:
        reader = csv.DictReader(raw.splitlines())
        names = list(reader.fieldnames or [])
        rows = [{k: (v or "") for k, v in r.items() if k is not None} for r in reader]
    if not rows:
        raise UserError(f"{path}: no pairs in the manifest")
    p = cfg.paired
    image_col = _column(names, p.image_column, PAIR_IMAGE_COLUMNS, path, "paired.image_column")
    text_col = _column(names, p.text_column, PAIR_TEXT_COLUMNS, path, "paired.text_column")
    label_col = _column(names, p.label_column, LABEL_NAMES, path, "paired.label_column")
    for col, what, choices in ((image_col, "image", PAIR_IMAGE_COLUMNS), (text_col, "caption", PAIR_TEXT_COLUMNS)):
        if col is None:
            raise UserError(f"{path}: no {what} column (one of {', '.join(choices)}, or set "
                            f"paired.{'image' if what == 'image' else 'text'}_column); columns: {', '.join(names)}")
    assert image_col is not None and text_col is not None
    images = [r.get(image_col, "").strip() for r in rows]
    captions = [r.get(text_col, "").strip() for r in rows]
    labels = [r.get(label_col, "").strip() for r in rows] if label_col is not None else None
    return images, captions, labels


def _entry(folder: Path, written: str) -> Entry:
    """An image of the manifest as the decoder reads it; a missing or oversized file is an entry
    with its error (skipped and listed, like a broken image). Its stamp (size, mtime) is the
    cache's fingerprint."""
    path = Path(written) if Path(written).is_absolute() else folder / written
    display = printable(str(path))
    if not written:
        return Entry((written,), display or "(empty path)", None, f"{UNREADABLE}: empty image path")
    try:
        st = path.stat()
    except OSError:
        return Entry((written,), display, None, f"{UNREADABLE}: no such file")
    if not path.is_file():
        return Entry((written,), display, None, f"{UNREADABLE}: not a file")
    if st.st_size > MAX_FILE_BYTES:
        return Entry((written,), display, None, f"{UNREADABLE}: file too large")
    return Entry((written,), display, path.read_bytes, stamp=(st.st_size, st.st_mtime_ns))


def _decode_manifest(
    path: Path, cfg: Config, written: list[str], size: int | None, channels: int | None
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """The manifest's images for its rows: (images (n, C, S, S) of the rows kept, the rows kept,
    the skipped files). Each distinct image file is decoded once (a captioning manifest lists an
    image once per caption) into the decode-once cache, reused while the manifest's files and
    the settings are unchanged."""
    distinct = list(dict.fromkeys(written))
    entries = [_entry(path.parent, w) for w in distinct]
    identity = {"kind": "manifest-images", "path": os.path.abspath(path), "channels": channels, "image_size": size}
    d = cfg.data
    slot = Slot.for_source(cache_root(d.cache_dir), f"{path.stem}-images", identity,
                           [[e.parts[0], list(e.stamp), e.error] for e in entries])
    cached = slot.read()
    if cached is not None:
        log.info("%s: %d images from the cache %s", path, len(cached.images), cached.path)
    else:
        note = ""
        if size is None:
            size, note = auto_size(entries)
        log.info("%s: decoding %d images to %d px%s", path, len(entries), size, f"; {note}" if note else "")
        try:
            decoded = decode_entries(entries, size, channels, slot.allocate, d.strict, desc=f"decoding {path.stem}")
            if decoded.count == 0:
                raise UserError(f"no usable images in {path} ({skip_summary(decoded.skipped)})")
            keep = 1 if channels is None and decoded.all_grey else None
            cached = slot.write(Built(decoded.images, decoded.count, None, None, decoded.skipped, keep, note,
                                      ids=[distinct[i] for i in decoded.kept]))
        finally:
            slot.cleanup()
    where = {w: i for i, w in enumerate(cached.ids or [])}
    kept = [row for row, w in enumerate(written) if w in where]
    images = cached.images[[where[written[row]] for row in kept]]  # a fresh, contiguous copy
    return images, kept, cached.skipped


def warn_skipped(where: str, skipped: list[tuple[str, str]], dropped: int, total: int) -> None:
    if not skipped:
        return
    shown = "; ".join(f"{p} ({why})" for p, why in skipped[:SHOWN_SKIPPED])
    more = f"; and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    log.warning("%s: %s, %d of %d pairs left out: %s%s", where, skip_summary(skipped), dropped, total, shown, more)


def _label_index(values: list[str], classes: list[str] | None, where: str) -> tuple[torch.Tensor, list[str]]:
    classes = classes or sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(values) - index.keys())
    if unknown:
        raise UserError(f"{where}: labels {unknown[:5]} are not among the training classes")
    return torch.tensor([index[v] for v in values], dtype=torch.long), classes


def load_pairs(
    source: str, cfg: Config, image_shape: list[int] | None = None, tokenizer: Any | None = None,
    text_length: int | None = None, classes: list[str] | None = None,
) -> PairedData:
    """All pairs of a source (see the module docstring). A trained run fixes the image shape
    (C, H, W), the tokenizer, the caption length and the class order; without a tokenizer one
    is learned from these captions."""
    d = cfg.data
    channels, size = (image_shape[0], image_shape[-1]) if image_shape else (d.channels, d.image_size)
    path = Path(source).expanduser()
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        if not path.is_file():
            raise UserError(f"manifest not found: {source}")
        written, captions, label_values = read_manifest(path, cfg)
        array, kept, skipped = _decode_manifest(path, cfg, written, size, channels)
        refuse_if_strict(d.strict, skipped)  # a cache hit remembers the files a first decode skipped
        warn_skipped(str(path), skipped, len(written) - len(kept), len(written))
        images = torch.from_numpy(array)
        texts = [[captions[i]] for i in kept]
        labels = None
        if label_values is not None:
            labels, classes = _label_index([label_values[i] for i in kept], classes, str(path))
        ids: list[str] | None = [written[i] for i in kept]
        name = path.stem
    else:
        data = load_images(source, channels, size, cache_dir=d.cache_dir, strict=d.strict, root=d.root,
                           allow_download=d.download)
        if data.labels is None or not data.classes:
            raise UserError(f"{source}: paired data from images needs class subfolders (their names make the "
                            "captions), or give a CSV/JSONL manifest of image,text pairs")
        own = [data.classes[i] for i in data.labels.tolist()]
        labels, classes = _label_index(own, classes, source)
        templates = cfg.paired.templates if cfg.paired.prompts else ["{}"]
        per_class = [class_prompts(c, templates) for c in classes]
        texts = [per_class[y] for y in labels.tolist()]  # shared lists: one per class
        images, skipped, name = data.images, data.skipped, data.name
        ids = data.ids
    tokenizer = tokenizer or train_tokenizer(sorted({t for row in texts for t in row}), cfg.text.vocab_size)
    captions_t = _tokenize(tokenizer, texts, text_length, cfg.text.max_length)
    return PairedData(images, labels, name, skipped, classes if labels is not None else None, ids,
                      captions=captions_t, texts=texts, tokenizer=tokenizer)


def _tokenize(tokenizer: Any, texts: list[list[str]], length: int | None, max_length: int) -> torch.Tensor:
    """(N, T, L) token ids; each distinct caption is encoded once (class prompts repeat)."""
    distinct = sorted({t for row in texts for t in row})
    table = encode(tokenizer, distinct, length, max_length)  # (U, L)
    where = {t: i for i, t in enumerate(distinct)}
    index = torch.tensor([[where[t] for t in row] for row in texts], dtype=torch.long)  # (N, T)
    return table[index]


def heldout_split(data: PairedData, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) indices of the pairs: stratified by label when every class has
    two pairs or more, else a random `fraction`."""
    n = len(data)
    if n < 2:
        raise UserError(f"{data.name}: {n} usable pair(s); paired training needs more")
    if data.labels is not None and np.bincount(data.labels.numpy()).min(initial=0) >= 2:
        try:
            return stratified_split(data.labels.numpy(), fraction, seed)
        except ValueError:  # too few pairs per class for this fraction: fall back to a plain draw
            pass
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, round(fraction * n))
    return np.sort(order[held:]), np.sort(order[:held])
