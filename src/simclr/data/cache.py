"""The decode-once cache: decoded uint8 images in a memory-mapped file per source and settings.

A slot (a folder under the cache directory) is named by the source's identity (kind, resolved
path, split) and the preprocessing settings (channels, size, cache format version). Inside,
`meta.json` records a fingerprint of the source's files (sizes, modification times, modes)
and of the Pillow version that decoded them; a load whose fingerprint differs rebuilds the
slot in place. Files are written under temporary names and renamed, `meta.json` last, so an
interrupted build is never read. The cache directory can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL

from simclr.data.blocks import Blocks
from simclr.data.locks import exclusive
from simclr.data.mapped import new_mapped
from simclr.env import env_dir

log = logging.getLogger("simclr")

CACHE_VERSION = 2  # bump when decoding changes what a cached image holds
COPY_ROWS = 4096  # rows copied per step when reducing channels


def default_cache_dir() -> Path:
    """$SIMCLR_CACHE, else ~/.cache/simclr."""
    return env_dir("SIMCLR_CACHE") or Path.home() / ".cache" / "simclr"


def cache_root(cache_dir: str | Path | None) -> Path:
    """Where a source's cache lives: `cache_dir` (data.cache_dir) when set, else the default."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def digest(value: Any) -> str:
    """A stable hash of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Built:
    """What a source's builder produced into an array from `Slot.allocate`."""

    images: np.ndarray  # as allocated; rows [:count] are used
    count: int
    labels: np.ndarray | None
    classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    keep_channels: int | None = None  # keep only the first channels (an all-grey set: 1)
    note: str = ""  # how the size was chosen, etc.; logged again on cache hits
    ids: list[str] | None = None  # each used row's file path within the source, when it has files


@dataclass
class Cached:
    """A finished dataset: images (N, C, S, S) uint8, memory-mapped when cached."""

    images: np.ndarray
    labels: np.ndarray | None
    classes: list[str] | None
    skipped: list[tuple[str, str]]
    note: str
    path: Path | None  # the slot folder, or None when nothing was stored
    ids: list[str] | None = None


