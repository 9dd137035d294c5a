"""Paired multimodal data (image + caption): two encoders trained with the symmetric
cross-modal contrastive loss (CLIP, Radford et al. 2021), the image side augmented as in SimCLR.

Each side's encoder comes from its own modality (simclr.image: `model.*`; simclr.text:
`text.*`); this modality composes them. To the shared code it is the image modality with a
`Trainer` on top: its `inputs` are the images, its `encoder` the image encoder, so the kNN
monitor, the image linear probe, the report and the image exports work unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from simclr.errors import UserError
from simclr.evaluate import raw_pixels_baseline, save_eval
from simclr.modality import Augment, Baseline, Objective, get
from simclr.model import ProjectionHead, SimCLR, feature_dim
from simclr.paired.data import PairedData, heldout_split, load_pairs
from simclr.paired.model import PairedModel, PairedObjective, build_temperature
from simclr.text.data import TOKENIZER_FILE, load_tokenizer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from simclr.config import Config

SETTINGS_FILE = "paired.json"  # beside the weights: the caption length the text encoder was built for


def read_settings(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SETTINGS_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: a paired run saves it beside its checkpoint")
    settings: dict[str, Any] = json.loads(path.read_text())
    return settings


def build_paired_model(cfg: Config, image_shape: list[int], text_length: int, data: Any | None = None) -> PairedModel:
    """Image and text encoders from their modalities, each with a head to `paired.shared_dim`."""
    p = cfg.paired
    image = get("image").build_encoder(cfg, image_shape)
    text = get("text").build_encoder(cfg, [text_length], data)
    return PairedModel(
        image, ProjectionHead(feature_dim(image), p.shared_dim, cfg.model.head_version),
        text, ProjectionHead(feature_dim(text), p.shared_dim, cfg.model.head_version),
        build_temperature(p.temperature, p.learn_temperature, p.min_temperature),
    )


class PairedModality:
    name = "paired"

    def load(
        self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None, like: Any | None = None
    ) -> tuple[PairedData, PairedData | None]:
        """(training pairs, held-out pairs) split by `paired.heldout_fraction` (seeded); a second
        source (`like`: the training data) is read whole with the same encoding."""
        if like is not None:
            shape = [like.channels, like.image_size, like.image_size]
            return load_pairs(source, cfg, shape, like.tokenizer, like.text_length, like.classes), None
        tokenizer, length, classes = None, None, None
        if run_dir is not None:  # a trained run: its tokenizer, caption length and classes
            settings = read_settings(run_dir)
            tokenizer, length = load_tokenizer(run_dir / TOKENIZER_FILE), int(settings["text_length"])
            classes = settings.get("classes")
        data = load_pairs(source, cfg, input_shape, tokenizer, length, classes)
        train, held = heldout_split(data, cfg.paired.heldout_fraction, cfg.seed)
        held_out = data.subset(held)
        held_out.skipped = []  # listed once, with the training part
        return data.subset(train), held_out

    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment:
        return get("image").build_augment(cfg, input_shape)

    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module:
        """The image encoder: the side the shared code probes, monitors and exports."""
        return get("image").build_encoder(cfg, input_shape)

    def baseline(self, cfg: Config) -> Baseline:
        return raw_pixels_baseline

    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure:
        return get("image").gallery(data, augment, seed)

    def save_artifacts(self, data: Any, out: Path) -> None:
        data.tokenizer.save(str(out / TOKENIZER_FILE))
        settings = {"text_length": data.text_length, "classes": data.classes}
        (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    # simclr.modality.Trainer: the network, the step's loss and the evaluation.

    def build_model(self, cfg: Config, input_shape: list[int], data: Any) -> SimCLR:
        return build_paired_model(cfg, input_shape, data.text_length, data)

    def objective(self, cfg: Config, model: SimCLR, data: Any, device: torch.device) -> Objective:
        assert isinstance(model, PairedModel)
        text_augment = get("text").build_augment(cfg, [data.text_length]) if cfg.paired.text_augment else None
        channels_last = cfg.channels_last and len(data.images.shape) == 4
        return PairedObjective(model, self.build_augment(cfg, list(data.images.shape[1:])),
                               data.captions.to(device), text_augment, channels_last)

    def evaluate(
        self, cfg: Config, model: SimCLR, train: Any, test: Any | None, device: torch.device, out: Path
    ) -> dict[str, dict[str, float]] | None:
        """Retrieval, zero-shot and the image probes on the held-out pairs; writes eval.json."""
        from simclr.paired.evaluate import evaluate_paired, probe_settings

        assert isinstance(model, PairedModel)
        if test is None:
            return None
        shape = [int(v) for v in train.images.shape[1:]]
        results, notes = evaluate_paired(
            model, lambda: build_paired_model(cfg, shape, train.text_length), train, test, templates_of(cfg),
            cfg.text.max_length, cfg.seed, device, probe_settings(cfg),
        )
        save_eval(out / "eval.json", results, notes)
        return results


def templates_of(cfg: Config) -> list[str]:
    return cfg.paired.templates if cfg.paired.prompts else ["{}"]


MODALITY = PairedModality()

__all__ = ["MODALITY", "PairedData", "PairedModel", "build_paired_model", "load_pairs", "read_settings"]
