"""One typed configuration with every default; YAML recipes and `key=value` overrides on top.

Built on OmegaConf structured configs: unknown keys and values of the wrong type are rejected
with the key's name, and the resolved config is saved with every run and checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, make_dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simclr import modality
from simclr.errors import UserError
from simclr.schedule import parse_duration

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

RECIPES = files("simclr") / "recipes"  # YAML recipes shipped with the package, loadable by name


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
    # The held-out stratified share for evaluation (seeded); None: sized to the data, half of a
    # set of up to 2,000, then 1,000 samples or 10 %, at most 10,000 (schedule.held_out_size).
    test_fraction: float | None = None
    # Keep the uint8 images on the training device: "auto" when they fit DEVICE_SHARE of its free
    # memory (a GPU); "false" reads each batch from host memory or the memory-mapped cache.
    device_resident: str = "auto"
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
    # auto: "all" for series and text (their literature's protocol) and for a set of at most
    # 2,000 samples split in halves (simclr.schedule.pretrain_on); "train" otherwise.
    pretrain_on: str = "auto"


@dataclass
class AugmentConfig:
    # "imagenet": the paper's recipe (colour strength 1.0, blur p=0.5, crops of 8-100 % of the
    # area); "cifar": strength 0.5, no blur, crops of 20-100 %; "auto": cifar for images of 64 px
    # or less, else imagenet. On one channel the jitter is brightness and contrast only.
    recipe: str = "auto"
    min_scale: float | None = None  # crop area fraction ~ U(min_scale, 1); None: from the recipe
    flip_prob: float = 0.5  # horizontal flip probability of each view
    color_jitter_strength: float | None = None  # None: from the recipe
    color_jitter_prob: float = 0.8  # probability of colour jitter (brightness, contrast, saturation, hue)
    grayscale_prob: float = 0.2  # probability of dropping colour (3-channel images)
    blur_prob: float | None = None  # None: from the recipe


@dataclass
class ModelConfig:
    # auto: small_cnn_g2 for images over 16 px (small_cnn with its last map pooled to a 2×2 grid, so
    # that h keeps where in the image a feature is), else small_cnn (global pooling); or resnet18,
    # resnet34, resnet50, ... (simclr.model.ENCODERS)
    encoder: str = "auto"
    cifar_stem: bool | None = None  # None: on for images of 64 px or less
    head_version: int = 1  # 1: 2-layer MLP (SimCLR); 2: 3 layers with BN (SimCLRv2)
    proj_dim: int = 128  # the projection z = g(h) the loss sees


@dataclass
class OptimConfig:
    # lars, sgd, adamw; auto: the modality's (LARS, as the paper; AdamW for text Transformers).
    # The None and auto below come from the optimizer (simclr.schedule.OPTIMIZER_DEFAULTS):
    # LARS and SGD 0.075 × sqrt(batch), weight decay 1e-6 (the paper's appendix B.1 rule for
    # small batches; 4.8 at batch 4096 as linear scaling gives); AdamW 1e-3, weight decay 0.01.
    name: str = "auto"
    lr: float | None = None  # base learning rate, scaled by the batch size (see lr_scaling)
    lr_scaling: str = "auto"  # linear: lr*batch/256; sqrt: lr*sqrt(batch); none
    weight_decay: float | None = None  # None: the optimizer's default (LARS/SGD 1e-6, AdamW 0.01)
    momentum: float = 0.9  # LARS and SGD
    # Linear warm-up; None: the paper's 10 epochs, at most a tenth of the run.
    warmup_steps: int | None = None


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
    batch_size: int = 128  # the student's batch
    lr: float = 0.1  # peak, SGD with Nesterov momentum, cosine decay per step
    weight_decay: float = 5e-4  # the student's


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # None: sized to the data (simclr.schedule): at least 100 epochs and 2,000 steps, or what
    # fits in `time_budget`.
    epochs: int | None = None
    # The global batch; None: 256, or a power of two of at most 1/8 of a smaller set.
    batch_size: int | None = None
    # Train for about this long ("10m", "1h30m"): the epochs that fit at the step time measured
    # on this machine before the run starts (needs epochs unset).
    time_budget: str | None = None
    temperature: float = 0.2  # the paper's range is 0.1-1; 0.2 measured best at small batches
    seed: int = 0  # weights, data order, augmentations and the evaluation split
    device: str = "auto"  # auto: cuda when available, else cpu
    out: str | None = None  # run directory; None: runs/<data>-<time>
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 500  # steps between checkpoints (0: only at epoch ends)
    keep_checkpoints: int = 2  # checkpoint.pt plus this many minus one older ones
    eval_knn_k: int = 200  # neighbours of the weighted kNN (at most the training labels)
    eval_few_shot: int = 5  # labels per class of the few-shot probe (the mean over 5 draws)
    eval_every: int = 10  # epochs between kNN monitor values (needs labels; 0: off)
    eval_finetune: bool = True  # fine-tune on 1% / 10% of the labels in the final evaluation
    # Where fine-tuning starts: h (the encoder's output) and/or head<k>, the encoder plus the
    # first k layers of the trained projection head (SimCLRv2 fine-tunes from head1).
    eval_finetune_from: list[str] = field(default_factory=lambda: ["h"])
    distill: DistillConfig = field(default_factory=DistillConfig)
    # report.html at the end of training; None: when matplotlib is installed (the [report] extra)
    report: bool | None = None
    tensorboard: bool | None = None  # TensorBoard scalars too; None: when the [tensorboard] extra is installed
    threads: int | None = None  # torch CPU threads; None: torch's default
    # NHWC memory layout for the encoder and its inputs: the layout oneDNN's and cuDNN's fast
    # convolutions use. Results differ from NCHW only by float rounding.
    channels_last: bool = True
    # Forward passes in bfloat16 autocast (the loss and the optimizer stay in float32). auto:
    # bf16 on CUDA, and for images on CPUs that compute it natively (AVX512-BF16, AMX); float32
    # elsewhere (emulated bf16 is slower than float32). `simclr train` logs which it chose.
    precision: str = "auto"  # auto, bf16, fp32
    # torch.compile: for images the whole step (views, forward, loss, backward, optimizer; a
    # one-off compile first), for other inputs the network.
    compile: bool = False
    # torch.compile's mode: default, reduce-overhead (CUDA graphs), max-autotune[-no-cudagraphs].
    compile_mode: str = "default"
    sync_batchnorm: bool = True  # with several processes: BN statistics over the global batch
    dist_timeout_s: float = 1800.0  # collectives fail after this instead of hanging

    # Each modality's own section (`cfg.series`, `cfg.text`, ...) is a field of the class that
    # `load_config` builds from the registry (`with_sections`); a Config made directly gets a
    # section's defaults the first time it is read.
    def __getattr__(self, name: str) -> Any:
        section = None if name.startswith("_") or name not in modality.names() else modality.get(name).config
        if section is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        value = section()
        object.__setattr__(self, name, value)
        return value

    def __eq__(self, other: object) -> bool:  # by value: a built Config equals a directly made one
        return isinstance(other, Config) and to_dict(self) == to_dict(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, as dataclasses with eq are

    def __reduce__(self) -> tuple[Any, ...]:  # the built class is not importable: pickle the values
        return from_dict, (to_dict(self),)


_built: dict[tuple[tuple[str, type], ...], type[Config]] = {}


def with_sections() -> type[Config]:
    """Config with a field for each registered modality's section, so that OmegaConf checks
    `series.length=...` as strictly as the core keys."""
    sections = tuple((name, section) for name in modality.names()
                     if (section := modality.get(name).config) is not None)
    if sections not in _built:
        fields = [(name, section, field(default_factory=section)) for name, section in sections]
        built = make_dataclass("Config", fields, bases=(Config,), eq=False)  # Config's __eq__
        built.__module__ = __name__
        _built[sections] = built
    return _built[sections]


def check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check_choice(key: str, value: object, allowed: tuple[object, ...]) -> None:
    check(value in allowed, f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _validate(cfg: Config) -> None:
    from simclr.model import ENCODERS  # the registry is the one list of valid names

    check(cfg.temperature > 0, f"temperature must be positive, got {cfg.temperature}")
    check(cfg.batch_size is None or cfg.batch_size >= 2, f"batch_size must be at least 2, got {cfg.batch_size}")
    check(cfg.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}")
    check(cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    check(cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every}")
    check(cfg.epochs is None or cfg.epochs >= 1, f"epochs must be at least 1, got {cfg.epochs}")
    check(cfg.epochs is None or cfg.time_budget is None,
          f"give epochs ({cfg.epochs}) or a time budget ({cfg.time_budget}), not both")
    if cfg.time_budget is not None:
        parse_duration(cfg.time_budget)
    o = cfg.optim
    check(o.lr is None or o.lr > 0, f"optim.lr must be positive, got {o.lr}")
    check(o.weight_decay is None or o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    check(o.warmup_steps is None or o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    scale = cfg.augment.min_scale
    check(scale is None or 0 < scale <= 1, f"augment.min_scale must be in (0, 1], got {scale}")
    fraction = cfg.data.test_fraction
    check(fraction is None or 0 < fraction < 1, f"data.test_fraction must be in (0, 1), got {fraction}")
    check_choice("data.device_resident", str(cfg.data.device_resident).lower(), ("auto", "true", "false"))
    size = cfg.data.image_size
    check(size is None or size >= 4, f"data.image_size must be at least 4, got {size}")
    check_choice("model.encoder", cfg.model.encoder, ("auto", *sorted(ENCODERS)))
    check_choice("augment.recipe", cfg.augment.recipe, ("auto", "imagenet", "cifar"))
    check_choice("model.head_version", cfg.model.head_version, (1, 2))
    check_choice("optim.name", cfg.optim.name, ("auto", "lars", "sgd", "adamw"))
    check_choice("optim.lr_scaling", cfg.optim.lr_scaling, ("auto", "linear", "sqrt", "none"))
    check_choice("data.channels", cfg.data.channels, (None, 1, 3))
    check_choice("device", cfg.device.split(":")[0], ("auto", "cpu", "cuda", "mps"))
    check_choice("precision", cfg.precision, ("auto", "bf16", "fp32"))
    check_choice("data.modality", cfg.data.modality, ("auto", *modality.names()))
    check_choice("data.pretrain_on", cfg.data.pretrain_on, ("auto", "train", "all"))
    check_choice("compile_mode", cfg.compile_mode,
                 ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    _validate_v2(cfg)
    for name in modality.names():  # each modality checks its own section
        modality.get(name).validate(cfg)


def finetune_layers(head_version: int) -> tuple[str, ...]:
    """Where fine-tuning may start: h, or after any but the last layer of the projection head."""
    from simclr.model import head_depth

    return ("h", *(f"head{k}" for k in range(1, head_depth(head_version))))


def _validate_v2(cfg: Config) -> None:
    layers = finetune_layers(cfg.model.head_version)
    check(len(cfg.eval_finetune_from) > 0, "eval_finetune_from needs at least one layer, e.g. [h]")
    for layer in cfg.eval_finetune_from:
        check_choice(f"eval_finetune_from (head version {cfg.model.head_version})", layer, layers)
    d = cfg.distill
    check_choice(f"distill.teacher_from (head version {cfg.model.head_version})", d.teacher_from, ("auto", *layers))
    check(0 < d.label_fraction <= 1, f"distill.label_fraction must be in (0, 1], got {d.label_fraction}")
    check(d.temperature > 0, f"distill.temperature must be positive, got {d.temperature}")
    check(0 <= d.labeled_weight <= 1, f"distill.labeled_weight must be in [0, 1], got {d.labeled_weight}")
    check(d.epochs >= 1, f"distill.epochs must be at least 1, got {d.epochs}")
    check(d.batch_size >= 2, f"distill.batch_size must be at least 2, got {d.batch_size}")
    check(d.lr > 0, f"distill.lr must be positive, got {d.lr}")


def recipes() -> list[str]:
    """The names of the recipes shipped with the package (`--config cifar10`)."""
    return sorted(p.name.removesuffix(".yaml") for p in RECIPES.iterdir() if p.name.endswith(".yaml"))


def recipe_path(path: str | Path) -> Path | Traversable:
    """A config file: `path` itself, or the shipped recipe of that name (`cifar10`, `text`...)."""
    if Path(path).is_file():
        return Path(path)
    shipped = RECIPES / f"{path}.yaml"
    if str(path).isidentifier() and shipped.is_file():
        return shipped
    raise UserError(f"config file does not exist: {path} (or a shipped recipe: {', '.join(recipes())})")


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: Config | None = None
) -> Config:
    """Defaults (or `base`), then the YAML file at `path`, then `key=value` overrides."""
    try:
        merged = OmegaConf.structured(with_sections())
        if base is not None:
            merged = OmegaConf.merge(merged, OmegaConf.create(to_dict(base)))
        if path is not None:
            with recipe_path(path).open() as file:
                merged = OmegaConf.merge(merged, OmegaConf.load(file))
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
    """Every key, each registered modality's section included (its defaults if never read)."""
    d = asdict(cfg)
    for name in modality.names():
        if name not in d and modality.get(name).config is not None:
            d[name] = asdict(getattr(cfg, name))
    return d


def from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from its saved dict (e.g. from a checkpoint), validating it."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(with_sections()), OmegaConf.create(d))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise UserError(_describe(e)) from None
    _validate(cfg)
    return cfg


def save_config(cfg: Config, path: Path, comment: str = "") -> None:
    """The config as YAML; `comment` (e.g. why the schedule is what it is) heads it as comments."""
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    path.write_text(header + OmegaConf.to_yaml(OmegaConf.structured(cfg)))
