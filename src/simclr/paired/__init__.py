"""Paired multimodal data (image + caption first; any two of image, series, text and video):
two encoders trained with the symmetric cross-modal contrastive loss (CLIP, Radford et al. 2021),
each side augmented by its own modality as in SimCLR.

Each side's encoder comes from its own modality (images: `model.*`; text: `text.*`; series:
`series.*`; video: `video.*`); this modality composes them. To the shared code it is the first
side's modality with a `Trainer` on top: its `inputs` are the first side's, its `encoder` the
first side's encoder, so the kNN monitor, the probes, the report and the exports work unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from simclr.data.columns import header_names
from simclr.errors import UserError
from simclr.evaluate import save_eval
from simclr.experiment import SingleEncoder
from simclr.modality import Augment, Baseline, Objective, Results, get
from simclr.model import ProjectionHead, SimCLR, feature_dim
from simclr.paired.config import PairedConfig, validate
from simclr.paired.data import PAIR_IMAGE_COLUMNS, PAIR_TEXT_COLUMNS, Encoding, PairedData, heldout_split, load_pairs
from simclr.paired.model import PairedModel, PairedObjective, build_temperature
from simclr.text.data import TOKENIZER_FILE, load_tokenizer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from simclr.config import Config
    from simclr.run import Run

SETTINGS_FILE = "paired.json"  # beside the weights: the sides, the second side's input shape, the classes


def read_settings(run_dir: Path) -> dict[str, Any]:
    """A paired run's settings; those written before the sides were generic (image + text)
    recorded only the caption length."""
    path = run_dir / SETTINGS_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: a paired run saves it beside its checkpoint")
    settings: dict[str, Any] = json.loads(path.read_text())
    settings.setdefault("modalities", ["image", "text"])
    if "second_shape" not in settings:
        settings["second_shape"] = [int(settings["text_length"])]
    return settings


def run_encoding(run_dir: Path, first_shape: list[int] | None) -> Encoding:
    """What a trained paired run fixes for the data it evaluates or embeds."""
    settings = read_settings(run_dir)
    tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE) if "text" in settings["modalities"] else None
    return Encoding(first_shape, [int(v) for v in settings["second_shape"]], tokenizer, settings.get("classes"))


def build_paired_model(
    cfg: Config, first_shape: list[int], second_shape: list[int], data: PairedData | None = None
) -> PairedModel:
    """Each side's encoder from its modality, each with a head to `paired.shared_dim`."""
    p = cfg.paired
    a, b = (get(str(m)) for m in p.modalities)
    first = a.build_encoder(cfg, first_shape, data.side(0) if data is not None else None)
    second = b.build_encoder(cfg, second_shape, data.side(1) if data is not None else None)
    return PairedModel(
        first, ProjectionHead(feature_dim(first), p.shared_dim, cfg.model.head_version),
        second, ProjectionHead(feature_dim(second), p.shared_dim, cfg.model.head_version),
        build_temperature(p.temperature, p.learn_temperature, p.min_temperature),
    )


def first_modality(cfg: Config) -> Any:
    return get(str(cfg.paired.modalities[0]))


