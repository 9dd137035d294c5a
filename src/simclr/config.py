"""One typed configuration with every default; YAML recipes and `key=value` overrides on top.

Built on OmegaConf structured configs: unknown keys and values of the wrong type are rejected
with the key's name, and the resolved config is saved with every run and checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simclr.errors import UserError


@dataclass
class DataConfig:
    # A built-in name (digits, mnist, cifar10, cifar100, stl10) or a path: a folder, .zip or
    # .tar of images (class subfolders give labels), a .npy/.npz, or an MNIST IDX, CIFAR
    # python-batches or STL-10 binary folder. A ":split" suffix picks a split (mnist:test).
    source: str = "digits"
    channels: int | None = None  # None: as the data comes (image files: 1 if all grey, else 3)
    # None: the source's own size (digits: upsampled to 16; image files of mixed sizes: the
    # median shorter side, within 8..224). Non-square images keep their central square.
    image_size: int | None = None
    test_fraction: float = 0.5  # held-out stratified split for evaluation, seeded
    device_resident: bool = True  # keep the uint8 images on the training device
    eval_source: str | None = None  # a separate labelled evaluation set; None: split `source`
    # Folder of the built-in datasets; None: $SIMCLR_DATA, else ~/.local/share/simclr/datasets
    root: str | None = None
    cache_dir: str | None = None  # decoded-image cache; None: $SIMCLR_CACHE, else ~/.cache/simclr
    strict: bool = False  # a broken image file is an error instead of being skipped
    download: bool = False  # fetch a missing built-in dataset into `root` (never by default)
    # image, series or text; auto: from the source (.ts / numeric CSV: series; .txt, .tsv,
    # .jsonl / CSV with a text column: text; anything else: image). See simclr.modality.
    modality: str = "auto"
    # What SimCLR pretrains on: "train", the training part only; "all", the held-out inputs too,
    # without their labels (the transductive protocol of the UCR/UEA literature: pretrain on
    # TRAIN+TEST, probe with TRAIN labels, score on TEST). Labels are never used to pretrain.
    pretrain_on: str = "train"


@dataclass
class AugmentConfig:
    # "imagenet": the paper's recipe (colour strength 1.0, blur p=0.5); "cifar": strength 0.5,
    # no blur; "auto": cifar for images of 64 px or less, else imagenet.
    recipe: str = "auto"
    min_scale: float = 0.08  # crop area fraction ~ U(min_scale, 1)
    flip_prob: float = 0.5
    color_jitter_strength: float | None = None  # None: from the recipe
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float | None = None  # None: from the recipe


@dataclass
class ModelConfig:
    encoder: str = "small_cnn"  # small_cnn, resnet18, resnet34, resnet50
    cifar_stem: bool | None = None  # None: on for images of 64 px or less
    head_version: int = 1  # 1: 2-layer MLP (SimCLR); 2: 3 layers with BN (SimCLRv2)
    proj_dim: int = 128


@dataclass
class OptimConfig:
    name: str = "lars"  # lars, sgd, adamw
    lr: float = 0.3  # base learning rate, scaled by the batch size (see lr_scaling)
    lr_scaling: str = "linear"  # linear: lr*batch/256; sqrt: lr*sqrt(batch); none
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: float = 10.0


@dataclass
class SeriesConfig:
    """Time series (`data.modality=series`): encoder and augmentation, all per sample."""

    encoder: str = "fcn"  # fcn, resnet1d, gru, lstm, transformer
    width: int = 128  # channels of the convolutional encoders; hidden size of the others
    layers: int = 2  # recurrent / Transformer layers
    bidirectional: bool = True  # gru and lstm read the series both ways
    length: int | None = None  # None: the longest series; every series is resampled to it
    label_column: str | None = None  # CSV: the label column's name; None: label/class/target
    crop_min: float = 0.5  # window length ~ U(crop_min, 1) × T, resized back to T (linear)
    jitter: float = 0.05  # additive noise std, relative to each series' channel std
    scale: float = 0.1  # per-channel factor ~ N(1, scale)
    magnitude_warp: float = 0.1  # smooth multiplicative curve, std of its 4 knots
    time_warp: float = 0.1  # smooth time distortion, std of the speed at its 4 knots
    mask_fraction: float = 0.1  # one span of this fraction of T set to the channel mean, p=0.5


@dataclass
class TextConfig:
    """Text (`data.modality=text`): tokenizer, encoder and augmentation, all per sample."""

    encoder: str = "transformer"  # transformer, gru, lstm (the Transformer is the faster on a CPU)
    width: int = 128  # hidden size (and token embedding size)
    layers: int = 1  # recurrent / Transformer layers
    bidirectional: bool = True
    dropout: float = 0.1  # in the encoder; two passes differ by it (SimCSE's dropout views)
    vocab_size: int = 8000  # word pieces, learned from the corpus (Hugging Face tokenizers)
    max_length: int = 128  # tokens kept per text
    text_column: str | None = None  # CSV/TSV/JSONL; None: text/sentence/..., else all text columns
    label_column: str | None = None  # None: label/class/category/target when present
    crop_min: float = 0.6  # one span of ~U(crop_min, 1) of the tokens
    word_dropout: float = 0.1  # each token deleted with this probability
    mask_prob: float = 0.1  # each token replaced by [MASK]...
    replace_prob: float = 0.05  # ...or by a random token


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
    templates: list[str] = field(default_factory=lambda: list(PROMPT_TEMPLATES))
    heldout_fraction: float = 0.1  # pairs kept out of training for retrieval / zero-shot, seeded
    text_augment: bool = False  # the text augmentation (text.crop_min, ...) on captions
    image_column: str | None = None  # manifest; None: image / image_path / file / filename / path
    text_column: str | None = None  # manifest; None: text / caption / ...
    series_column: str | None = None  # manifest, series inline; None: series / values / signal / sequence
    video_column: str | None = None  # manifest; None: video / video_path / clip
    label_column: str | None = None  # manifest, optional; None: label / class / category when present


@dataclass
class VideoConfig:
    """Video (`data.modality=video`): a folder of video files (class subfolders give labels),
    decoded once into the cache at a fixed length, size and frame rate."""

    # r3d_18, r2plus1d_18, mc3_18 (torchvision's 3-D ResNets), or an image encoder (small_cnn,
    # resnet18, ...) applied to every frame, its features averaged over time
    encoder: str = "r3d_18"
    frames: int = 16  # F frames kept per video (the first ones; a shorter video is looped)
    clip_frames: int = 8  # T frames per view: two clips from independent random starts in F
    size: int = 64  # frames are stored and viewed as size×size (the central square, resized)
    fps: float | None = None  # resample every video to this frame rate; None: each file's own
    # Evaluation, embedding and the report encode a stored video as the mean h of this many
    # evenly spaced T-frame clips (1: the central clip)
    eval_clips: int = 1


@dataclass
class DistillConfig:
    """`simclr distill` (SimCLRv2 section 2): the command first fine-tunes the run's network on a
    fraction of the labels (the teacher), then trains a new student network on the teacher's
    softened predictions for unlabelled images."""

    label_fraction: float = 0.1  # the teacher's labels: this class-balanced, seeded fraction
    teacher_from: str = "auto"  # h or head<k>; auto: head1 for head_version 2 (SimCLRv2), else h
    temperature: float = 1.0  # τ of both softmaxes in the distillation loss (SimCLRv2 uses 1)
    labeled_weight: float = 0.0  # w in (1 − w)·L_distill + w·L_labelled (SimCLRv2's 1 − α)
    epochs: int = 10  # passes over the unlabelled images
    batch_size: int = 128
    lr: float = 0.1  # peak, SGD with Nesterov momentum, cosine decay per step
    weight_decay: float = 5e-4


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    series: SeriesConfig = field(default_factory=SeriesConfig)
    text: TextConfig = field(default_factory=TextConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    paired: PairedConfig = field(default_factory=PairedConfig)
    epochs: int = 100
    batch_size: int = 256
    temperature: float = 0.5
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    out: str | None = None  # run directory; None: runs/<data>-<time>
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 500  # steps between checkpoints (0: only at epoch ends)
    keep_checkpoints: int = 2  # checkpoint.pt plus this many minus one older ones
    eval_knn_k: int = 200
    eval_few_shot: int = 5
    eval_every: int = 10  # epochs between kNN monitor values (needs labels; 0: off)
    eval_finetune: bool = True  # fine-tune on 1% / 10% of the labels in the final evaluation
    # Where fine-tuning starts: h (the encoder's output) and/or head<k>, the encoder plus the
    # first k layers of the trained projection head (SimCLRv2 fine-tunes from head1).
    eval_finetune_from: list[str] = field(default_factory=lambda: ["h"])
    distill: DistillConfig = field(default_factory=DistillConfig)
    report: bool = True  # write report.html at the end of training
    threads: int | None = None  # torch CPU threads; None: torch's default
    # NHWC memory layout for the encoder and its inputs (faster convolutions with oneDNN and
    # cuDNN; `make bench` measures it). Results differ from NCHW only by float rounding.
    channels_last: bool = True
    # Forward passes in bfloat16 autocast (the loss and the optimizer stay in float32). auto:
    # bf16 on CUDA, and for images on CPUs that compute it natively (AVX512-BF16, AMX); float32
    # elsewhere (emulated bf16 is slower than float32). `simclr train` logs which it chose.
    precision: str = "auto"  # auto, bf16, fp32
    compile: bool = False  # torch.compile the network, the colour jitter and the blur (a one-off compile first)
    sync_batchnorm: bool = True  # with several processes: BN statistics over the global batch
    dist_timeout_s: float = 1800.0  # collectives fail after this instead of hanging


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _check_choice(key: str, value: object, allowed: tuple[object, ...]) -> None:
    _check(value in allowed, f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _validate(cfg: Config) -> None:
    from simclr.model import ENCODERS  # the registry is the one list of valid names

    _check(cfg.temperature > 0, f"temperature must be positive, got {cfg.temperature}")
    _check(cfg.batch_size >= 2, f"batch_size must be at least 2, got {cfg.batch_size}")
    _check(cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}")
    _check(cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    _check(cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every}")
    _check(cfg.epochs >= 1, f"epochs must be at least 1, got {cfg.epochs}")
    _check(cfg.optim.lr > 0, f"optim.lr must be positive, got {cfg.optim.lr}")
    _check(0 < cfg.augment.min_scale <= 1, f"augment.min_scale must be in (0, 1], got {cfg.augment.min_scale}")
    _check(0 < cfg.data.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {cfg.data.test_fraction}")
    size = cfg.data.image_size
    _check(size is None or size >= 4, f"data.image_size must be at least 4, got {size}")
    _check_choice("model.encoder", cfg.model.encoder, tuple(sorted(ENCODERS)))
    _check_choice("augment.recipe", cfg.augment.recipe, ("auto", "imagenet", "cifar"))
    _check_choice("model.head_version", cfg.model.head_version, (1, 2))
    _check_choice("optim.name", cfg.optim.name, ("lars", "sgd", "adamw"))
    _check_choice("optim.lr_scaling", cfg.optim.lr_scaling, ("linear", "sqrt", "none"))
    _check_choice("data.channels", cfg.data.channels, (None, 1, 3))
    _check_choice("device", cfg.device.split(":")[0], ("auto", "cpu", "cuda", "mps"))
    _check_choice("precision", cfg.precision, ("auto", "bf16", "fp32"))
    _check_choice("data.modality", cfg.data.modality, ("auto", "image", "series", "text", "video", "paired"))
    _check_choice("data.pretrain_on", cfg.data.pretrain_on, ("train", "all"))
    _check_choice("series.encoder", cfg.series.encoder, ("fcn", "resnet1d", "gru", "lstm", "transformer"))
    _check_choice("text.encoder", cfg.text.encoder, ("gru", "lstm", "transformer"))
    s, t = cfg.series, cfg.text
    for key, value in (("series.crop_min", s.crop_min), ("text.crop_min", t.crop_min)):
        _check(0 < value <= 1, f"{key} must be in (0, 1], got {value}")
    for key, value in (("series.mask_fraction", s.mask_fraction), ("text.word_dropout", t.word_dropout),
                       ("text.mask_prob", t.mask_prob), ("text.replace_prob", t.replace_prob),
                       ("text.dropout", t.dropout)):
        _check(0 <= value < 1, f"{key} must be in [0, 1), got {value}")
    for key, value in (("series.jitter", s.jitter), ("series.scale", s.scale),
                       ("series.magnitude_warp", s.magnitude_warp), ("series.time_warp", s.time_warp)):
        _check(value >= 0, f"{key} must be >= 0, got {value}")
    for key, n in (("series.width", s.width), ("series.layers", s.layers), ("text.width", t.width),
                   ("text.layers", t.layers), ("text.max_length", t.max_length)):
        _check(n >= 1, f"{key} must be at least 1, got {n}")
    _check(s.length is None or s.length >= 4, f"series.length must be at least 4, got {s.length}")
    _check(t.vocab_size >= 100, f"text.vocab_size must be at least 100, got {t.vocab_size}")
    _validate_video(cfg.video, tuple(sorted(ENCODERS)))
    _validate_v2(cfg)
    _validate_paired(cfg)


def _validate_paired(cfg: Config) -> None:
    p = cfg.paired
    sides = ("image", "series", "text", "video")
    _check(len(p.modalities) == 2 and all(m in sides for m in p.modalities) and p.modalities[0] != p.modalities[1],
           f"paired.modalities must be two different ones of {', '.join(sides)}, got {p.modalities}")
    _check(p.shared_dim >= 1, f"paired.shared_dim must be at least 1, got {p.shared_dim}")
    _check(p.temperature > 0, f"paired.temperature must be positive, got {p.temperature}")
    _check(0 < p.min_temperature <= p.temperature,
           f"paired.min_temperature must be in (0, paired.temperature], got {p.min_temperature}")
    _check(0 < p.heldout_fraction < 1, f"paired.heldout_fraction must be in (0, 1), got {p.heldout_fraction}")
    _check(len(p.templates) > 0 and all("{}" in t for t in p.templates),
           "paired.templates must be a non-empty list of texts with {} for the class name")
    if cfg.data.modality == "paired":
        _check(cfg.data.pretrain_on == "train", "data.pretrain_on=all does not apply to paired data")


def _validate_video(v: VideoConfig, image_encoders: tuple[str, ...]) -> None:
    _check_choice("video.encoder", v.encoder, ("r3d_18", "r2plus1d_18", "mc3_18", *image_encoders))
    _check(v.frames >= 1, f"video.frames must be at least 1, got {v.frames}")
    _check(1 <= v.clip_frames <= v.frames,
           f"video.clip_frames must be in [1, video.frames={v.frames}], got {v.clip_frames}")
    _check(v.size >= 8, f"video.size must be at least 8, got {v.size}")
    _check(v.fps is None or v.fps > 0, f"video.fps must be positive, got {v.fps}")
    _check(v.eval_clips >= 1, f"video.eval_clips must be at least 1, got {v.eval_clips}")


def finetune_layers(head_version: int) -> tuple[str, ...]:
    """Where fine-tuning may start: h, or after any but the last layer of the projection head."""
    from simclr.model import head_depth

    return ("h", *(f"head{k}" for k in range(1, head_depth(head_version))))


def _validate_v2(cfg: Config) -> None:
    layers = finetune_layers(cfg.model.head_version)
    _check(len(cfg.eval_finetune_from) > 0, "eval_finetune_from needs at least one layer, e.g. [h]")
    for layer in cfg.eval_finetune_from:
        _check_choice(f"eval_finetune_from (head version {cfg.model.head_version})", layer, layers)
    d = cfg.distill
    _check_choice(f"distill.teacher_from (head version {cfg.model.head_version})", d.teacher_from, ("auto", *layers))
    _check(0 < d.label_fraction <= 1, f"distill.label_fraction must be in (0, 1], got {d.label_fraction}")
    _check(d.temperature > 0, f"distill.temperature must be positive, got {d.temperature}")
    _check(0 <= d.labeled_weight <= 1, f"distill.labeled_weight must be in [0, 1], got {d.labeled_weight}")
    _check(d.epochs >= 1, f"distill.epochs must be at least 1, got {d.epochs}")
    _check(d.batch_size >= 2, f"distill.batch_size must be at least 2, got {d.batch_size}")
    _check(d.lr > 0, f"distill.lr must be positive, got {d.lr}")


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: Config | None = None
) -> Config:
    """Defaults (or `base`), then the YAML file at `path`, then `key=value` overrides."""
    try:
        merged = OmegaConf.structured(base if base is not None else Config)
        if path is not None:
            if not Path(path).is_file():
                raise UserError(f"config file does not exist: {path}")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        for item in overrides or []:
            if "=" not in item:
                raise UserError(f"override {item!r} is not key=value")
            try:
                value = OmegaConf.from_dotlist([item])
            except yaml.YAMLError as e:  # the value is read as YAML: `{}` in a template needs quotes
                raise UserError(f"override {item!r}: its value is not valid YAML ({str(e).splitlines()[0]}); "
                                "quote it, e.g. key=['a {} b']") from None
            merged = OmegaConf.merge(merged, value)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise UserError(_describe(e)) from None
    except (yaml.YAMLError, TypeError, ValueError) as e:  # a malformed file, or one that is not a mapping
        raise UserError(f"cannot read config {path}: {str(e).splitlines()[0]}") from None
    _validate(cfg)
    return cfg


def _describe(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    kind = type(e).__name__
    if "Merge error" in str(e):  # e.g. `model=3`: a value where a section belongs
        return f"bad config value: {str(e).splitlines()[0]} (a section needs its keys, e.g. model.encoder=...)"
    if "Key" in kind and key:
        return f"unknown config key {key!r}"
    if key:
        value = getattr(e, "value", None)
        return f"bad value {value!r} for config key {key!r}: {e.msg if hasattr(e, 'msg') else e}".split("\n")[0]
    return str(e).split("\n")[0]


def changed_keys(old: Config, new: Config, sections: tuple[str, ...]) -> list[str]:
    """Dotted keys of `sections` whose values differ between two configs."""
    a, b = to_dict(old), to_dict(new)
    return [f"{s}.{k}" for s in sections for k in a[s] if a[s][k] != b[s][k]]


def to_dict(cfg: Config) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from its saved dict (e.g. from a checkpoint), validating it."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(d))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise UserError(_describe(e)) from None
    _validate(cfg)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
