"""Paired data: two modalities per sample (image + caption first; any two of image, series,
text and video).

`--data` is either
- a manifest: CSV (with a header) or JSONL, one pair per row, one column per side: an image path
  or a video path (relative to the manifest's folder, or absolute), a text, or a series written
  inline (numbers separated by spaces, commas or semicolons; channels separated by `|`); optionally
  a label; or
- a labelled source of the first side's modality (an image folder or archive with class
  subfolders, a labelled series file, a video folder with class subfolders), the second side
  being text: every sample's captions are the prompt templates filled with its class name
  ("a photo of a cat.", "a blurry photo of a cat.", ...), one drawn per sample per step.

The first side is held as its own modality holds it (simclr.modality.Data: images, series,
clips or token ids, with labels, classes and ids); the shared code sees that side through
`inputs`. The second side holds T candidates per pair, (N, T, ...): the T prompt templates of a
class-prompt caption, or T = 1. Texts are tokenized with one WordPiece vocabulary learned from
them (simclr.text).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from simclr.data.cache import Built, Slot, cache_root
from simclr.data.columns import LABEL_COLUMNS, header_names, pick_column
from simclr.data.decode import auto_size, decode_entries
from simclr.data.imagedata import ImageData
from simclr.data.images import UNREADABLE
from simclr.data.listing import MAX_FILE_BYTES, Entry, printable
from simclr.data.skipped import refuse_if_strict, skip_summary
from simclr.errors import UserError
from simclr.modality import detect, get
from simclr.probe import stratified_split
from simclr.series.data import SeriesData, resample
from simclr.text.data import TextData, encode, train_tokenizer

if TYPE_CHECKING:
    from simclr.config import Config

log = logging.getLogger("simclr")

MANIFEST_SUFFIXES = (".csv", ".jsonl")
SHOWN_SKIPPED = 5  # skipped files named in the warning; all of them go to skipped_files.txt
# A manifest of (image, caption) pairs names both columns; a text file never has an image column.
PAIR_IMAGE_COLUMNS = ("image", "image_path", "file", "filename", "path")
PAIR_TEXT_COLUMNS = ("text", "caption", "sentence", "description", "prompt")
PAIR_SERIES_COLUMNS = ("series", "values", "signal", "sequence")
PAIR_VIDEO_COLUMNS = ("video", "video_path", "clip")


@dataclass
class SideInputs:
    """One side's inputs as an encoder builder reads them: `inputs` (the series encoder takes its
    standardization statistics from them) and `vocab_size` (the text encoder checks it)."""

    inputs: torch.Tensor
    tokenizer: Any = None

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())


@dataclass(kw_only=True)
class PairedData:
    """Pairs. `first`: the first side's data as its modality holds it; what the shared code
    sees (inputs, labels, classes, name, skipped) is that side. `second`: (N, T, ...) T candidate
    inputs of the second side per pair; `texts` their strings when the second side is text."""

    first: Any
    second: torch.Tensor
    modalities: tuple[str, str]
    texts: list[list[str]] | None = None  # (N, T), when the second side is text
    tokenizer: Any = None  # tokenizers.Tokenizer, when a side is text
    ids: list[str] | None = None  # each pair's first-side file (image/video) or row

    def __len__(self) -> int:
        return len(self.first)

    @property
    def inputs(self) -> torch.Tensor:
        return self.first.inputs  # type: ignore[no-any-return]

    @property
    def labels(self) -> torch.Tensor | None:
        return self.first.labels  # type: ignore[no-any-return]

    @property
    def classes(self) -> list[str] | None:
        return self.first.classes  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        return str(self.first.name)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return self.first.skipped  # type: ignore[no-any-return]

    @property
    def second_shape(self) -> list[int]:
        """One second-side input's shape: what its encoder is built for."""
        return [int(v) for v in self.second.shape[2:]]

    @property
    def first_shape(self) -> list[int]:
        """One first-side input's shape: what its encoder is built for (and checkpoints record)."""
        return [int(v) for v in self.first.inputs.shape[1:]]

    def side(self, k: int) -> Any:
        """Side k's data as its encoder builder reads it (the second side: its first candidates)."""
        return self.first if k == 0 else SideInputs(self.second[:, 0], self.tokenizer)

    def subset(self, index: np.ndarray | torch.Tensor) -> PairedData:
        idx = torch.as_tensor(index, dtype=torch.long)
        rows = idx.tolist()
        return PairedData(first=self.first.subset(idx), second=self.second[idx], modalities=self.modalities,
                          texts=[self.texts[i] for i in rows] if self.texts is not None else None,
                          tokenizer=self.tokenizer, ids=[self.ids[i] for i in rows] if self.ids is not None else None)

    def fixed_second(self, seed: int) -> tuple[torch.Tensor, list[str] | None]:
        """One second-side candidate per pair, drawn once (seeded): what evaluation and `embed`
        use. Returns the inputs (N, ...) and, for text, their strings."""
        gen = torch.Generator().manual_seed(seed)
        choice = torch.randint(self.second.shape[1], (len(self),), generator=gen)
        chosen = self.second[torch.arange(len(self)), choice]
        texts = [self.texts[i][int(c)] for i, c in enumerate(choice)] if self.texts is not None else None
        return chosen, texts

    def side_inputs(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides' inputs, one row per pair (the seeded candidate of the second side)."""
        return self.inputs, self.fixed_second(seed)[0]

    def side_texts(self, seed: int) -> list[str] | None:
        """The texts of the text side (the fixed candidate for the second side), else None."""
        if self.modalities[0] == "text":
            return list(self.first.texts)
        return self.fixed_second(seed)[1]


def class_prompts(name: str, templates: list[str]) -> list[str]:
    """The captions of one class: each template filled with its name (underscores as spaces)."""
    return [t.replace("{}", name.replace("_", " ")) for t in templates]


def side_columns(cfg: Config) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """Per side modality: (the configured manifest column or None, the names looked for)."""
    p = cfg.paired
    return {"image": (p.image_column, PAIR_IMAGE_COLUMNS), "text": (p.text_column, PAIR_TEXT_COLUMNS),
            "series": (p.series_column, PAIR_SERIES_COLUMNS), "video": (p.video_column, PAIR_VIDEO_COLUMNS)}


def is_manifest(path: Path, cfg: Config, modalities: tuple[str, str]) -> bool:
    """Whether a CSV/JSONL file names a column for each side (else it may be a labelled source
    of the first side's modality, such as a series CSV)."""
    lower = {n.strip().lower() for n in header_names(path)}
    columns = side_columns(cfg)

    def has(wanted: str | None, defaults: tuple[str, ...]) -> bool:
        return wanted.lower() in lower if wanted is not None else bool(lower & set(defaults))

    return all(has(*columns[m]) for m in modalities)


def read_manifest(
    path: Path, cfg: Config, modalities: tuple[str, str]
) -> tuple[list[str], list[str], list[str] | None]:
    """(first side's values, second side's values, labels or None) from a CSV or JSONL manifest:
    image paths as written, texts, or series written inline."""
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
    columns = side_columns(cfg)
    values = []
    for modality in modalities:
        wanted, defaults = columns[modality]
        col = pick_column(names, wanted, defaults, path, f"paired.{modality}_column")
        if col is None:
            raise UserError(f"{path}: no {modality} column (one of {', '.join(defaults)}, or set "
                            f"paired.{modality}_column); columns: {', '.join(names)}")
        values.append([r.get(names[col], "").strip() for r in rows])
    label_col = pick_column(names, cfg.paired.label_column, LABEL_COLUMNS, path, "paired.label_column")
    labels = [r.get(names[label_col], "").strip() for r in rows] if label_col is not None else None
    return values[0], values[1], labels


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
    return _rows_of(cached, written)


def _rows_of(cached: Any, written: list[str]) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """A cache entry of distinct files (its `ids`) spread back over the manifest's rows, which may
    name a file several times: (inputs of the rows kept, a fresh contiguous copy; the rows kept;
    the files skipped)."""
    where = {w: i for i, w in enumerate(cached.ids or [])}
    kept = [row for row, w in enumerate(written) if w in where]
    return cached.images[[where[written[row]] for row in kept]], kept, cached.skipped


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


def parse_series(
    values: list[str], shape: list[int] | None, length: int | None
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Series written inline, one per manifest row (numbers separated by spaces, commas or
    semicolons; channels by `|`; empty, `?` or NaN for a missing value) → (series (n, C, T) of
    the rows kept, the rows kept, the rows skipped as (row, reason)). All are resampled to the
    trained encoder's length (`shape` = [C, T]), else `length`, else the longest."""
    parsed: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for row, value in enumerate(values):
        where = f"row {row + 1}"
        try:
            channels = [[float(v) for v in re.split(r"[\s,;]+", c.strip()) if v] for c in value.split("|")]
        except ValueError as e:
            skipped.append((where, f"series: not a number ({str(e).split(': ')[-1]})"))
            continue
        if not all(channels):
            skipped.append((where, "series: no values"))
            continue
        longest = max(len(c) for c in channels)
        series = np.full((len(channels), longest), np.nan)
        for c, channel in enumerate(channels):
            series[c, : len(channel)] = channel  # a shorter channel ends early
        parsed.append(series)
        kept.append(row)
    widths = {s.shape[0] for s in parsed}
    if len(widths) > 1:
        raise UserError(f"series in the manifest have different numbers of channels {sorted(widths)}")
    if shape is not None and parsed and widths != {shape[0]}:
        raise UserError(f"series with {widths.pop()} channels, but the encoder takes {shape[0]}")
    length = shape[1] if shape is not None else length or max((s.shape[1] for s in parsed), default=1)
    return (resample(parsed, length) if parsed else np.zeros((0, 1, length), np.float32)), kept, skipped


@dataclass
class Encoding:
    """What a trained run (or the training data) fixes for another source: each side's input
    shape, the tokenizer and the class order."""

    first_shape: list[int] | None = None
    second_shape: list[int] | None = None
    tokenizer: Any = None
    classes: list[str] | None = None

    @classmethod
    def like(cls, data: PairedData) -> Encoding:
        return cls(data.first_shape, data.second_shape, data.tokenizer, data.classes)


def load_pairs(
    source: str, cfg: Config, encoding: Encoding | None = None
) -> tuple[PairedData, PairedData | None]:
    """All pairs of a source (see the module docstring) as (pairs, the source's own test pairs or
    None: a UCR/UEA TRAIN/TEST pair). `encoding` (a trained run's, or the training data's) fixes
    the input shapes, the tokenizer and the class order; without a tokenizer one is learned from
    these texts."""
    enc = encoding or Encoding()
    a, b = (str(m) for m in cfg.paired.modalities)
    path = Path(source).expanduser()
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        if not path.is_file():
            raise UserError(f"manifest not found: {source}")
        # A file of the first side's own kind (a series CSV, say) without a column per side is
        # a labelled source of it; anything else is a manifest, and says which column it lacks.
        if is_manifest(path, cfg, (a, b)) or detect(str(path)) != a:
            return _manifest_pairs(path, cfg, (a, b), enc), None
    if b != "text":
        raise UserError(f"{source}: paired data from a labelled {a} source pairs it with captions made from its "
                        f"class names (paired.modalities=[{a}, text]); for {a} + {b} give a CSV/JSONL manifest")
    first, official_test = get(a).load(cfg, source, enc.first_shape, None)
    classes = enc.classes or first.classes
    data = _prompt_pairs(first, source, cfg, classes, enc)
    test = _prompt_pairs(official_test, source, cfg, data.classes, Encoding(tokenizer=data.tokenizer,
                         second_shape=data.second_shape)) if official_test is not None else None
    return data, test


def _prompt_pairs(first: Any, source: str, cfg: Config, classes: list[str] | None, enc: Encoding) -> PairedData:
    """Labelled data of one modality with its class-name captions as the (text) second side."""
    if first.labels is None or not first.classes:
        raise UserError(f"{source}: paired data from a labelled source needs class names (class subfolders, a "
                        "label column), or give a CSV/JSONL manifest of pairs")
    labels, classes = _label_index([first.classes[i] for i in first.labels.tolist()], classes, source)
    first = dataclasses.replace(first, labels=labels, classes=classes)
    templates = cfg.paired.templates if cfg.paired.prompts else ["{}"]
    per_class = [class_prompts(c, templates) for c in classes]
    texts = [per_class[y] for y in labels.tolist()]  # shared lists: one per class
    tokenizer = enc.tokenizer or train_tokenizer(sorted({t for row in per_class for t in row}), cfg.text.vocab_size)
    length = enc.second_shape[0] if enc.second_shape else None
    return PairedData(first=first, second=_tokenize(tokenizer, texts, length, cfg.text.max_length),
                      modalities=(str(cfg.paired.modalities[0]), "text"), texts=texts, tokenizer=tokenizer,
                      ids=getattr(first, "ids", None))


def _read_side(
    path: Path, cfg: Config, modality: str, column: list[str], shape: list[int] | None
) -> tuple[Any, list[int], list[tuple[str, str]]]:
    """One side's column of a manifest: (its inputs for the rows kept, the rows kept, what was
    skipped). Texts stay strings: they are tokenized once the rows of both sides are known."""
    if modality == "image":
        channels, size = (shape[0], shape[-1]) if shape else (cfg.data.channels, cfg.data.image_size)
        return _decode_manifest(path, cfg, column, size, channels)
    if modality == "series":
        return parse_series(column, shape, cfg.series.length)
    if modality == "video":
        return _decode_manifest_videos(path, cfg, column, shape)
    return column, list(range(len(column))), []


def _decode_manifest_videos(
    path: Path, cfg: Config, written: list[str], shape: list[int] | None
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """The manifest's videos for its rows, as `_decode_manifest` does for images: each distinct
    file decoded once (at `video.size`, `video.fps`, `video.frames`) into the cache."""
    from simclr.video.data import decode_video_files  # PyAV only for runs with video

    v = cfg.video
    frames, channels, size = (shape[0], shape[1], shape[-1]) if shape else (v.frames, cfg.data.channels or 3, v.size)
    distinct = list(dict.fromkeys(written))
    files = [Path(w) if Path(w).is_absolute() else path.parent / w for w in distinct]
    identity = {"kind": "manifest-videos", "path": os.path.abspath(path)}
    cached = decode_video_files(files, distinct, f"{path.stem}-videos", identity, size, v.fps, frames, channels,
                                cfg.data.cache_dir, cfg.data.strict)
    return _rows_of(cached, written)


def _manifest_pairs(path: Path, cfg: Config, modalities: tuple[str, str], enc: Encoding) -> PairedData:
    """The pairs of a manifest: each side's column read by its modality; a row whose image or
    video is unusable or whose series does not parse is left out (warned about and listed)."""
    *values, label_values = read_manifest(path, cfg, modalities)
    shapes = (enc.first_shape, enc.second_shape)
    read = [_read_side(path, cfg, m, values[side], shapes[side]) for side, m in enumerate(modalities)]
    skipped = [s for _, _, lost in read for s in lost]
    rows = sorted(set(read[0][1]) & set(read[1][1]))
    refuse_if_strict(cfg.data.strict, skipped)  # a cache hit remembers the files a first decode skipped
    warn_skipped(str(path), skipped, len(values[0]) - len(rows), len(values[0]))
    if not rows:
        raise UserError(f"no usable pairs in {path} ({skip_summary(skipped)})")
    kept = [[column[r] for r in rows] for column in values]  # each side's values of the pairs kept
    tokenizer = enc.tokenizer
    if "text" in modalities and tokenizer is None:
        texts = {t for side, m in enumerate(modalities) if m == "text" for t in kept[side]}
        tokenizer = train_tokenizer(sorted(texts), cfg.text.vocab_size)
    sides: list[torch.Tensor] = []
    for side, (modality, (inputs, rows_read, _)) in enumerate(zip(modalities, read, strict=True)):
        if modality == "text":
            length = shapes[side][0] if shapes[side] else None  # type: ignore[index]
            sides.append(encode(tokenizer, kept[side], length, cfg.text.max_length))
        else:
            where = {r: i for i, r in enumerate(rows_read)}
            sides.append(torch.from_numpy(np.ascontiguousarray(inputs[[where[r] for r in rows]])))
    labels, classes = None, None
    if label_values is not None:
        labels, classes = _label_index([label_values[r] for r in rows], enc.classes, str(path))
    first: Any
    if modalities[0] == "image":
        first = ImageData(sides[0], labels, path.stem, skipped, classes, kept[0])
    elif modalities[0] == "video":
        from simclr.video.data import VideoData

        first = VideoData(sides[0], labels, path.stem, skipped, classes, kept[0])
    elif modalities[0] == "series":
        first = SeriesData(sides[0], labels, path.stem, skipped, classes)
    else:
        first = TextData(sides[0], labels, path.stem, kept[0], tokenizer, skipped, classes)
    files = [side for side, m in enumerate(modalities) if m in ("image", "video")]  # named by their files
    ids = kept[files[0]] if files else [f"row {r + 1}" for r in rows]
    second_texts = [[t] for t in kept[1]] if modalities[1] == "text" else None
    return PairedData(first=first, second=sides[1].unsqueeze(1), modalities=modalities, texts=second_texts,
                      tokenizer=tokenizer, ids=ids)


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
