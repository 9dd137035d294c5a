"""Pretraining: data → two augmented views → encoder f → head g → NT-Xent → optimizer."""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from simclr import __version__
from simclr.augment import ImageAugment, two_views
from simclr.checkpoint import git_revision, save_checkpoint, save_encoder
from simclr.config import AugmentConfig, Config, save_config, to_dict
from simclr.data import ImageData, load_images
from simclr.errors import UserError
from simclr.evaluate import evaluate_run, stratified_split
from simclr.loss import nt_xent
from simclr.model import CIFAR_STEM_MAX_SIZE, SimCLR, build_encoder, build_model
from simclr.optim import build_optimizer, lr_at, scaled_lr

log = logging.getLogger("simclr")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def build_augment(cfg: AugmentConfig, image_size: int) -> ImageAugment:
    """The paper's recipe, or its CIFAR variant (colour strength 0.5, no blur) for small images."""
    recipe = cfg.recipe
    if recipe == "auto":
        recipe = "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    strength, blur = (0.5, 0.0) if recipe == "cifar" else (1.0, 0.5)
    return ImageAugment(
        size=image_size,
        min_scale=cfg.min_scale,
        flip_prob=cfg.flip_prob,
        color_jitter_strength=strength if cfg.color_jitter_strength is None else cfg.color_jitter_strength,
        color_jitter_prob=cfg.color_jitter_prob,
        grayscale_prob=cfg.grayscale_prob,
        blur_prob=blur if cfg.blur_prob is None else cfg.blur_prob,
    )


def make_run_dir(cfg: Config) -> Path:
    out = Path(cfg.out) if cfg.out else Path("runs") / f"{Path(cfg.data.source).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output directory {out}: {e.strerror or e}") from None
    return out


@dataclass
class Run:
    """Everything the loop needs, built once by `setup`."""

    cfg: Config
    out: Path
    device: torch.device
    data: ImageData  # the full dataset (labels, if any, only for evaluation)
    train_index: np.ndarray  # rows used for pretraining
    test_index: np.ndarray | None  # held-out rows for evaluation (None: no labels)
    model: SimCLR
    augment: ImageAugment
    optimizer: torch.optim.Optimizer
    peak_lr: float
    total_steps: int
    warmup_steps: int
    steps_per_epoch: int


def setup(cfg: Config) -> Run:
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = make_run_dir(cfg)
    data = load_images(cfg.data.source, cfg.data.channels, cfg.data.image_size)
    if data.labels is not None:
        train_index, test_index = stratified_split(data.labels.numpy(), cfg.data.test_fraction, cfg.seed)
    else:
        train_index, test_index = np.arange(len(data)), None
    if len(train_index) < cfg.batch_size:
        raise UserError(
            f"{len(train_index)} training images is fewer than one batch ({cfg.batch_size}); "
            "lower batch_size or add data"
        )
    model = build_model(
        cfg.model.encoder, data.channels, data.image_size, cfg.model.cifar_stem,
        cfg.model.proj_dim, cfg.model.head_version,
    ).to(device)
    peak_lr = scaled_lr(cfg.optim.lr, cfg.batch_size, cfg.optim.lr_scaling)
    optimizer = build_optimizer(model, cfg.optim.name, peak_lr, cfg.optim.weight_decay, cfg.optim.momentum)
    steps_per_epoch = len(train_index) // cfg.batch_size  # drop the last partial batch
    return Run(
        cfg, out, device, data, train_index, test_index, model,
        build_augment(cfg.augment, data.image_size), optimizer, peak_lr,
        total_steps=steps_per_epoch * cfg.epochs,
        warmup_steps=round(steps_per_epoch * cfg.optim.warmup_epochs),
        steps_per_epoch=steps_per_epoch,
    )


@dataclass
class Progress:
    """Where the run is: enough, with the generators' states, to continue bit-exactly."""

    epoch: int = 0  # current epoch, 0-based
    batch: int = 0  # next batch within the epoch
    step: int = 0  # optimizer steps taken
    epoch_order_state: torch.Tensor | None = None  # order generator's state at the epoch start


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived; the loop saved a checkpoint and unwinds."""


class SignalGuard:
    """The first SIGINT/SIGTERM asks the loop to checkpoint and stop after the current step;
    a second one exits at once."""

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
            raise KeyboardInterrupt  # second signal: leave now
        self.requested = signum
        log.warning("\nsignal %d: saving a checkpoint after this step (again to quit at once)", signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train_one_epoch(
    run: Run, progress: Progress, images: torch.Tensor, order_gen: torch.Generator,
    aug_gen: torch.Generator, logger: MetricsLogger, guard: SignalGuard,
) -> None:
    """The rest of the current epoch, in the epoch's random order, from `progress.batch`."""
    cfg, model = run.cfg, run.model
    model.train()
    order_gen.set_state(progress.epoch_order_state)  # type: ignore[arg-type]
    order = torch.randperm(len(images), generator=order_gen)
    logger.bar.set_description(f"epoch {progress.epoch + 1}/{cfg.epochs}")
    while progress.batch < run.steps_per_epoch:
        lr = lr_at(progress.step, run.total_steps, run.warmup_steps, run.peak_lr)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        i = progress.batch
        x = images[order[i * cfg.batch_size : (i + 1) * cfg.batch_size]].to(run.device, non_blocking=True)
        x1, x2 = two_views(run.augment, x, aug_gen)  # (n, c, s, s) each
        z1, z2 = model(x1, x2)
        loss = nt_xent(z1, z2, cfg.temperature)
        if not torch.isfinite(loss):
            raise UserError(
                f"loss is {loss.item()} at step {progress.step}: lower optim.lr, raise the temperature, "
                "or train in float32; the last checkpoint is kept"
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        run.optimizer.step()
        progress.step += 1
        progress.batch += 1
        logger.update(progress.step, progress.epoch, loss, lr, len(x), last=progress.batch == run.steps_per_epoch)
        if progress.batch == run.steps_per_epoch:  # the epoch is done: the next one starts fresh
            progress.epoch, progress.batch = progress.epoch + 1, 0
            progress.epoch_order_state = order_gen.get_state()
        every = cfg.checkpoint_every
        if guard.requested is not None or progress.batch == 0 or (every and progress.step % every == 0):
            save(run, progress, aug_gen)
        if guard.requested is not None:
            raise StopRequested
        if progress.batch == 0:
            return


class MetricsLogger:
    """metrics.jsonl lines, TensorBoard scalars and the progress bar's postfix."""

    def __init__(self, out: Path, every: int, total_steps: int, start_step: int) -> None:
        path = out / "metrics.jsonl"
        if path.exists():  # resuming: drop lines logged after the checkpoint being resumed
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a")  # noqa: SIM115 - open for the whole run
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)
        self.every = every
        self.images = 0
        self.since = time.perf_counter()

    def update(self, step: int, epoch: int, loss: torch.Tensor, lr: float, n: int, last: bool) -> None:
        """Count a step; every `every` steps and at each epoch's end, log a line."""
        self.images += n
        self.bar.update(1)
        if step % self.every and not last:
            return
        now = time.perf_counter()
        rate = self.images / max(now - self.since, 1e-9)
        self.images, self.since = 0, now
        row = {"step": step, "epoch": epoch + 1, "loss": loss.item(), "lr": lr, "images_per_s": rate}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for key in ("loss", "lr", "images_per_s"):
            self.writer.add_scalar(f"train/{key}", row[key], step)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")

    def close(self) -> None:
        self.bar.close()
        self.file.close()
        self.writer.close()


