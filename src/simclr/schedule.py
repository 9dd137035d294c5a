"""How long and how wide a run is when the config leaves it to the data: the global batch, the
number of epochs, the warm-up, the learning rate, and a time budget (`simclr train --time 10m`).

Contrastive learning needs many more optimizer steps than supervised training, and more so with
small batches and small data (SimCLR, section 3 and figure 9). A fixed 100 epochs at batch 256
gives a set of 500 images two steps an epoch, 200 in all; so the defaults size the batch to the
set and the epochs to a minimum number of steps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from simclr.errors import UserError
from simclr.optim import scaled_lr

if TYPE_CHECKING:
    from simclr.config import Config, OptimConfig

MAX_BATCH = 256  # the default global batch of a large set (the paper's smallest well-studied one)
STEPS_PER_EPOCH = 8  # the default batch is at most a 1/8 of the set: an epoch has 8 steps or more
MIN_EPOCHS = 100  # the paper's shortest schedule
MIN_STEPS = 2000  # ...but never fewer optimizer steps than this
WARMUP_EPOCHS, WARMUP_SHARE = 10, 0.1  # the paper's 10 epochs of 100: at most a tenth of the run
# The held-out share when none is configured. An accuracy measured on n samples has a standard
# error of at most 0.5/sqrt(n): 1.6 points at 1,000, 0.5 at 10,000. A small set is halved (its
# estimate needs the samples more than pretraining does); from 2,000 samples on, 1,000 are held
# out, then 10 % once that is more, and never more than 10,000: a large set keeps 90-99 % of its
# samples for pretraining and its estimate stays within half a point.
MIN_HELD_OUT, MAX_HELD_OUT, HELD_OUT_SHARE = 1000, 10_000, 0.1


def held_out_size(n: int) -> float | int:
    """What `stratified_split` holds out of n labelled samples by default: a share or a count."""
    if n / 2 <= MIN_HELD_OUT:
        return 0.5
    return int(min(MAX_HELD_OUT, max(MIN_HELD_OUT, HELD_OUT_SHARE * n)))


# A labelled set this small is split in halves for evaluation (`held_out_size`); it pretrains on
# both halves, without the held-out labels, by default.
SMALL_SET = 2 * MIN_HELD_OUT


# optim.lr, lr_scaling and weight_decay when left to the optimizer. LARS: the paper's rule for
# small batches and long training (appendix B.1), 0.075 × sqrt(batch): 4.8 at 4096, as the
# linear rule gives there, and 0.6 at 64 where the linear one gives 0.075.
OPTIMIZER_DEFAULTS: dict[str, tuple[float, str, float]] = {
    "lars": (0.075, "sqrt", 1e-6),
    "sgd": (0.075, "sqrt", 1e-6),
    "adamw": (1e-3, "none", 0.01),  # a Transformer from scratch (BERT-style settings)
}


def default_batch(samples: int, world: int = 1) -> int:
    """The largest power of two that is at most 1/STEPS_PER_EPOCH of the set and MAX_BATCH, and a
    multiple of the number of processes (each takes an equal share)."""
    batch = min(MAX_BATCH, 1 << max(1, int(math.log2(max(2, samples // STEPS_PER_EPOCH)))))
    return max(world, batch - batch % world)


def default_epochs(steps_per_epoch: int, floor: tuple[int, int] = (MIN_EPOCHS, MIN_STEPS)) -> int:
    """At least `floor` = (epochs, optimizer steps): by default MIN_EPOCHS and MIN_STEPS."""
    return max(floor[0], math.ceil(floor[1] / steps_per_epoch))


def default_warmup(steps_per_epoch: int, total_steps: int) -> int:
    """The paper's 10 epochs of linear warm-up, at most a tenth of the run."""
    return min(WARMUP_EPOCHS * steps_per_epoch, round(WARMUP_SHARE * total_steps))


