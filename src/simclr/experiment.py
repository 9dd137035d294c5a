"""A run's data and its trained encoder, as `simclr train`, `eval`, `embed` and `report` need them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simclr import dist
from simclr.checkpoint import load_checkpoint
from simclr.config import Config, from_dict
from simclr.errors import UserError
from simclr.evaluate import evaluate_suite, frozen_features, save_eval, seeded
from simclr.export import encoder_state
from simclr.finetune import FinetuneSettings
from simclr.modality import get, resolve
from simclr.model import ProjectionHead, feature_dim, head_layers
from simclr.probe import stratified_split

log = logging.getLogger("simclr")


def load_source(
    cfg: Config, source: str, input_shape: list[int] | None = None, run_dir: Path | None = None,
    modality: str | None = None,
) -> Any:
    """One data source as the run's modality reads it (`modality`, else `data.modality` or the
    one detected from the run's own source); `input_shape` forces a trained encoder's input
    (images: C, H, W; series: C, T; text: L) and `run_dir` holds what it saved (a tokenizer)."""
    data, _ = get(modality or resolve(cfg)).load(cfg, source, input_shape, run_dir)
    return data


def load_datasets(
    cfg: Config, source: str | None = None, eval_source: str | None = None, input_shape: list[int] | None = None,
    run_dir: Path | None = None, modality: str | None = None,
) -> tuple[Any, Any | None]:
    """(pretraining data, labelled held-out data or None). With a separate evaluation set (or a
    source that comes with its own test split, such as a UCR/UEA TRAIN/TEST pair), all of
    `source` is for training; otherwise labelled data is split (stratified, seeded) and only
    its training part is used for pretraining. `input_shape` forces a trained encoder's input.
    Under torchrun rank 0 loads first (building any decode cache), then the others read what it
    built."""
    source, eval_source = source or cfg.data.source, eval_source or cfg.data.eval_source
    reader = get(modality or resolve(cfg, source))
    if not dist.is_main_process():
        dist.barrier()
    data, test = reader.load(cfg, source, input_shape, run_dir)
    if eval_source:
        test, _ = reader.load(cfg, eval_source, input_shape, run_dir, like=data)
    if dist.is_main_process():
        dist.barrier()
    if test is not None:  # held-out pairs serve retrieval without labels
        return data, test if test.labels is not None or reader.name == "paired" else None
    if data.labels is None:
        return data, None
    train_index, test_index = stratified_split(data.labels.numpy(), cfg.data.test_fraction, cfg.seed)
    return data.subset(train_index), data.subset(test_index)


def input_shape_of(data: Any) -> list[int]:
    """The per-sample input shape an encoder is built for (what checkpoints record)."""
    return [int(v) for v in data.inputs.shape[1:]]


def load_trained_encoder(run_dir: Path) -> tuple[Config, nn.Module, list[int]]:
    """(config, encoder with the last checkpoint's weights, input shape) of a run."""
    weights, state = encoder_state(run_dir)
    if "config" not in state or "input_shape" not in state:
        raise UserError(f"{run_dir / 'checkpoint.pt'} does not record its config and input shape")
    cfg = from_dict(state["config"])  # type: ignore[arg-type]
    cfg.data.modality = str(state.get("modality", "image"))  # what it was trained on, not re-detected
    shape = [int(v) for v in state["input_shape"]]  # type: ignore[attr-defined]
    encoder = get(cfg.data.modality).build_encoder(cfg, shape)
    encoder.load_state_dict(weights, strict=True)
    return cfg, encoder, shape


def random_encoder_maker(cfg: Config, train_data: Any) -> Callable[[], nn.Module]:
    """Builds the random-init baseline: the run's encoder architecture, untrained."""
    modality, shape = get(resolve(cfg)), input_shape_of(train_data)
    return lambda: modality.build_encoder(cfg, shape, train_data)


def gather_eval_features(
    cfg: Config, encoder: nn.Module, train_data: Any, test_data: Any, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Frozen features of the trained and the random-init encoder (seeded, so the same on every
    rank), each rank encoding its share (every rank calls this); `evaluate_encoder` then needs
    only rank 0."""
    random_init = seeded(random_encoder_maker(cfg, train_data), cfg.seed).to(device)
    return frozen_features({"simclr": encoder, "random_init": random_init}, train_data.inputs, test_data.inputs,
                           device=device)


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
    cfg: Config, encoder: nn.Module, train_data: Any, test_data: Any, device: torch.device, out: Path,
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, head: ProjectionHead | None = None,
) -> dict[str, dict[str, float]]:
    """The evaluation suite for a trained encoder against its baselines; writes eval.json.
    `features`: from `gather_eval_features`, when the ranks of a process group extracted them;
    `head`, the trained projection head, is needed to fine-tune from a head layer."""
    results, notes = evaluate_suite(
        encoder, random_encoder_maker(cfg, train_data), train_data, test_data, device, cfg.seed, cfg.eval_few_shot,
        cfg.eval_knn_k, finetune=cfg.eval_finetune,
        finetune_settings=FinetuneSettings(flip_prob=cfg.augment.flip_prob),
        features=features, baseline=get(resolve(cfg)).baseline(cfg),
        finetune_from=finetune_starts(encoder, head, cfg.eval_finetune_from) if cfg.eval_finetune else None,
    )
    save_eval(out / "eval.json", results, notes)
    for note in notes:
        log.info("note: %s", note)
    return results
