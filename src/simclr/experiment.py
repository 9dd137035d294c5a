"""A run's data and evaluation, shared by every modality: the splits `simclr train` and `eval`
use, the evaluation suite against baselines, and `SingleEncoder`, what `simclr eval`, `embed`
and `export` do for a modality trained as SimCLR trains it (one encoder, one head)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from simclr import dist
from simclr.config import Config
from simclr.errors import UserError
from simclr.evaluate import evaluate_suite, frozen_features, save_eval, seeded
from simclr.finetune import FinetuneSettings
from simclr.modality import Augment, Baseline, Modality, Results
from simclr.model import ProjectionHead, SimCLR, build_model, head_layers
from simclr.probe import stratified_split
from simclr.schedule import MIN_EPOCHS, MIN_STEPS, held_out_size

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from simclr.run import Run

log = logging.getLogger("simclr")


def load_datasets(
    cfg: Config, modality: Modality, source: str | None = None, eval_source: str | None = None,
    input_shape: list[int] | None = None, run_dir: Path | None = None,
) -> tuple[Any, Any | None]:
    """(pretraining data, labelled held-out data or None). With a separate evaluation set (or a
    source that comes with its own test split, such as a UCR/UEA TRAIN/TEST pair), all of
    `source` is for training; otherwise labelled data is split (stratified, seeded) and only
    its training part is used for pretraining. `input_shape` forces a trained encoder's input.
    Under torchrun rank 0 loads first (building any cache), then the others read what it built
    (`dist.main_first`: they wait as long as that takes, and share its error); a modality whose
    ranks share the building (`loads_together`: the image decode) loads on every rank at once."""
    source, eval_source = source or cfg.data.source, eval_source or cfg.data.eval_source

    def load() -> tuple[Any, Any | None]:
        data, test = modality.load(cfg, source, input_shape, run_dir)
        if eval_source:
            test, _ = modality.load(cfg, eval_source, input_shape, run_dir, like=data)
        return data, test

    data, test = (dist.together if modality.loads_together else dist.main_first)(load)
    if test is not None:  # held-out pairs serve retrieval without labels
        return data, test if test.labels is not None or modality.evaluates_unlabelled else None
    if data.labels is None:
        return data, None
    size = cfg.data.test_fraction or held_out_size(len(data))
    train_index, test_index = stratified_split(data.labels.numpy(), size, cfg.seed)
    if isinstance(size, int):  # a count, not the plain half of a small set
        log.info("evaluation: %d of %d labelled samples held out (data.test_fraction sets a share)",
                 len(test_index), len(data))
    return data.subset(train_index), data.subset(test_index)


def input_shape_of(data: Any) -> list[int]:
    """The per-sample input shape an encoder is built for (what checkpoints record)."""
    return [int(v) for v in data.inputs.shape[1:]]


def random_encoder_maker(cfg: Config, modality: Modality, train_data: Any) -> Callable[[], nn.Module]:
    """Builds the random-init baseline: the run's encoder architecture, untrained."""
    shape = input_shape_of(train_data)
    return lambda: modality.build_encoder(cfg, shape, train_data)


