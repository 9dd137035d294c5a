"""The image modality: the paper's own case (Chen et al. 2020, arXiv:2002.05709)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from simclr.augment import ImageAugment
from simclr.config import AugmentConfig, Config
from simclr.data import ImageData, load_images
from simclr.data.layout import SPLIT_FOLDERS, NoSplit
from simclr.data.sources import split_suffix
from simclr.evaluate import raw_pixels_baseline
from simclr.experiment import SingleEncoder
from simclr.modality import Augment, Baseline
from simclr.model import CIFAR_STEM_MAX_SIZE, build_encoder

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def resolved_recipe(cfg: AugmentConfig, image_size: int) -> AugmentConfig:
    """`cfg` with "auto" and None filled in: the paper's recipe, or its CIFAR variant for small
    images (colour strength 0.5, no blur, crops of at least 20 % of the area: on 32 px, 8 % is
    a 9-pixel square)."""
    recipe = cfg.recipe
    if recipe == "auto":
        recipe = "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    strength, blur, min_scale = (0.5, 0.0, 0.2) if recipe == "cifar" else (1.0, 0.5, 0.08)
    return replace(
        cfg, recipe=recipe, min_scale=min_scale if cfg.min_scale is None else cfg.min_scale,
        color_jitter_strength=strength if cfg.color_jitter_strength is None else cfg.color_jitter_strength,
        blur_prob=blur if cfg.blur_prob is None else cfg.blur_prob,
    )


def build_augment(cfg: AugmentConfig, image_size: int, compiled: bool = False) -> ImageAugment:
    """The recipe's augmentation (`resolved_recipe`); `compiled`: the crop, jitter and blur fused
    by torch.compile (the run's `compile=true`)."""
    r = resolved_recipe(cfg, image_size)
    assert r.min_scale is not None and r.color_jitter_strength is not None and r.blur_prob is not None
    return ImageAugment(
        size=image_size, min_scale=r.min_scale, flip_prob=r.flip_prob, color_jitter_strength=r.color_jitter_strength,
        color_jitter_prob=r.color_jitter_prob, grayscale_prob=r.grayscale_prob, blur_prob=r.blur_prob,
        compiled=compiled,
    )


class ImageModality(SingleEncoder):
    """The default modality: built-in names, image folders and archives, arrays."""

    name = "image"
    bf16_on_cpu = True  # convolutions: where native bf16 pays off (and the quality was checked)
    distills = True
    loads_together = True  # the ranks share a first decode's blocks (simclr.data.blocks)
    export_formats = ("torchvision", "safetensors", "onnx")

    def load(
        self, cfg: Config, source: str, input_shape: list[int] | None, run_dir: Path | None, like: Any | None = None
    ) -> tuple[ImageData, ImageData | None]:
        d = cfg.data
        if like is not None:
            input_shape = [like.channels, like.image_size]
        channels, size = (input_shape[0], input_shape[1]) if input_shape else (d.channels, d.image_size)
        data = load_images(
            source, channels, size, cache_dir=d.cache_dir, strict=d.strict, root=d.root, allow_download=d.download
        )
        return data, self._own_test_split(cfg, source, data) if like is None else None

    @staticmethod
    def _own_test_split(cfg: Config, source: str, data: ImageData) -> ImageData | None:
        """A folder or archive split into train/ and test/ or val/ (ImageNet's layout) brings its
        own evaluation set: its test/ (or val/), converted like the training images."""
        if not data.ids or split_suffix(source, None)[1]:  # no files, or a split chosen
            return None
        folders = data.ids[0].split("/")[:-1]
        if not any(f.lower() in SPLIT_FOLDERS["train"] for f in folders):
            return None
        d = cfg.data
        try:
            return load_images(source, data.channels, data.image_size, split="test", cache_dir=d.cache_dir,
                               strict=d.strict, root=d.root)
        except NoSplit:  # train/ beside unlabeled/ only
            return None

    def build_augment(self, cfg: Config, input_shape: list[int]) -> Augment:
        return build_augment(cfg.augment, input_shape[-1], cfg.compile)

    def build_encoder(self, cfg: Config, input_shape: list[int], data: Any | None = None) -> nn.Module:
        return build_encoder(cfg.model.encoder, input_shape[0], input_shape[-1], cfg.model.cifar_stem)

    def baseline(self, cfg: Config) -> Baseline:
        return raw_pixels_baseline

    def gallery(self, data: Any, augment: Augment, seed: int) -> Figure:
        from simclr.report import gallery_figure

        return gallery_figure(data.inputs, augment, seed)  # type: ignore[arg-type]


MODALITY = ImageModality()
