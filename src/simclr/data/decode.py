"""Decoding a list of image files into one uint8 array, skipping (or, strictly, refusing)
broken files, with a progress bar."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from simclr.data.cache import reserve_rows
from simclr.data.images import BrokenImage, decode_image, probe_size
from simclr.data.listing import READ_ERRORS, Entry, read_error
from simclr.errors import UserError

log = logging.getLogger("simclr")

# Without a configured size, a folder of mixed sizes is brought to the median shorter side
# of a sample of its images, kept within these bounds (224 is the paper's ImageNet size).
SIZE_SAMPLE = 256
MIN_AUTO_SIZE = 8
MAX_AUTO_SIZE = 224

CHUNK = 256  # files read, then decoded in parallel, per step
# ... and at most this many bytes of them (or one file), so that the files read ahead of
# decoding hold bounded memory whatever their sizes (up to listing.MAX_FILE_BYTES each).
CHUNK_BYTES = 128 << 20
SAVE_EVERY_S = 10.0  # how often a resumable decode records its progress
Allocate = Callable[[tuple[int, ...]], np.ndarray]


@dataclass
class Resume:
    """Where a decode keeps its progress: `allocate` gives the output array and the state an
    interrupted decode saved (or None), `save` records the state."""

    allocate: Callable[[tuple[int, ...]], tuple[np.ndarray, dict[str, Any] | None]]
    save: Callable[[np.ndarray, dict[str, Any]], None]


@dataclass
class Decoded:
    """The outcome of decoding a list of files."""

    images: np.ndarray  # as allocated: (readable entries, C, S, S); rows [:count] are used
    count: int
    kept: list[int]  # for each used row, its position in the entries
    skipped: list[tuple[str, str]]  # (display path, reason)
    all_grey: bool  # every used image had equal channels


def default_workers() -> int:
    """Threads for decoding: Pillow releases the GIL while decoding, so threads scale for
    large images; small ones are dominated by Python overhead either way."""
    return max(1, min(4, os.cpu_count() or 1))


def auto_size(entries: Sequence[Entry]) -> tuple[int, str]:
    """The image size to use when none is configured, and a sentence saying how it was chosen:
    the median shorter side of up to SIZE_SAMPLE evenly spaced images, clamped to
    [MIN_AUTO_SIZE, MAX_AUTO_SIZE]."""
    readable = [e for e in entries if e.read is not None]
    step = max(1, len(readable) // SIZE_SAMPLE)
    sides = []
    for entry in readable[::step][:SIZE_SAMPLE]:
        try:
            dims = probe_size(entry.read()) if entry.read else None
        except READ_ERRORS:
            dims = None
        if dims is not None:
            sides.append(min(dims))
    if not sides:
        return MAX_AUTO_SIZE, "no readable image header; using the largest automatic size"
    median = int(np.median(sides))
    size = min(max(median, MIN_AUTO_SIZE), MAX_AUTO_SIZE)
    if min(sides) == max(sides) == size:
        return size, f"all sampled images are {size} px"
    return size, (f"median shorter side of {len(sides)} sampled images is {median} px; using "
                  f"{size} px (set data.image_size to choose)")


def decode_entries(
    entries: Sequence[Entry], size: int, channels: int | None, allocate: Allocate,
    strict: bool = False, workers: int | None = None, desc: str = "decoding", resume: Resume | None = None,
) -> Decoded:
    """Decode every entry to (C, size, size), C = channels or 3 when None, into an array
    from `allocate`. Broken files are skipped with their reason; with `strict`, the first
    one raises UserError. With `resume`, the progress is saved every SAVE_EVERY_S seconds and
    a decode that was interrupted continues where it was saved instead of starting over.

    The output has a row for each entry that can be read (entries skipped while listing take
    none); the disk space of a memory-mapped output is reserved chunk by chunk for the rows that
    decoded (`reserve_rows`), so files that are no images cost no cache space."""
    c = channels or 3
    shape = (sum(e.read is not None for e in entries), c, size, size)
    out, state = resume.allocate(shape) if resume is not None else (allocate(shape), None)
    kept: list[int] = list(state["kept"]) if state else []
    skipped: list[tuple[str, str]] = [(str(p), str(r)) for p, r in state["skipped"]] if state else []
    all_grey = bool(state["all_grey"]) if state else True
    first = int(state["next"]) if state else 0
    if first:
        log.info("%s: resuming an interrupted decode at file %d of %d", desc, first, len(entries))
    saved_at = time.monotonic()
    workers = workers or default_workers()

    def skip(entry: Entry, reason: str) -> None:
        if strict:
            raise UserError(f"{entry.display}: {reason} (data.strict is on: fix or remove the file)")
        skipped.append((entry.display, reason))

    def work(data: bytes) -> tuple[np.ndarray, bool] | str:
        try:
            return decode_image(data, size, channels)
        except BrokenImage as e:
            return e.reason

    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    bar = tqdm(total=len(entries), initial=first, unit="img", desc=desc, dynamic_ncols=True)
    try:
        # Past Pillow's pixel limit (but under twice it) Pillow only warns; make that an
        # error for every decoding thread (the filter list is process-wide).
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for chunk in _chunks(entries, first):
                ready: list[tuple[int, bytes]] = []
                for i in chunk:
                    entry = entries[i]
                    if entry.read is None:
                        skip(entry, entry.error or "unreadable")
                        continue
                    try:
                        ready.append((i, entry.read()))
                    except READ_ERRORS as e:
                        skip(entry, read_error(e, entry.display))
                datas = [d for _, d in ready]
                results = list(pool.map(work, datas)) if pool else [work(d) for d in datas]
                reserve_rows(out, len(kept), len(kept) + sum(not isinstance(r, str) for r in results))
                for (i, _), result in zip(ready, results, strict=True):
                    if isinstance(result, str):
                        skip(entries[i], result)
                        continue
                    array, grey = result
                    out[len(kept)] = array
                    kept.append(i)
                    all_grey = all_grey and grey
                bar.update(len(chunk))
                if resume is not None and time.monotonic() - saved_at >= SAVE_EVERY_S:
                    resume.save(out, {"next": chunk.stop, "kept": kept, "skipped": skipped, "all_grey": all_grey})
                    saved_at = time.monotonic()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return Decoded(out, len(kept), kept, skipped, all_grey)


def _chunks(entries: Sequence[Entry], first: int) -> Iterator[range]:
    """Consecutive ranges of entries from `first`: up to CHUNK of them, holding up to
    CHUNK_BYTES as listed (a larger file makes a chunk of its own)."""
    start = first
    while start < len(entries):
        stop, held = start + 1, entries[start].size
        while stop < len(entries) and stop - start < CHUNK and held + entries[stop].size <= CHUNK_BYTES:
            held += entries[stop].size
            stop += 1
        yield range(start, stop)
        start = stop