def rng_states(aug_gen: torch.Generator) -> dict[str, Any]:
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),  # type: ignore[index]
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
        "augment": aug_gen.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save(run: Run, progress: Progress, aug_gen: torch.Generator) -> None:
    """Write checkpoint.pt atomically, keeping the previous `keep_checkpoints - 1` as
    checkpoint-<step>.pt; a failed write stops the run and leaves the last one intact."""
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "progress": {"epoch": progress.epoch, "batch": progress.batch, "step": progress.step},
        "epoch_order_state": progress.epoch_order_state,
        "rng": rng_states(aug_gen),
        "config": to_dict(run.cfg),
        "version": __version__,
        "git": git_revision(),
    }
    try:
        save_checkpoint(run.out / "checkpoint.pt", state, run.cfg.keep_checkpoints)
    except OSError as e:
        raise UserError(f"cannot write checkpoint in {run.out}: {e.strerror or e}; the previous one is kept") from None


def restore(run: Run, state: dict[str, Any], aug_gen: torch.Generator) -> Progress:
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"checkpoint does not fit this model: {str(e).splitlines()[0]}") from None
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(v) for v in rng["python"]), None))
    aug_gen.set_state(rng["augment"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    p = state["progress"]
    return Progress(p["epoch"], p["batch"], p["step"], state["epoch_order_state"])


def train(cfg: Config, resume_state: dict[str, Any] | None = None) -> tuple[Path, dict[str, dict[str, float]] | None]:
    """Pretrain (or continue from `resume_state`), export the encoder, evaluate it; returns the
    run directory and the results (None without labels)."""
    run = setup(cfg)
    save_config(cfg, run.out / "config.yaml")
    skipped = getattr(run.data, "skipped", [])
    (run.out / "skipped_files.txt").write_text("".join(f"{path}\t{why}\n" for path, why in skipped))
    images = run.data.images[torch.as_tensor(run.train_index)]
    if cfg.data.device_resident:
        images = images.to(run.device)  # uint8 stays small; augmentation converts on device
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=run.device).manual_seed(cfg.seed + 1)
    progress = Progress(epoch_order_state=order_gen.get_state())
    if resume_state is not None:
        progress = restore(run, resume_state, aug_gen)
    log.info("%s %s: %d training images %s, %s on %s, step %d of %d",
             "resuming" if resume_state else "run", run.out, len(images), tuple(images.shape[1:]),
             cfg.model.encoder, run.device, progress.step, run.total_steps)
    logger = MetricsLogger(run.out, cfg.log_every, run.total_steps, progress.step)
    try:
        with SignalGuard() as guard:
            while progress.epoch < cfg.epochs:
                train_one_epoch(run, progress, images, order_gen, aug_gen, logger, guard)
    except StopRequested:
        raise UserError(f"stopped at step {progress.step}; continue with: simclr train --resume {run.out}") from None
    finally:
        logger.close()
    save_encoder(run.out / "encoder.safetensors", run.model.encoder)
    results = None
    if run.test_index is not None:
        def random_encoder() -> torch.nn.Module:
            return build_encoder(cfg.model.encoder, run.data.channels, run.data.image_size, cfg.model.cifar_stem)

        results = evaluate_run(
            run.model.encoder, random_encoder, run.data, run.train_index, run.test_index,
            run.device, cfg.seed, cfg.eval_few_shot, cfg.eval_knn_k,
        )
        (run.out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    return run.out, results


def format_table(results: dict[str, dict[str, float]]) -> str:
    metrics = list(next(iter(results.values())))
    lines = [f"{'encoder':<12}" + "".join(f"{m:>12}" for m in metrics)]
    for name, row in results.items():
        cells = (f"{row[m]:>12.4f}" if not math.isnan(row[m]) else f"{'-':>12}" for m in metrics)
        lines.append(f"{name:<12}" + "".join(cells))
    return "\n".join(lines)