class Slot:
    """One source + settings in the cache; `folder` None means caching is off (RAM only)."""

    def __init__(self, folder: Path | None, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self._tmp: list[Path] = []

    @classmethod
    def for_source(cls, cache_dir: Path | None, name: str, identity: dict[str, Any],
                   fingerprint: Any) -> Slot:
        key = digest({"version": CACHE_VERSION, **identity})
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40] or "data"
        folder = cache_dir / f"{slug}-{key[:16]}" if cache_dir is not None else None
        # Another Pillow may decode the same files differently (resampling, colour conversion):
        # its version is part of the fingerprint, so an upgrade rebuilds the slot in place.
        return cls(folder, digest({"files": fingerprint, "pillow": PIL.__version__}))

    def read(self) -> Cached | None:
        """The cached dataset if it is complete and its fingerprint matches, else None."""
        if self.folder is None:
            return None
        try:
            meta = json.loads((self.folder / "meta.json").read_text())
            if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != self.fingerprint:
                return None
            shape = tuple(int(s) for s in meta["shape"])
            path = self.folder / "images.u8"
            if path.stat().st_size != int(np.prod(shape)):
                return None
            # Copy-on-write: the array is writable for torch, the file is never modified.
            images = np.memmap(path, dtype=np.uint8, mode="c", shape=shape)
            labels = np.load(self.folder / "labels.npy") if meta["labelled"] else None
        except (OSError, ValueError, KeyError, TypeError) as e:  # missing or damaged: rebuild
            log.debug("cache slot %s unusable (%s); rebuilding", self.folder, e)
            return None
        skipped = [(str(p), str(r)) for p, r in meta.get("skipped", [])]
        ids = meta.get("ids")
        return Cached(images, labels, meta.get("classes"), skipped, meta.get("note", ""), self.folder, ids)

    def shared(self, shape: tuple[int, ...], n_entries: int) -> Blocks | None:
        """The decode of this slot that every process needing it shares and that resumes after
        an interruption (`Blocks`), or None without a cache folder: then `allocate`."""
        if self.folder is None or int(np.prod(shape)) == 0:
            return None
        try:
            return Blocks.open(self.folder, self.fingerprint, shape, n_entries)
        except OSError as e:
            self._uncached(e, shape)
            return None

    @contextmanager
    def building(self) -> Iterator[None]:
        """Held while one process builds this slot, so that the others wait for it rather than
        build it too (nothing to hold when caching is off)."""
        if self.folder is None:
            yield
            return
        with exclusive(self.folder / "build.lock"):
            yield

    def allocate(self, shape: tuple[int, ...], reserve: bool = True) -> np.ndarray:
        """A writable uint8 array of `shape`: a memory-mapped temporary file in the slot (its
        space reserved unless `reserve` is off, see `new_mapped`), or memory when caching is off
        or the cache folder cannot take it."""
        if self.folder is not None and int(np.prod(shape)) > 0:
            tmp = self.folder / f"images.u8.tmp-{os.getpid()}-{len(self._tmp)}"
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._tmp.append(tmp)
                return new_mapped(tmp, shape, reserve)
            except OSError as e:
                return self._uncached(e, shape)
        return np.empty(shape, dtype=np.uint8)

    def _uncached(self, e: OSError, shape: tuple[int, ...]) -> np.ndarray:
        """Caching off from here on (the folder cannot take the file): memory instead."""
        log.warning("cannot write the image cache in %s (%s); decoding into memory "
                    "only, so the next run decodes again", self.folder, e.strerror or e)
        self.folder = None
        return np.empty(shape, dtype=np.uint8)

    def write(self, built: Built) -> Cached:
        """Store `built` (rows [:count], channels [:keep_channels]) and return it, memory-mapped
        from the slot when caching is on."""
        rows = built.images[: built.count]
        if built.keep_channels is not None:
            rows = rows[:, : built.keep_channels]
        labels = built.labels[: built.count] if built.labels is not None else None
        if self.folder is None or not isinstance(built.images, np.memmap):
            return Cached(np.ascontiguousarray(rows), labels, built.classes, built.skipped,
                          built.note, None, built.ids)
        try:
            final = self._finish_images(built.images, rows)
            # Map our own file before renaming it: another process building the same slot
            # (ranks of one distributed run) may replace the name, never this inode.
            images = np.memmap(final, dtype=np.uint8, mode="c", shape=rows.shape)
            (self.folder / "meta.json").unlink(missing_ok=True)
            os.replace(final, self.folder / "images.u8")
            if labels is not None:
                # Under a temporary name and renamed, like every file here: a reader (another
                # rank, say) never sees a torn labels.npy.
                with self._temporary(self.folder / "labels.npy") as tmp, open(tmp, "wb") as f:
                    np.save(f, labels.astype(np.int64))
            meta = {
                "version": CACHE_VERSION, "fingerprint": self.fingerprint, "shape": list(rows.shape),
                "labelled": labels is not None, "classes": built.classes,
                "skipped": built.skipped, "note": built.note, "ids": built.ids,
            }
            with self._temporary(self.folder / "meta.json") as tmp:
                tmp.write_text(json.dumps(meta))
        except OSError as e:
            log.warning("cannot write the image cache in %s (%s); the next run decodes again",
                        self.folder, e.strerror or e)
            return Cached(np.array(rows), labels, built.classes, built.skipped, built.note, None, built.ids)
        return Cached(images, labels, built.classes, built.skipped, built.note, self.folder, built.ids)

    def cleanup(self) -> None:
        """Remove temporary files left by an unfinished build (a shared decode's blocks stay, for
        the next run to resume)."""
        for tmp in self._tmp:
            tmp.unlink(missing_ok=True)
        self._tmp.clear()

    def _finish_images(self, allocated: np.memmap, rows: np.ndarray) -> Path:
        """The file holding exactly `rows`: the allocated file cut to length, or a copy when
        channels are dropped."""
        allocated.flush()
        source = Path(str(allocated.filename))
        if rows.shape[1:] == allocated.shape[1:]:
            del allocated
            os.truncate(source, rows.nbytes)
            return source
        target = self.folder / f"images.u8.tmp-{os.getpid()}-{len(self._tmp)}" if self.folder else source
        self._tmp.append(target)
        out = new_mapped(target, rows.shape)  # reserved: a full disk raises here, no SIGBUS
        for start in range(0, len(rows), COPY_ROWS):
            out[start : start + COPY_ROWS] = rows[start : start + COPY_ROWS]
        out.flush()
        del out
        return target

    @contextmanager
    def _temporary(self, path: Path) -> Iterator[Path]:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self._tmp.append(tmp)
        yield tmp
        os.replace(tmp, path)
