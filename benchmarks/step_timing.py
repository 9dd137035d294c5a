"""The step timing the budgeted benchmarks size their epochs by (quality.py, moving_mnist.py)."""

from __future__ import annotations

import time

import torch

from simclr import Config, build_model, build_optimizer, train_step, two_views
from simclr.experiment import input_shape_of, load_datasets  # the run's own splits, as `simclr train` loads them
from simclr.modality import resolve
from simclr.training import nhwc  # the loop's memory-layout rule

# What `simclr train` spends beyond the steps themselves (metrics, checkpoints, the kNN monitor,
# progress bar): its MNIST run took 0.197 s per step where these steps took 0.166 s.
LOOP_OVERHEAD = 1.18


def seconds_per_step(cfg: Config, steps: int) -> tuple[float, int]:
    """Time `steps` real training steps (after one warm-up) of the run's model on random
    batches, as the loop runs them (memory layout included) through its modality's encoder and
    views; returns (seconds per step of the whole loop, steps per epoch)."""
    modality = resolve(cfg)
    train_data, _ = load_datasets(cfg, modality)
    shape = input_shape_of(train_data)
    model = build_model(modality.build_encoder(cfg, shape, train_data), proj_dim=cfg.model.proj_dim)
    layout = torch.channels_last if nhwc(cfg, shape) else torch.contiguous_format
    model = model.to(memory_format=layout)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, cfg.optim.name, 0.1, cfg.optim.weight_decay)
    augment, images = modality.build_augment(cfg, shape), train_data.inputs

    def step() -> None:
        x = images[torch.randint(len(images), (cfg.batch_size,))]
        x1, x2 = (v.contiguous(memory_format=layout) for v in two_views(augment, x))
        train_step(model, optimizer, x1, x2, cfg.temperature)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return LOOP_OVERHEAD * (time.perf_counter() - start) / steps, len(train_data) // cfg.batch_size
