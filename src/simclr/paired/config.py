"""The `paired` config section: the two sides, the shared space and the cross-modal loss."""

from __future__ import annotations

from dataclasses import dataclass, field

from simclr.config import Config, check

# Captions made from class names for an image folder (data.modality=paired); one is drawn per
# sample per step. "{}" is the class name (underscores read as spaces).
PROMPT_TEMPLATES = [
    "a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of a {}.", "a low resolution photo of a {}.",
    "a bright photo of a {}.", "a dark photo of a {}.", "a cropped photo of a {}.", "a photo of the small {}.",
]


@dataclass
class PairedConfig:
    """Paired data (`data.modality=paired`): each side's encoder comes from its own modality's
    settings (images: `model.*`, text: `text.*`, series: `series.*`, video: `video.*`); each gets a
    projection to a shared space and the two are trained with the symmetric cross-modal loss
    (CLIP-style InfoNCE)."""

    # [first, second], two of image, series, text, video. The first side is what the kNN monitor,
    # the probes and the report see; from a labelled source the second is its class-name captions.
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])
    shared_dim: int = 128  # output of each side's projection head
    temperature: float = 0.07  # fixed, or the starting value when learned
    learn_temperature: bool = True  # tau = exp(-s), s learned, tau clamped >= min_temperature
    min_temperature: float = 0.01  # CLIP's clamp (1/tau <= 100)
    prompts: bool = True  # labelled source: captions from `templates`; off: the bare class name
    templates: list[str] = field(default_factory=lambda: list(PROMPT_TEMPLATES))  # {} is the class name
    heldout_fraction: float = 0.1  # pairs kept out of training for retrieval / zero-shot, seeded
    text_augment: bool = False  # the text augmentation (text.crop_min, ...) on captions
    image_column: str | None = None  # manifest; None: image / image_path / file / filename / path
    text_column: str | None = None  # manifest; None: text / caption / ...
    series_column: str | None = None  # manifest, series inline; None: series / values / signal / sequence
    video_column: str | None = None  # manifest; None: video / video_path / clip
    label_column: str | None = None  # manifest, optional; None: simclr.data.columns.LABEL_COLUMNS


def validate(cfg: Config) -> None:
    from simclr.modality import names

    p: PairedConfig = cfg.paired
    sides = tuple(n for n in names() if n != "paired")
    check(len(p.modalities) == 2 and all(m in sides for m in p.modalities) and p.modalities[0] != p.modalities[1],
          f"paired.modalities must be two different ones of {', '.join(sides)}, got {p.modalities}")
    check(p.shared_dim >= 1, f"paired.shared_dim must be at least 1, got {p.shared_dim}")
    check(p.temperature > 0, f"paired.temperature must be positive, got {p.temperature}")
    check(0 < p.min_temperature <= p.temperature,
          f"paired.min_temperature must be in (0, paired.temperature], got {p.min_temperature}")
    check(0 < p.heldout_fraction < 1, f"paired.heldout_fraction must be in (0, 1), got {p.heldout_fraction}")
    check(len(p.templates) > 0 and all("{}" in t for t in p.templates),
          "paired.templates must be a non-empty list of texts with {} for the class name")
    if cfg.data.modality == "paired":
        check(cfg.data.pretrain_on != "all", "data.pretrain_on=all does not apply to paired data")
