"""A run's data and its trained encoder, as `simclr train`, `eval`, `embed` and `report` need them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from simclr import dist
from simclr.config import Config, from_dict
from simclr.data import ImageData, load_images
from simclr.errors import UserError
from simclr.evaluate import evaluate_suite, frozen_features, save_eval, seeded, stratified_split
from simclr.export import encoder_state
from simclr.finetune import FinetuneSettings
from simclr.model import build_encoder

log = logging.getLogger("simclr")


def load_source(cfg: Config, source: str, channels: int | None, size: int | None) -> ImageData:
    d = cfg.data
    return load_images(
        source, channels, size, cache_dir=d.cache_dir, strict=d.strict, root=d.root, allow_download=d.download
    )


def load_datasets(
    cfg: Config, source: str | None = None, eval_source: str | None = None, input_shape: list[int] | None = None
) -> tuple[ImageData, ImageData | None]:
    """(pretraining data, labelled held-out data or None). With a separate evaluation set, all
    of `source` is for training; otherwise labelled data is split (stratified, seeded) and only
    its training part is used for pretraining. `input_shape` (C, H, W) forces a trained
    encoder's input. Under torchrun rank 0 loads first (building any decode cache), then the
    others read what it built."""
    source, eval_source = source or cfg.data.source, eval_source or cfg.data.eval_source
    channels, size = (input_shape[0], input_shape[1]) if input_shape else (cfg.data.channels, cfg.data.image_size)
    if not dist.is_main_process():
        dist.barrier()
    data = load_source(cfg, source, channels, size)
    test = load_source(cfg, eval_source, data.channels, data.image_size) if eval_source else None
    if dist.is_main_process():
        dist.barrier()
    if test is not None:
        return data, test if test.labels is not None else None
    if data.labels is None:
        return data, None
    train_index, test_index = stratified_split(data.labels.numpy(), cfg.data.test_fraction, cfg.seed)
    return data.subset(train_index), data.subset(test_index)


def load_trained_encoder(run_dir: Path) -> tuple[Config, nn.Module, list[int]]:
    """(config, encoder with the last checkpoint's weights, input shape (C, H, W)) of a run."""
    weights, state = encoder_state(run_dir)
    if "config" not in state or "input_shape" not in state:
        raise UserError(f"{run_dir / 'checkpoint.pt'} does not record its config and input shape")
    cfg = from_dict(state["config"])  # type: ignore[arg-type]
    shape = [int(v) for v in state["input_shape"]]  # type: ignore[attr-defined]
    encoder = build_encoder(cfg.model.encoder, shape[0], shape[1], cfg.model.cifar_stem)
    encoder.load_state_dict(weights, strict=True)
    return cfg, encoder, shape


def random_encoder_for(cfg: Config, data: ImageData) -> nn.Module:
    """The random-init baseline: the run's architecture with seeded weights (the same on every rank)."""
    return seeded(lambda: build_encoder(cfg.model.encoder, data.channels, data.image_size, cfg.model.cifar_stem),
                  cfg.seed)


def gather_eval_features(
    cfg: Config, encoder: nn.Module, train_data: ImageData, test_data: ImageData, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Frozen features of the trained and the random-init encoder, each rank encoding its share
    (every rank calls this); `evaluate_encoder` then needs only rank 0."""
    encoders = {"simclr": encoder, "random_init": random_encoder_for(cfg, train_data).to(device)}
    return frozen_features(encoders, train_data.images, test_data.images, device=device)


def evaluate_encoder(
    cfg: Config, encoder: nn.Module, train_data: ImageData, test_data: ImageData, device: torch.device, out: Path,
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, dict[str, float]]:
    """The evaluation suite for a trained encoder against its baselines; writes eval.json.
    `features`: from `gather_eval_features`, when the ranks of a process group extracted them."""

    def random_encoder() -> nn.Module:
        return build_encoder(cfg.model.encoder, train_data.channels, train_data.image_size, cfg.model.cifar_stem)

    results, notes = evaluate_suite(
        encoder, random_encoder, train_data, test_data, device, cfg.seed, cfg.eval_few_shot, cfg.eval_knn_k,
        finetune=cfg.eval_finetune,
        finetune_settings=FinetuneSettings(flip_prob=cfg.augment.flip_prob),
        features=features,
    )
    save_eval(out / "eval.json", results, notes)
    for note in notes:
        log.info("note: %s", note)
    return results