def gather_eval_features(
    cfg: Config, modality: Modality, encoder: nn.Module, train_data: Any, test_data: Any, device: torch.device
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Frozen features of the trained and the random-init encoder (seeded, so the same on every
    rank), each rank encoding its share (every rank calls this); `evaluate_encoder` then needs
    only rank 0."""
    random_init = seeded(random_encoder_maker(cfg, modality, train_data), cfg.seed).to(device)
    return frozen_features({"simclr": encoder, "random_init": random_init}, train_data.inputs, test_data.inputs,
                           device=device)


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
    cfg: Config, modality: Modality, encoder: nn.Module, train_data: Any, test_data: Any, device: torch.device,
    out: Path, features: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, head: ProjectionHead | None = None,
) -> dict[str, dict[str, float]]:
    """The evaluation suite for a trained encoder against its baselines; writes eval.json.
    `features`: from `gather_eval_features`, when the ranks of a process group extracted them;
    `head`, the trained projection head, is needed to fine-tune from a head layer."""
    results, notes = evaluate_suite(
        encoder, random_encoder_maker(cfg, modality, train_data), train_data, test_data, device, cfg.seed,
        cfg.eval_few_shot, cfg.eval_knn_k, finetune=cfg.eval_finetune,
        finetune_settings=FinetuneSettings(flip_prob=cfg.augment.flip_prob),
        features=features, baseline=modality.baseline(cfg),
        finetune_from=finetune_starts(encoder, head, cfg.eval_finetune_from) if cfg.eval_finetune else None,
    )
    save_eval(out / "eval.json", results, notes)
    for note in notes:
        log.info("note: %s", note)
    return results


class SingleEncoder:
    """The defaults of a modality trained as SimCLR trains it: one encoder f, one head g.
    A modality subclasses it and adds its data, augmentation, encoder and baseline."""

    name = ""
    config: type | None = None  # its config section's dataclass, if it has one
    bf16_on_cpu = False
    evaluates_unlabelled = False
    pretrain_default = "small"
    optimizer = "lars"
    min_schedule = (MIN_EPOCHS, MIN_STEPS)  # a default run's least (epochs, steps): the paper's images
    distills = False
    loads_together = False
    export_formats: tuple[str, ...] = ("safetensors",)

    def validate(self, cfg: Config) -> None:
        """Checks of its config section, if any."""

    def claims(self, path: Path) -> bool:
        return False

    def save_artifacts(self, data: Any, out: Path) -> None:
        """Nothing beside the encoder's weights."""

    # What each modality brings (simclr.modality.Modality).
    def load(
        self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None, like: Any | None = None
    ) -> tuple[Any, Any | None]:
        raise NotImplementedError

    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment:
        raise NotImplementedError

    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module:
        raise NotImplementedError

    def baseline(self, cfg: Config) -> Baseline:
        raise NotImplementedError

    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure:
        raise NotImplementedError

    def load_network(self, cfg: Config, input_shape: list[int], run_dir: Path, state: dict[str, Any]) -> SimCLR:
        model = build_model(self.build_encoder(cfg, input_shape), proj_dim=cfg.model.proj_dim,
                            head_version=cfg.model.head_version)
        try:
            model.load_state_dict(state["model"], strict=True)
        except (RuntimeError, KeyError) as e:
            raise UserError(f"{run_dir / 'checkpoint.pt'} does not fit a {self.name} network: "
                            f"{str(e).splitlines()[0]}") from None
        return model

    def evaluate(self, run: Run, cfg: Config, train: Any, test: Any | None, device: torch.device) -> Results:
        if test is None or train.labels is None:
            raise UserError("evaluation needs labelled data: give --data (and --eval-data) with labels")
        head = run.model.head if cfg.eval_finetune and cfg.eval_finetune_from != ["h"] else None
        return evaluate_encoder(cfg, self, run.encoder.to(device), train, test, device, run.dir, head=head)

    def embed(self, run: Run, source: str, out: Path, side: str | None, device: torch.device) -> str:
        from simclr.embed import embed_to_file

        if side:
            raise UserError(f"--side picks one side of a run with two; {run.dir} has one ({self.name})")
        data = run.load(source)
        path = embed_to_file(run.encoder.to(device), data.inputs, getattr(data, "ids", None), data.labels, out,
                             device=device)
        return f"wrote {len(data)} embeddings to {path}"

    def export(self, run: Run, fmt: str, out: Path | None) -> Path:
        from simclr.export import encoder_metadata, export_encoder

        if fmt not in self.export_formats:
            raise UserError(f"--format {fmt} is not for {self.name} encoders; they export as "
                            f"{' or '.join(self.export_formats)} (simclr.Run.open(RUN_DIR).encoder rebuilds one)")
        return export_encoder(run.encoder, run.input_shape, fmt, out or run.dir / f"encoder.{EXTENSIONS[fmt]}",
                              encoder_metadata(run.cfg, self.name, run.input_shape))


EXTENSIONS = {"torchvision": "pt", "safetensors": "safetensors", "onnx": "onnx"}