def budget_epochs(seconds: float, seconds_per_step: float, steps_per_epoch: int) -> int:
    """As many whole epochs as fit in `seconds` at the measured step time (at least one)."""
    return max(1, int(seconds / (seconds_per_step * steps_per_epoch)))


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds in "90s", "10m", "1.5h", "1h30m" or a plain number of seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise UserError(f"time budget {text!r} is not a duration such as 90s, 10m or 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UserError(f"time budget must be positive, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Schedule:
    """A run's length and learning rate, and one line of why (logged)."""

    batch_size: int
    epochs: int
    steps_per_epoch: int
    warmup_steps: int
    peak_lr: float
    batch_why: str
    why: str

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def pretrain_on(setting: str, modality_default: str, labelled: int, split_from_source: bool) -> str:
    """data.pretrain_on with auto chosen by the modality's `pretrain_default`: "all" or "train"
    as it says, or for "small", "all" for a set of at most SMALL_SET samples split in halves."""
    if setting != "auto":
        return setting
    if modality_default == "small":
        return "all" if split_from_source and labelled <= SMALL_SET else "train"
    return modality_default


def optimizer_settings(o: OptimConfig, preferred: str) -> OptimConfig:
    """optim with auto and None resolved: the modality's `preferred` optimizer, its defaults."""
    name = preferred if o.name == "auto" else o.name
    lr, scaling, decay = OPTIMIZER_DEFAULTS[name]
    return replace(o, name=name, lr=lr if o.lr is None else o.lr,
                   lr_scaling=scaling if o.lr_scaling == "auto" else o.lr_scaling,
                   weight_decay=decay if o.weight_decay is None else o.weight_decay)


def plan(cfg: Config, samples: int, world: int = 1, seconds_per_step: float | None = None,
         budget_s: float | None = None, batch_why: str | None = None,
         floor: tuple[int, int] = (MIN_EPOCHS, MIN_STEPS)) -> Schedule:
    """The run's schedule for `samples` pretraining inputs. `cfg.optim` must be resolved
    (`optimizer_settings`); with `seconds_per_step` the epochs are what fits in `budget_s`.
    `batch_why`: why the batch is what it is, when `cfg.batch_size` was already chosen.
    `floor`: the modality's least (epochs, steps) of a default run (`Modality.min_schedule`)."""
    o = cfg.optim
    assert o.lr is not None, "resolve the optimizer's defaults first"
    batch = cfg.batch_size or default_batch(samples, world)
    if samples < batch:
        raise UserError(f"{samples} training inputs is fewer than one batch ({batch}); lower batch_size or add data")
    steps_per_epoch = samples // batch  # the last partial batch is dropped
    if cfg.epochs is not None:
        epochs, why = cfg.epochs, "epochs as set"
    elif seconds_per_step is not None and budget_s is not None:
        epochs = budget_epochs(budget_s, seconds_per_step, steps_per_epoch)
        why = f"what fits in {cfg.time_budget} at {seconds_per_step:.3g} s a step, measured here"
    else:
        epochs = default_epochs(steps_per_epoch, floor)
        why = f"at least {floor[0]} epochs and {floor[1]:,} steps"
    total = epochs * steps_per_epoch
    warmup = default_warmup(steps_per_epoch, total) if o.warmup_steps is None else o.warmup_steps
    if batch_why is None:
        batch_why = "as set" if cfg.batch_size else f"≤ {MAX_BATCH} and ≤ 1/{STEPS_PER_EPOCH} of {samples:,} inputs"
    rule = {"sqrt": f" = {o.lr:g} × √{batch}", "linear": f" = {o.lr:g} × {batch}/256", "none": " (not scaled)"}[
        o.lr_scaling]
    peak = scaled_lr(o.lr, batch, o.lr_scaling)
    return Schedule(batch, epochs, steps_per_epoch, warmup, peak, batch_why,
                    f"schedule: {total:,} steps = {epochs} epochs × {steps_per_epoch} at global batch {batch} "
                    f"({batch_why}; {why}); {o.name} lr {peak:.3g}{rule}, warm-up {warmup:,} steps")
