"""Feeding the training step: where the images live, and this rank's batches read ahead.

Two places for the uint8 images:
- on the training device (`data.device_resident`): a batch is one gather there, no host work;
  "auto" chooses it when the set fits DEVICE_SHARE of the device's free memory;
- on the host, in memory or memory-mapped from the decode cache: a background thread gathers
  the next batches' rows (into pinned memory for a GPU) while the step runs, and the step
  copies its batch without waiting. Host memory holds `depth` batches, whatever the set's size.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import torch

from simclr.data.rows import Rows

log = logging.getLogger("simclr")

# The share of a GPU's free memory the uint8 set may take under data.device_resident=auto: the
# rest is the network's (ResNet-50 at 224 px and batch 512 takes tens of GiB in activations).
DEVICE_SHARE = 0.25
DEPTH = 3  # batches read ahead of the step


def place(images: torch.Tensor | Rows, device: torch.device, setting: str) -> torch.Tensor | Rows:
    """The images where training reads them (`data.device_resident`), with a log line saying
    where and why. "true" on the CPU reads the whole set into memory."""
    setting = str(setting).lower()
    size = int(images.nbytes)
    if setting == "auto":
        if device.type != "cuda":  # host memory is the device's: the page cache serves the map
            log.info("data: %.2f GiB read from host memory per batch (device %s)", size / 2**30, device.type)
            return images
        free, _ = torch.cuda.mem_get_info(device)
        if size > DEVICE_SHARE * free:
            log.info("data: %.2f GiB of images stay on the host, read ahead per batch (more than %.0f%% of "
                     "the %.1f GiB free on %s; data.device_resident=true forces them on)",
                     size / 2**30, 100 * DEVICE_SHARE, free / 2**30, device)
            return images
        setting = "true"
        log.info("data: %.2f GiB of images on %s (within %.0f%% of its %.1f GiB free)",
                 size / 2**30, device, 100 * DEVICE_SHARE, free / 2**30)
    if setting == "true":
        return to_device(images, device)
    return images


def to_device(images: torch.Tensor | Rows, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """A copy on `device` (in memory, for the CPU: a memory-mapped set is read in whole), made in
    chunks of rows so the host never holds a second copy."""
    out = torch.empty(tuple(images.shape), dtype=images.dtype, device=device)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        out[start : start + chunk] = part.materialize() if isinstance(part, Rows) else part
    return out


def gather(images: torch.Tensor | Rows, rows: torch.Tensor, pin: bool = False) -> torch.Tensor:
    """images[rows] as a new tensor (in pinned memory with `pin`)."""
    base, index = (images.base, images.index[rows]) if isinstance(images, Rows) else (images, rows)
    if base.device.type != "cpu":  # via pinned memory: a pageable copy would make the host wait
        return base[index.pin_memory().to(base.device, non_blocking=True)]
    out = torch.empty((len(index), *base.shape[1:]), dtype=base.dtype, pin_memory=pin)
    return torch.index_select(base, 0, index, out=out)


class Prefetcher:
    """The batches `batches` (each a (rows, images[rows]) pair, rows in `order`), gathered by a
    background thread `depth` ahead, copied to `device` as the step asks for them. Iterate it
    once; `close()` (or leaving a `with` block) stops the thread."""

    def __init__(self, images: torch.Tensor | Rows, batches: list[torch.Tensor], device: torch.device,
                 depth: int = DEPTH) -> None:
        self.images, self.batches, self.device = images, batches, device
        self.pin = device.type == "cuda" and torch.cuda.is_available()
        self.ahead = images.device.type == "cpu"  # resident sets need no reading ahead
        self.queue: queue.Queue[tuple[torch.Tensor, torch.Tensor] | BaseException] = queue.Queue(depth)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if self.ahead and batches:
            self.thread = threading.Thread(target=self._read, name="simclr-prefetch", daemon=True)
            self.thread.start()

    def _read(self) -> None:
        try:
            for rows in self.batches:
                if not self._put((rows, gather(self.images, rows, self.pin))):
                    return
        except BaseException as e:  # handed to the training thread, which raises it
            self._put(e)

    def _put(self, item: tuple[torch.Tensor, torch.Tensor] | BaseException) -> bool:
        """Queue `item` unless asked to stop first (the training thread may be gone)."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for rows in self.batches:
            if not self.ahead:
                yield rows, gather(self.images, rows)
                continue
            item = self.queue.get()
            if isinstance(item, BaseException):
                raise item
            got, x = item
            assert got is rows
            # From pinned memory the copy is queued on the device without waiting for it.
            yield rows, x.to(self.device, non_blocking=self.pin)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
