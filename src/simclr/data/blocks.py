"""A first decode that every process needing it shares, and that resumes after an interruption.

The entries of a source are cut into blocks. A process claims a block with an exclusive lock
on the block's claim file, decodes it into a file of its own, and writes a marker saying what
the block holds; then it claims the next free block. The ranks of a torchrun job (or two runs
started on the same data) so split the work without talking to each other: the cache folder
is their only meeting point, which also holds when every node has a cache of its own (each
node's ranks share their node's). A process that dies releases its locks, so its block is
claimed again; a decode stopped by Ctrl-C resumes with the blocks it finished.

Files of their own per block, not rows of one shared map: on a shared file system two nodes
writing neighbouring rows of one mapped file can write back each other's stale pages.

When every block is done, one process joins them into the images file (in entry order, rows of
skipped files left out, so the cache is the same whoever decoded what) while the others wait
on the join lock, then read the finished cache. The join deletes each block once copied and
records how far it got, so the disk holds the set about once, and a stopped join resumes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from simclr.data.locks import exclusive
from simclr.data.mapped import new_mapped, reserve_rows

try:
    import fcntl
except ImportError:  # Windows: no shared decode, every process builds its own copy
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("simclr")

BLOCK_ENTRIES = 2048  # entries per block: a few seconds of decoding, so work spreads and resumes finely
BLOCK_BYTES = 256 << 20  # ... and at most this many decoded bytes (fewer entries for large images)
JOIN_ROWS = 4096  # rows copied per step when joining blocks


@dataclass
class BlockResult:
    """What one decoded block holds: its first `count` rows are the entries `kept` (positions
    in the whole entry list), in order; `skipped` are (display path, reason)."""

    count: int
    kept: list[int]
    skipped: list[tuple[str, str]]
    all_grey: bool

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "kept": self.kept, "skipped": self.skipped, "all_grey": self.all_grey}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BlockResult:
        return cls(int(d["count"]), [int(i) for i in d["kept"]], [(str(p), str(r)) for p, r in d["skipped"]],
                   bool(d["all_grey"]))


def block_size(n_entries: int, row_bytes: int) -> int:
    """Entries per block: BLOCK_ENTRIES, fewer when their rows would pass BLOCK_BYTES."""
    return max(1, min(BLOCK_ENTRIES, BLOCK_BYTES // max(row_bytes, 1), n_entries))


class Blocks:
    """The blocks of one decode in a cache slot's `decoding/` folder (see the module text).
    `open` joins the decode of the same plan that is under way or was interrupted, or starts
    one; the caller holds it until the slot is written, then `close`s it."""

    def __init__(self, folder: Path, plan: dict[str, Any], lock: IO[str]) -> None:
        self.folder, self.plan, self._lock = folder, plan, lock
        self.size: int = plan["block"]
        self.n_entries: int = plan["entries"]
        self.count = -(-self.n_entries // self.size)

    @classmethod
    def open(cls, slot_folder: Path, fingerprint: str, shape: tuple[int, ...], n_entries: int) -> Blocks | None:
        """The shared decode of `shape` (readable entries, C, S, S) for `n_entries` entries of
        the source `fingerprint` names; None when this platform has no file locks, or when
        another process is decoding a different version of the source (the caller then decodes
        a copy of its own, as a process without a cache would)."""
        if fcntl is None:
            return None
        row_bytes = int(np.prod(shape[1:]))
        plan = {"fingerprint": fingerprint, "shape": list(shape), "entries": n_entries,
                "block": block_size(n_entries, row_bytes)}
        folder = slot_folder / "decoding"
        slot_folder.mkdir(parents=True, exist_ok=True)
        lock = open(slot_folder / "decode.lock", "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # others are decoding: join them if it is this plan
            fcntl.flock(lock, fcntl.LOCK_SH)
        else:
            if _read_json(folder / "plan.json") != plan:  # none yet, or another source's
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                _write_json(folder / "plan.json", plan)
            fcntl.flock(lock, fcntl.LOCK_SH)  # others may join now
        if _read_json(folder / "plan.json") != plan:
            lock.close()
            return None
        return cls(folder, plan, lock)

    def close(self) -> None:
        """Leave the decode (after the slot is written, or on an error)."""
        self._lock.close()

    def entries(self, block: int) -> range:
        return range(block * self.size, min((block + 1) * self.size, self.n_entries))

    def done(self, block: int) -> BlockResult | None:
        saved = _read_json(self.folder / f"{block}.json")
        return BlockResult.from_json(saved) if saved is not None else None

    def finished(self) -> int:
        """How many entries lie in blocks already done (by any process)."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:  # joined and removed by another process: all done
            return self.n_entries
        return sum(len(self.entries(b)) for b in range(self.count) if f"{b}.json" in names)

    @contextmanager
    def claim(self, block: int, wait: bool = False) -> Iterator[bool]:
        """Whether this process got `block` to decode: it is not done and no other process holds
        it. With `wait`, first wait for a process that holds it (then it is usually done)."""
        try:
            f = open(self.folder / f"{block}.claim", "a")  # noqa: SIM115 - closed below
        except FileNotFoundError:  # every block done, joined and removed by another process
            yield False
            return
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            yield self.done(block) is None

    def output(self, block: int, rows: int) -> np.ndarray:
        """A new, sparse file for a block's rows (the decoder reserves rows as it writes them)."""
        shape = (rows, *self.plan["shape"][1:])
        if rows == 0:
            return np.empty(shape, dtype=np.uint8)
        return new_mapped(self.folder / f"{block}.u8", shape, reserve=False)

    def finish(self, block: int, images: np.ndarray, result: BlockResult) -> None:
        """Mark `block` done; its rows reach the file first, so a marker never promises rows the
        file lacks."""
        if isinstance(images, np.memmap):
            images.flush()
        _write_json(self.folder / f"{block}.json", result.to_json())

    def joining(self) -> AbstractContextManager[None]:
        """Held by the one process that joins the blocks; the others wait here for it."""
        return exclusive(self.folder.parent / "join.lock")

    def join(self) -> tuple[np.ndarray, int, list[int], list[tuple[str, str]], bool] | None:
        """Copy every block's rows, in order, into `decoding/images.u8`; returns (that array, its
        rows used, kept entries, skipped, all grey). Each block's file is deleted once copied
        and the progress recorded, so a stopped join resumes. None when the blocks are gone: a
        process joined them, then could not write the cache (a full disk)."""
        done = [self.done(b) for b in range(self.count)]
        results = [d for d in done if d is not None]
        if len(results) != self.count:
            return None
        shape = tuple(self.plan["shape"])
        path = self.folder / "images.u8"
        state = _read_json(self.folder / "joined.json")
        if state is None:
            state = {"blocks": 0}
            out = new_mapped(path, shape, reserve=False)
        elif path.exists():
            out = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
        else:
            return None
        if any(results[b].count and not (self.folder / f"{b}.u8").exists() for b in range(state["blocks"], self.count)):
            return None
        row = 0
        for b, result in enumerate(results):
            if b >= state["blocks"]:
                if result.count:
                    source = np.memmap(self.folder / f"{b}.u8", dtype=np.uint8, mode="r",
                                       shape=(result.count, *shape[1:]))
                    reserve_rows(out, row, row + result.count)
                    for start in range(0, result.count, JOIN_ROWS):
                        stop = min(start + JOIN_ROWS, result.count)
                        out[row + start : row + stop] = source[start:stop]
                    del source
                    out.flush()
                _write_json(self.folder / "joined.json", {"blocks": b + 1})
                (self.folder / f"{b}.u8").unlink(missing_ok=True)
            row += result.count
        kept = [i for r in results for i in r.kept]
        skipped = [s for r in results for s in r.skipped]
        return out, row, kept, skipped, all(r.all_grey for r in results)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value: Any) -> None:
    """Written whole or not at all (a reader never sees half a marker)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
