"""Decoding a list of image files into uint8 arrays, skipping (or, strictly, refusing) broken
files, with a progress bar: in one process (`decode_entries`), or shared by every process that
decodes the same source into the same cache (`decode_blocks`)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from simclr.data.blocks import BlockResult, Blocks
from simclr.data.images import BrokenImage, decode_image, probe_size
from simclr.data.listing import READ_ERRORS, Entry, read_error
from simclr.data.mapped import reserve_rows
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
Allocate = Callable[[tuple[int, ...]], np.ndarray]


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


def decoded_shape(entries: Sequence[Entry], size: int, channels: int | None) -> tuple[int, int, int, int]:
    """The array a decode of `entries` needs: a row for each entry that can be read (entries
    skipped while listing take none), C = channels or 3 when None."""
    return (sum(e.read is not None for e in entries), channels or 3, size, size)


def decode_entries(
    entries: Sequence[Entry], size: int, channels: int | None, allocate: Allocate,
    strict: bool = False, workers: int | None = None, desc: str = "decoding",
) -> Decoded:
    """Decode every entry to (C, size, size), C = channels or 3 when None, into an array from
    `allocate`, in this process. Broken files are skipped with their reason; with `strict`, the
    first one raises UserError. (A cached source shares its decode: `decode_blocks`.)"""
    out = allocate(decoded_shape(entries, size, channels))
    with _Decoder(entries, size, channels, strict, workers) as decoder, _bar(len(entries), 0, desc) as bar:
        result = decoder.run(range(len(entries)), out, bar)
    return Decoded(out, result.count, result.kept, result.skipped, result.all_grey)


def decode_blocks(
    entries: Sequence[Entry], size: int, channels: int | None, blocks: Blocks,
    strict: bool = False, workers: int | None = None, desc: str = "decoding",
) -> None:
    """Decode the blocks of `entries` that no process has decoded or is decoding, then wait for
    the others' until every block is done (see `simclr.data.blocks`); the caller then joins them.
    The ranks of a torchrun job that call this on the same source share the work."""
    before = blocks.finished()
    if before:
        log.info("%s: %d of %d files already decoded (by an interrupted run, or another process now)",
                 desc, before, len(entries))
    here = 0
    with _Decoder(entries, size, channels, strict, workers) as decoder, _bar(len(entries), before, desc) as bar:
        for wait in (False, True):  # first the free blocks, then those other processes hold
            for block in range(blocks.count):
                with blocks.claim(block, wait) as mine:
                    if mine:
                        span = blocks.entries(block)
                        out = blocks.output(block, decoded_shape([entries[i] for i in span], size, channels)[0])
                        blocks.finish(block, out, decoder.run(span, out, bar))
                        here += 1
                if mine or wait:
                    bar.n = blocks.finished()
                    bar.refresh()
    # Shared with other processes: say how much this one did (alone, the bar said it all).
    log.log(logging.INFO if here < blocks.count else logging.DEBUG,
            "%s: %d of %d blocks decoded by this process", desc, here, blocks.count)


def _bar(total: int, initial: int, desc: str) -> tqdm:
    """The decode's progress bar, with an ETA; under torchrun only each node's first rank shows it."""
    quiet = os.environ.get("LOCAL_RANK", "0") != "0"
    return tqdm(total=total, initial=initial, unit="img", desc=desc, dynamic_ncols=True, disable=quiet)


class _Decoder:
    """Decodes spans of `entries` into arrays, reading a chunk of files at a time and decoding
    them on `workers` threads."""

    def __init__(self, entries: Sequence[Entry], size: int, channels: int | None, strict: bool,
                 workers: int | None) -> None:
        self.entries, self.size, self.channels, self.strict = entries, size, channels, strict
        workers = workers or default_workers()
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def run(self, span: range, out: np.ndarray, bar: tqdm | None = None) -> BlockResult:
        """Decode the entries in `span` into the first rows of `out` (one row per readable
        entry), skipping broken files; the disk space of a memory-mapped `out` is reserved chunk
        by chunk for the rows that decoded (`reserve_rows`), so files that are no images cost
        no cache space."""
        result = BlockResult(0, [], [], True)

        def skip(entry: Entry, reason: str) -> None:
            if self.strict:
                raise UserError(f"{entry.display}: {reason} (data.strict is on: fix or remove the file)")
            result.skipped.append((entry.display, reason))

        def work(data: bytes) -> tuple[np.ndarray, bool] | str:
            try:
                return decode_image(data, self.size, self.channels)
            except BrokenImage as e:
                return e.reason

        # Past Pillow's pixel limit (but under twice it) Pillow only warns; make that an
        # error for every decoding thread (the filter list is process-wide).
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for chunk in _chunks(self.entries, span):
                ready: list[tuple[int, bytes]] = []
                for i in chunk:
                    entry = self.entries[i]
                    if entry.read is None:
                        skip(entry, entry.error or "unreadable")
                        continue
                    try:
                        ready.append((i, entry.read()))
                    except READ_ERRORS as e:
                        skip(entry, read_error(e, entry.display))
                datas = [d for _, d in ready]
                results = list(self.pool.map(work, datas)) if self.pool else [work(d) for d in datas]
                reserve_rows(out, result.count, result.count + sum(not isinstance(r, str) for r in results))
                for (i, _), decoded in zip(ready, results, strict=True):
                    if isinstance(decoded, str):
                        skip(self.entries[i], decoded)
                        continue
                    array, grey = decoded
                    out[result.count] = array
                    result.count += 1
                    result.kept.append(i)
                    result.all_grey = result.all_grey and grey
                if bar is not None:
                    bar.update(len(chunk))
        return result


def _chunks(entries: Sequence[Entry], span: range) -> Iterator[range]:
    """Consecutive ranges of the entries in `span`: up to CHUNK of them, holding up to
    CHUNK_BYTES as listed (a larger file makes a chunk of its own)."""
    start = span.start
    while start < span.stop:
        stop, held = start + 1, entries[start].size
        while stop < span.stop and stop - start < CHUNK and held + entries[stop].size <= CHUNK_BYTES:
            held += entries[stop].size
            stop += 1
        yield range(start, stop)
        start = stop
