"""Pretraining: data → two augmented views → encoder f → head g → NT-Xent → optimizer."""

from __future__ import annotations

import json
import logging
import math
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


def train_one_epoch(
    run: Run, epoch: int, step: int, images: torch.Tensor, gen: torch.Generator,
    aug_gen: torch.Generator, logger: MetricsLogger,
) -> int:
    """One pass over the training images in a fresh random order; returns the next step."""
    cfg, model = run.cfg, run.model
    model.train()
    order = torch.randperm(len(images), generator=gen)
    logger.bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}")
    for i in range(run.steps_per_epoch):
        lr = lr_at(step, run.total_steps, run.warmup_steps, run.peak_lr)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        x = images[order[i * cfg.batch_size : (i + 1) * cfg.batch_size]].to(run.device, non_blocking=True)
        x1, x2 = two_views(run.augment, x, aug_gen)  # (n, c, s, s) each
        z1, z2 = model(x1, x2)
        loss = nt_xent(z1, z2, cfg.temperature)
        if not torch.isfinite(loss):
            raise UserError(
                f"loss is {loss.item()} at step {step}: lower the learning rate, raise the "
                "temperature, or train in float32"
            )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        run.optimizer.step()
        step += 1
        logger.update(step, epoch, loss, lr, len(x), last=i + 1 == run.steps_per_epoch)
    return step


class MetricsLogger:
    """metrics.jsonl lines, TensorBoard scalars and the progress bar's postfix."""

    def __init__(self, out: Path, every: int, total_steps: int) -> None:
        self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)
        self.file = open(out / "metrics.jsonl", "a")  # noqa: SIM115 - open for the whole run
        self.writer = SummaryWriter(str(out / "tensorboard"))
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


def checkpoint_state(run: Run, epoch: int, step: int) -> dict[str, Any]:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "config": to_dict(run.cfg),
        "version": __version__,
        "git": git_revision(),
    }


def train(cfg: Config) -> tuple[Path, dict[str, dict[str, float]] | None]:
    """Pretrain, export the encoder, evaluate it; returns the run directory and the results."""
    run = setup(cfg)
    save_config(cfg, run.out / "config.yaml")
    log.info("run directory %s: %d training images %s, %s on %s, %d steps",
             run.out, len(run.train_index), tuple(run.data.images.shape[1:]), cfg.model.encoder,
             run.device, run.total_steps)
    images = run.data.images[torch.as_tensor(run.train_index)]
    if cfg.data.device_resident:
        images = images.to(run.device)  # uint8 stays small; augmentation converts on device
    gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=run.device).manual_seed(cfg.seed + 1)
    logger = MetricsLogger(run.out, cfg.log_every, run.total_steps)
    step = 0
    try:
        for epoch in range(cfg.epochs):
            step = train_one_epoch(run, epoch, step, images, gen, aug_gen, logger)
            save_checkpoint(run.out / "checkpoint.pt", checkpoint_state(run, epoch + 1, step))
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
