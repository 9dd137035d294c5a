"""What a run reports while it trains: metrics.jsonl, TensorBoard scalars, the progress bar."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from simclr.extras import require, wanted

log = logging.getLogger("simclr")


def logged_step(line: str, path: Path) -> float:
    """The step of a metrics.jsonl line; infinity (dropped on resume) for an empty line or one
    a kill cut mid-write, which is logged."""
    if not line:
        return math.inf
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError
        log.warning("%s: dropped an unreadable line (a run killed mid-write?): %.60s", path, line)
        return math.inf


def tensorboard_writer(folder: Path, start_step: int, setting: bool | None) -> Any:
    """A SummaryWriter, or None: when `setting` is False, or when left to the install (None) and the
    [tensorboard] extra is not there (said once; metrics.jsonl and the report have it all)."""
    if not wanted("tensorboard", setting):
        return None
    writer = require("tensorboard", "torch.utils.tensorboard").SummaryWriter
    return writer(str(folder), purge_step=start_step + 1 if start_step else None)


class MetricsLogger:
    """Rank 0 writes; other ranks get a disabled logger with the same interface."""

    def __init__(self, out: Path, every: int, total_steps: int, start_step: int, enabled: bool = True,
                 tensorboard: bool | None = None) -> None:
        self.enabled = enabled
        self.every = every
        self.images = 0
        self.since = self.start = time.perf_counter()
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=not enabled)
        if not enabled:
            return
        path = out / "metrics.jsonl"
        if path.exists():  # resuming: drop lines logged after the checkpoint being resumed
            kept = [line for line in path.read_text().splitlines() if logged_step(line, path) <= start_step]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a")  # noqa: SIM115 - open for the whole run
        self.writer = tensorboard_writer(out / "tensorboard", start_step, tensorboard)

    def due(self, step: int, last_of_epoch: bool) -> bool:
        return step % self.every == 0 or last_of_epoch

    def count(self, n_images: int) -> None:
        self.images += n_images
        self.bar.update(1)

    def log(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """One metrics.jsonl line: step, epoch, the values, and images/s since the last line."""
        now = time.perf_counter()
        rate = self.images / max(now - self.since, 1e-9)
        self.images, self.since = 0, now
        if not self.enabled:
            return
        # elapsed_s: seconds of this process's training so far (time-to-accuracy curves).
        row = {"step": step, "epoch": epoch, **values, "images_per_s": rate, "elapsed_s": now - self.start}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for key, value in row.items():
            if self.writer is not None and key not in ("step", "epoch", "elapsed_s"):
                self.writer.add_scalar(f"train/{key}", value, step)
        postfix = {"loss": f"{values['loss']:.4f}", "lr": f"{values['lr']:.3g}", "img_s": f"{rate:.0f}"}
        if "knn" in values:
            postfix["knn"] = f"{values['knn']:.3f}"
        self.bar.set_postfix(postfix)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.bar.set_description(f"epoch {epoch}/{epochs}")

    def close(self) -> None:
        self.bar.close()
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Encoders as rows, metrics as columns; missing or NaN cells shown as '-'."""
    metrics = list(dict.fromkeys(m for row in results.values() for m in row))
    widths = {m: max(15, len(m) + 1) for m in metrics}  # long names (finetune_head1_10pct) stay apart
    lines = [f"{'encoder':<12}" + "".join(f"{m:>{widths[m]}}" for m in metrics)]
    for name, row in results.items():
        cells = (
            f"{row[m]:>{widths[m]}.4f}" if m in row and row[m] is not None and not math.isnan(row[m])
            else f"{'-':>{widths[m]}}"
            for m in metrics
        )
        lines.append(f"{name:<12}" + "".join(cells))
    return "\n".join(lines)


HEADLINE = ("linear", "knn", "few_shot_5")  # the metrics a baseline is held to in `verdict`


def run_verdict(results: dict[str, dict[str, float]], run_dir: Path) -> str | None:
    """`verdict` for a run directory, its next step informed by the run's config.yaml if that reads."""
    from simclr.config import load_config
    from simclr.errors import UserError

    config = run_dir / "config.yaml"
    try:
        pretrain_on = load_config(config).data.pretrain_on if config.is_file() else None
    except UserError:
        pretrain_on = None
    return verdict(results, pretrain_on)


def verdict(results: dict[str, dict[str, float]], pretrain_on: str | None = None) -> str | None:
    """One line when a baseline (raw inputs, random init; not the supervised reference) beats
    SimCLR on a headline metric: which, by how much, and the most useful next step. None when
    SimCLR is at least as good everywhere."""
    ours = results.get("simclr", {})
    lost = []
    for name, row in results.items():
        if name in ("simclr", "supervised"):
            continue
        for m in HEADLINE:
            a, b = ours.get(m), row.get(m)
            if a is not None and b is not None and not (math.isnan(a) or math.isnan(b)) and b > a:
                lost.append(f"{name} beats SimCLR on {m} ({b:.3f} vs {a:.3f})")
    if not lost:
        return None
    step = ("pretrain on the held-out inputs too (data.pretrain_on=all; their labels stay unused), "
            "then add unlabelled data" if pretrain_on == "train" else "add unlabelled data")
    return f"{'; '.join(lost)}. Next: {step}, or train longer (--epochs, --time) with another recipe (docs/defaults.md)"
