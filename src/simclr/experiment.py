"""A run's data and its trained encoder, as `simclr train`, `eval`, `embed` and `report` need them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from simclr import dist
from simclr.checkpoint import load_checkpoint
from simclr.config import Config, from_dict
from simclr.data import ImageData, load_images
from simclr.errors import UserError
from simclr.evaluate import evaluate_suite, save_eval, stratified_split
from simclr.export import encoder_state
from simclr.finetune import FinetuneSettings
from simclr.model import ProjectionHead, build_encoder, feature_dim, head_layers

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


def load_trained_head(run_dir: Path, cfg: Config, encoder: nn.Module) -> ProjectionHead:
    """The projection head g of a run's last checkpoint (checkpoint.pt holds the whole SimCLR
    network; only the encoder is exported)."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    weights = {k.removeprefix("head."): v for k, v in state["model"].items() if k.startswith("head.")}
    head = ProjectionHead(feature_dim(encoder), cfg.model.proj_dim, cfg.model.head_version)
    try:
        head.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"{run_dir / 'checkpoint.pt'}: the projection head does not fit: {first}") from None
    return head


def finetune_starts(encoder: nn.Module, head: ProjectionHead | None, layers: list[str]) -> dict[str, nn.Module]:
    """The networks fine-tuning starts from, by layer: h is the encoder, head<k> the encoder
    followed by the first k layers of the trained head (SimCLRv2, section 2)."""
    starts: dict[str, nn.Module] = {}
    for layer in layers:
        if layer == "h":
            starts[layer] = encoder
        elif head is None:
            raise UserError(f"fine-tuning from {layer} needs the run's trained projection head")
        else:
            starts[layer] = nn.Sequential(encoder, head_layers(head, int(layer.removeprefix("head"))))
    return starts


def evaluate_encoder(
    cfg: Config, encoder: nn.Module, train_data: ImageData, test_data: ImageData, device: torch.device, out: Path,
    head: ProjectionHead | None = None,
) -> dict[str, dict[str, float]]:
    """The evaluation suite for a trained encoder against its baselines; writes eval.json.
    `head`, the trained projection head, is needed to fine-tune from a head layer."""

    def random_encoder() -> nn.Module:
        return build_encoder(cfg.model.encoder, train_data.channels, train_data.image_size, cfg.model.cifar_stem)

    results, notes = evaluate_suite(
        encoder, random_encoder, train_data, test_data, device, cfg.seed, cfg.eval_few_shot, cfg.eval_knn_k,
        finetune=cfg.eval_finetune,
        finetune_settings=FinetuneSettings(flip_prob=cfg.augment.flip_prob),
        finetune_from=finetune_starts(encoder, head, cfg.eval_finetune_from) if cfg.eval_finetune else None,
    )
    save_eval(out / "eval.json", results, notes)
    for note in notes:
        log.info("note: %s", note)
    return results


