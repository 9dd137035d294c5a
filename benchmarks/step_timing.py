"""The step timing the budgeted benchmarks size their epochs by (quality.py, moving_mnist.py)."""

from __future__ import annotations

import time

from simclr.augment import two_views
from simclr.config import Config
from simclr.experiment import input_shape_of, load_datasets
from simclr.modality import get, resolve
from simclr.model import build_model
from simclr.optim import build_optimizer
from simclr.train import train_step


def seconds_per_step(cfg: Config, steps: int) -> tuple[float, int]:
    """Time `steps` real training steps (after one warm-up) of the run's model on its first
    batch, through its modality's encoder and views; returns (seconds per step, steps per epoch)."""
    train_data, _ = load_datasets(cfg)
    modality, shape = get(resolve(cfg)), input_shape_of(train_data)
    model = build_model(modality.build_encoder(cfg, shape, train_data), proj_dim=cfg.model.proj_dim)
    optimizer = build_optimizer(model, cfg.optim.name, 0.1, cfg.optim.weight_decay)
    augment, x = modality.build_augment(cfg, shape), train_data.inputs[: cfg.batch_size]
    train_step(model, optimizer, *two_views(augment, x), cfg.temperature)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, *two_views(augment, x), cfg.temperature)
    return (time.perf_counter() - start) / steps, len(train_data) // cfg.batch_size
