"""`load_images`: a built-in name or a path in, uint8 images of the configured channels and
size out. Decoded sources go through the decode-once cache."""

from __future__ import annotations

import logging
import os
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from simclr.data import builtin
from simclr.data.arrays import read_array_file
from simclr.data.cache import Built, Cached, Slot, cache_root
from simclr.data.decode import Decoded, auto_size, decode_blocks, decode_entries, decoded_shape
from simclr.data.imagedata import ImageData, fit_uint8
from simclr.data.layout import Layout, infer_layout
from simclr.data.listing import Entry, list_folder, list_tar, list_zip, printable
from simclr.data.skipped import refuse_if_strict, skip_summary
from simclr.data.standard import IDX_PATTERN, Arrays, StandardFolder, detect
from simclr.errors import UserError

log = logging.getLogger("simclr")

SPLITS = ("train", "test", "val", "unlabeled", "train+unlabeled")
CHUNK_ROWS = 2048  # images converted per step when writing array sources into the cache


def load_images(
    source: str,
    channels: int | None = None,
    image_size: int | None = None,
    *,
    split: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    strict: bool = False,
    root: str | Path | None = None,
    allow_download: bool = False,
    workers: int | None = None,
) -> ImageData:
    """Load a data source, converted to `channels` (1 or 3) and `image_size`×`image_size`.

    `source` is a built-in name (digits, mnist, cifar10, cifar100, stl10; all but digits are
    read from `root`, default $SIMCLR_DATA) or a path: a folder of images (class subfolders
    give labels), a .zip or .tar of images (same rules), a .npy/.npz array file, an MNIST IDX
    folder, a CIFAR-10/100 python-batches folder or an STL-10 binary folder. A split can be
    chosen with `split` or a `:split` suffix (`mnist:test`, `stl10:train+unlabeled`,
    `photos.zip:val`).

    None for `channels` keeps the source's: for image files, 1 when every image is grey, else
    3. None for `image_size` keeps the source's size; for image files of mixed sizes it is the
    median shorter side of a sample, within [8, 224]. Non-square images are cut to their
    central square. Digits default to 16 px.

    Image files, IDX, CIFAR and STL-10 are decoded once into a memory-mapped cache under
    `cache_dir` (default $SIMCLR_CACHE or ~/.cache/simclr; `use_cache=False` keeps it in
    memory) and read from there while the source files and settings are unchanged. Broken
    image files are skipped and listed in `ImageData.skipped`; with `strict` the first one is
    a UserError. So is a source with no usable image.
    """
    source, split = split_suffix(source, split)
    if channels not in (None, 1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    if source == "digits":
        if split is not None:
            raise UserError("digits has no splits: use the whole set (a held-out split is made for evaluation)")
        images, labels = builtin.load_digits()
        size = image_size or builtin.DEFAULT_SIZE["digits"]
        return _from_arrays(images, labels, "digits", channels, size)
    if source in builtin.REMOTE:
        path = builtin.locate(source, root, allow_download)
        name = source
    else:
        path = Path(source).expanduser()
        name = _base_name(path)
        if not path.exists():
            raise UserError(f"data path does not exist: {source}")
    if split:
        name = f"{name}-{split}"
    root = cache_root(cache_dir)
    context = _Context(path, name, channels, image_size, split, root if use_cache else None, strict, workers)
    if path.is_dir():
        standard = detect(path, split)
        result = context.standard(standard) if standard else context.folder()
    elif path.suffix.lower() in (".npy", ".npz"):
        arrays, array_labels = read_array_file(path, split)
        return _from_arrays(arrays, array_labels, name, channels, image_size)
    elif zipfile.is_zipfile(path) or tarfile.is_tarfile(path):
        result = context.archive()
    else:
        raise UserError(
            f"unsupported data source {source}: expected a built-in name, a folder, a .zip or "
            ".tar of images, or a .npy/.npz file"
        )
    refuse_if_strict(strict, result.skipped)
    if result.skipped:
        log.warning("%s: %s", printable(str(path)), skip_summary(result.skipped))
    labels_t = torch.from_numpy(result.labels.astype(np.int64)) if result.labels is not None else None
    return ImageData(torch.from_numpy(result.images), labels_t, name, result.skipped, result.classes, result.ids)


def load_array_file(path: Path) -> ImageData:
    """A .npy/.npz as it is (see `arrays.read_array_file`)."""
    images, labels = read_array_file(path)
    return _from_arrays(images, labels, path.stem, None, None)


def _base_name(path: Path) -> str:
    """The source's name for messages and the cache: its file name without archive or
    array suffixes (`.tar.gz` included)."""
    name = path.resolve().name if path.name in ("", ".", "..") else path.name
    for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip", ".npz", ".npy"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def split_suffix(source: str, split: str | None) -> tuple[str, str | None]:
    """`name:split` → (name, split), unless `source` is itself an existing path."""
    base, sep, suffix = source.rpartition(":")
    if sep and suffix in SPLITS and base and not Path(source).exists():
        if split is not None and split != suffix:
            raise UserError(f"two splits given for {base}: {suffix} and {split}")
        return base, suffix
    if split is not None and split not in SPLITS:
        raise UserError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return source, split


def _from_arrays(images: np.ndarray, labels: np.ndarray | None, name: str, channels: int | None,
                 size: int | None) -> ImageData:
    if len(images) == 0:
        raise UserError(f"{name} holds no images")
    out = fit_uint8(images, channels, size)
    return ImageData(torch.from_numpy(np.ascontiguousarray(out)),
                     torch.from_numpy(labels) if labels is not None else None, name)


def _packed_hint(entries: list[Entry]) -> str:
    """A hint when an archive holds a standard dataset's files rather than images."""
    names = [e.parts[-1] for e in entries]
    if any(IDX_PATTERN.search(n) or n.startswith("data_batch_") or n.endswith("_X.bin") or n == "meta"
           for n in names):
        return "; it looks like a packed MNIST, CIFAR or STL-10 folder: unpack it and pass the folder"
    return ""


def _stamp(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except OSError:
        return [str(path), "missing"]
    return [str(path), st.st_size, st.st_mtime_ns]


class _Context:
    """One load: the source, the settings and the cache."""

    def __init__(self, path: Path, name: str, channels: int | None, image_size: int | None,
                 split: str | None, cache_root: Path | None, strict: bool, workers: int | None) -> None:
        self.path, self.name, self.channels, self.image_size = path, name, channels, image_size
        self.split, self.cache_root, self.strict, self.workers = split, cache_root, strict, workers
        self.display = printable(str(path))

    def slot(self, kind: str, fingerprint: Any) -> Slot:
        identity = {"kind": kind, "path": os.path.abspath(self.path), "split": self.split,
                    "channels": self.channels, "image_size": self.image_size}
        return Slot.for_source(self.cache_root, self.name, identity, fingerprint)

    def cached(self, slot: Slot) -> Cached | None:
        hit = slot.read()
        if hit is not None:
            log.info("%s: %d images %s from the cache %s%s", self.display, len(hit.images),
                     tuple(hit.images.shape[1:]), hit.path, f" ({hit.note})" if hit.note else "")
        return hit

    def folder(self) -> Cached:
        entries = list_folder(self.path, exclude=self.cache_root)
        slot = self.slot("image-folder", [[list(e.parts), list(e.stamp), e.error] for e in entries])
        return self.cached(slot) or self._decode(slot, entries)

    def archive(self) -> Cached:
        slot = self.slot("image-archive", _stamp(self.path))
        hit = self.cached(slot)
        if hit is not None:
            return hit
        with self._open_archive() as entries:
            return self._decode(slot, entries)

    @contextmanager
    def _open_archive(self) -> Iterator[list[Entry]]:
        try:
            if zipfile.is_zipfile(self.path):
                with zipfile.ZipFile(self.path) as zf:
                    yield list_zip(zf, self.path)
            else:
                with tarfile.open(self.path) as tf:
                    yield list_tar(tf, self.path)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
            raise UserError(f"cannot read archive {self.display}: {e}") from None

    def _decode(self, slot: Slot, entries: list[Entry]) -> Cached:
        layout = infer_layout([e.parts for e in entries], self.split, self.display)
        chosen = [entries[i] for i in layout.index]
        if not chosen:
            raise UserError(f"no image files found in {self.display}")
        note = ""
        size = self.image_size
        if size is None:
            size, note = auto_size(chosen)
        where = f"/{'/'.join(layout.prefix)}" if layout.prefix else ""
        labelled = f"{len(layout.classes)} classes" if layout.classes else "unlabelled"
        log.info("%s%s: decoding %d files (%s) to %s px%s", self.display, printable(where), len(chosen),
                 labelled, size, f"; {note}" if note else "")
        blocks = slot.shared(decoded_shape(chosen, size, self.channels), len(chosen))
        try:
            hit = slot.read()  # another process may have finished it since this one looked
            if hit is not None:
                return hit
            if blocks is None:
                return self._store(slot, chosen, layout, self._decode_here(chosen, size, slot), note)
            decode_blocks(chosen, size, self.channels, blocks, self.strict, self.workers, desc=f"decoding {self.name}")
            with blocks.joining():  # one process joins the blocks; the others find its cache
                hit = slot.read()
                if hit is not None:
                    return hit
                joined = blocks.join()
                if joined is None:
                    log.warning("%s: the decoded blocks were joined by a process that could not write the "
                                "cache; decoding again in this one", self.display)
                    return self._store(slot, chosen, layout, self._decode_here(chosen, size, slot), note)
                stored = self._store(slot, chosen, layout, Decoded(*joined), note)
                if stored.path is not None:  # cached: the blocks are no longer needed
                    blocks.remove()
                return stored
        finally:
            if blocks is not None:
                blocks.close()
            slot.cleanup()

    def _decode_here(self, chosen: list[Entry], size: int, slot: Slot) -> Decoded:
        """A decode in this process alone (no cache, or a cache it cannot share)."""
        return decode_entries(chosen, size, self.channels, slot.allocate, self.strict, self.workers,
                              desc=f"decoding {self.name}")

    def _store(self, slot: Slot, chosen: list[Entry], layout: Layout, decoded: Decoded, note: str) -> Cached:
        if decoded.count == 0:
            summary = skip_summary(decoded.skipped)
            raise UserError(f"no usable images in {self.display} ({summary}){_packed_hint(chosen)}")
        labels = None
        if layout.labels is not None:
            labels = np.asarray(layout.labels, dtype=np.int64)[decoded.kept]
        keep = 1 if self.channels is None and decoded.all_grey else None
        ids = ["/".join(chosen[i].parts) for i in decoded.kept]  # paths within the source
        return slot.write(Built(decoded.images, decoded.count, labels, layout.classes, decoded.skipped, keep,
                                note, ids))

    def standard(self, found: StandardFolder) -> Cached:
        slot = self.slot(found.kind, [_stamp(p) for p in found.files])
        hit = self.cached(slot)
        if hit is not None:
            return hit
        # One process converts (each would hold the whole set in memory); the others wait for it.
        with slot.building():
            hit = self.cached(slot)
            if hit is not None:
                return hit
            arrays = found.read()
            log.info("%s: converting %d images (%s)", self.display, arrays.count, found.kind)
            try:
                return slot.write(self._convert(arrays, slot))
            finally:
                slot.cleanup()

    def _convert(self, arrays: Arrays, slot: Slot) -> Built:
        """Channels and size for every part, chunk by chunk, into the slot's array."""
        if arrays.count == 0:
            raise UserError(f"{self.display} holds no images")
        first = arrays.parts[0]
        c = self.channels or int(first.shape[1])
        size = self.image_size or int(min(first.shape[-2:]))
        out = slot.allocate((arrays.count, c, size, size))
        row = 0
        with tqdm(total=arrays.count, unit="img", desc=f"converting {self.name}", dynamic_ncols=True) as bar:
            for part in arrays.parts:
                for start in range(0, len(part), CHUNK_ROWS):
                    chunk = np.asarray(part[start : start + CHUNK_ROWS])
                    out[row : row + len(chunk)] = fit_uint8(chunk, c, size)
                    row += len(chunk)
                    bar.update(len(chunk))
        return Built(out, row, arrays.labels, arrays.classes)
