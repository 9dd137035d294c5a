"""Ctrl-C and SIGTERM (preemption) as a request to checkpoint and stop, not a crash."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger("simclr")


class SignalGuard:
    """The first SIGINT/SIGTERM sets `requested`: the loop checkpoints after the current step
    and stops. A second Ctrl-C raises KeyboardInterrupt at once; a repeated SIGTERM is ignored,
    since schedulers send it to every process of a job (SLURM signals torchrun and its workers,
    and torchrun forwards its own): the checkpoint the first one asked for must still be written."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = signum
        log.warning("\nsignal %d: saving a checkpoint after this step (Ctrl-C again to quit at once)", signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