class PairedModality(SingleEncoder):
    name = "paired"
    config = PairedConfig
    evaluates_unlabelled = True  # held-out pairs serve retrieval without labels
    pretrain_default = "train"  # held-out pairs score retrieval: never seen in pretraining
    optimizer = "adamw"  # as CLIP, and as benchmarks/quality_paired.py trains it

    def validate(self, cfg: Config) -> None:
        validate(cfg)

    def claims(self, path: Path) -> bool:
        """A CSV header (or the first JSONL object) with both an image column and a caption column."""
        if path.suffix.lower() not in (".csv", ".jsonl") or not path.is_file():
            return False
        lower = {n.strip().lower() for n in header_names(path)}
        return bool(lower & set(PAIR_IMAGE_COLUMNS)) and bool(lower & set(PAIR_TEXT_COLUMNS))

    def load(
        self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None, like: Any | None = None
    ) -> tuple[PairedData, PairedData | None]:
        """(training pairs, held-out pairs): the source's own test split (UCR/UEA), else split
        by `paired.heldout_fraction` (seeded); a second source (`like`: the training data) is
        read whole with the same encoding."""
        if like is not None:
            return load_pairs(source, cfg, Encoding.like(like))[0], None
        encoding = run_encoding(run_dir, input_shape) if run_dir is not None else Encoding(input_shape)
        data, official_test = load_pairs(source, cfg, encoding)
        if official_test is not None:
            return data, official_test
        train, held = heldout_split(data, cfg.paired.heldout_fraction, cfg.seed)
        held_out = data.subset(held)
        held_out.first.skipped = []  # listed once, with the training part
        return data.subset(train), held_out

    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment:
        return first_modality(cfg).build_augment(cfg, input_shape)  # type: ignore[no-any-return]

    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module:
        """The first side's encoder: the side the shared code probes, monitors and exports."""
        first = data.side(0) if isinstance(data, PairedData) else data
        return first_modality(cfg).build_encoder(cfg, input_shape, first)  # type: ignore[no-any-return]

    def baseline(self, cfg: Config) -> Baseline:
        return first_modality(cfg).baseline(cfg)  # type: ignore[no-any-return]

    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure:
        return get(data.modalities[0]).gallery(data.first, augment, seed)

    def save_artifacts(self, data: Any, out: Path) -> None:
        if data.tokenizer is not None:
            data.tokenizer.save(str(out / TOKENIZER_FILE))
        settings = {"modalities": list(data.modalities), "second_shape": data.second_shape, "classes": data.classes}
        if data.modalities[1] == "text":  # what runs before generic sides read
            settings["text_length"] = data.second_shape[0]
        (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    # simclr.modality.Trainer: the network, the step's loss and the evaluation.

    def build_model(self, cfg: Config, input_shape: list[int], data: Any) -> SimCLR:
        return build_paired_model(cfg, input_shape, data.second_shape, data)

    def objective(self, cfg: Config, model: SimCLR, data: Any, device: torch.device) -> Objective:
        assert isinstance(model, PairedModel)
        first, second = data.modalities
        second_augment = None
        if second != "text" or cfg.paired.text_augment:  # captions stay as written unless asked
            second_augment = get(second).build_augment(cfg, data.second_shape)
        channels_last = cfg.channels_last and first == "image"
        return PairedObjective(model, self.build_augment(cfg, data.first_shape), data.second.to(device), second_augment,
                               channels_last)

    def evaluate_trained(
        self, cfg: Config, model: SimCLR, train: Any, test: Any | None, device: torch.device, out: Path
    ) -> dict[str, dict[str, float]] | None:
        """Retrieval, zero-shot and each side's probes on the held-out pairs; writes eval.json."""
        from simclr.paired.evaluate import evaluate_paired, probe_settings

        assert isinstance(model, PairedModel)
        if test is None:
            return None
        results, notes = evaluate_paired(
            model, lambda: build_paired_model(cfg, train.first_shape, train.second_shape), train, test,
            templates_of(cfg), cfg.text.max_length, cfg.seed, device, probe_settings(cfg), self.baseline(cfg),
        )
        save_eval(out / "eval.json", results, notes)
        return results


    # What `simclr eval`, `embed` and `export` do with a trained paired run: both sides.

    def load_network(self, cfg: Config, input_shape: list[int], run_dir: Path, state: dict[str, Any]) -> SimCLR:
        from simclr.paired.commands import load_network

        return load_network(cfg, input_shape, run_dir, state)

    def evaluate(self, run: Run, cfg: Config, train: Any, test: Any | None, device: torch.device) -> Results:
        if test is None:
            raise UserError("paired evaluation needs held-out pairs")
        results = self.evaluate_trained(cfg, run.model.to(device), train, test, device, run.dir)
        assert results is not None
        return results

    def embed(self, run: Run, source: str, out: Path, side: str | None, device: torch.device) -> str:
        from simclr.paired.commands import embed_run

        return f"wrote the embeddings of {source} to {embed_run(run, source, out, side, device)}"

    def export(self, run: Run, fmt: str, out: Path | None) -> Path:
        """safetensors: both encoders and heads; another format: the first side's encoder as
        that side's modality exports it."""
        from simclr.paired.commands import export_paired

        if fmt == "safetensors":
            return export_paired(run, out)
        first = get(run.cfg.paired.modalities[0])
        return first.export(dataclasses.replace(run, modality=first), fmt, out)


def templates_of(cfg: Config) -> list[str]:
    return cfg.paired.templates if cfg.paired.prompts else ["{}"]


MODALITY = PairedModality()

__all__ = ["MODALITY", "PairedData", "PairedModel", "build_paired_model", "load_pairs", "read_settings",
           "run_encoding"]
