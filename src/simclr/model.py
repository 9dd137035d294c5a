"""Encoder f, projection head g, and the SimCLR network that runs both views in one pass."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from simclr.wide_resnet import WIDE_RESNETS


class SmallCNN(nn.Module):
    """Four 3×3 conv blocks and average pooling, for tiny images such as 8-16 px digits. `grid`
    is the side of the pooled map: 1 is global average pooling; 2 keeps which quarter of the
    image a feature was found in."""

    def __init__(self, in_channels: int = 1, width: int = 32, grid: int = 1) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.out_dim = c * grid * grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = self.pool(self.features(x)).flatten(1)  # (B, out_dim)
        return h


def resnet(name: str, in_channels: int = 3, cifar_stem: bool = False) -> nn.Module:
    """A torchvision ResNet without pretrained weights, its classifier replaced by identity.

    The CIFAR stem (3×3 stride-1 first conv, no max-pool) keeps 32 px inputs from being
    downsampled 4× before the first residual stage (SimCLR paper, appendix B.9).
    """
    net: torchvision.models.ResNet = getattr(torchvision.models, name)(weights=None)  # no download
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()  # type: ignore[assignment]
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.out_dim = net.fc.in_features  # type: ignore[assignment]
    net.fc = nn.Identity()  # type: ignore[assignment]
    encoder: nn.Module = net
    return encoder


# Inputs this small or smaller get the CIFAR stem when `cifar_stem` is left on "auto".
CIFAR_STEM_MAX_SIZE = 64

EncoderFactory = Callable[[int, int, bool], nn.Module]  # (in_channels, image_size, cifar_stem)

ENCODERS: dict[str, EncoderFactory] = {
    "small_cnn": lambda c, size, stem: SmallCNN(c),
    # Half and double the channels of small_cnn: a student smaller than its teacher, and back.
    "small_cnn_w0.5": lambda c, size, stem: SmallCNN(c, width=16),
    "small_cnn_w2": lambda c, size, stem: SmallCNN(c, width=64),
    "small_cnn_g2": lambda c, size, stem: SmallCNN(c, grid=2),
    "resnet18": lambda c, size, stem: resnet("resnet18", c, stem),
    "resnet34": lambda c, size, stem: resnet("resnet34", c, stem),
    "resnet50": lambda c, size, stem: resnet("resnet50", c, stem),
}
ENCODERS.update(WIDE_RESNETS)  # resnet50_w2, resnet50_sk, ... (SimCLR/SimCLRv2 widths, SK blocks)


# `auto` pools the small CNN's last map to a 2×2 grid where that map is larger than 2×2 (images over
# 16 px): global pooling forgets where in a small image a stroke is, which kNN needs (MNIST, CIFAR).
# At 16 px and below the map is already 2×2, and the grid's wider h slowed the digits demo for no
# consistent gain (figures in the changelog).
GRID_MIN_SIZE = 17


def resolve_encoder(name: str, image_size: int) -> str:
    """The encoder `name` stands for at this image size (only `auto` depends on it)."""
    if name != "auto":
        return name
    return "small_cnn_g2" if image_size >= GRID_MIN_SIZE else "small_cnn"


def build_encoder(
    name: str, in_channels: int = 3, image_size: int = 224, cifar_stem: bool | None = None
) -> nn.Module:
    """Build a registered encoder (or `auto`, see `resolve_encoder`); it exposes `out_dim`, the size of h."""
    name = resolve_encoder(name, image_size)
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r} (choose from {', '.join(sorted(ENCODERS))})")
    stem = image_size <= CIFAR_STEM_MAX_SIZE if cifar_stem is None else cifar_stem
    encoder: nn.Module = ENCODERS[name](in_channels, image_size, stem)
    return encoder


def feature_dim(encoder: nn.Module) -> int:
    out_dim = getattr(encoder, "out_dim", None)
    if not isinstance(out_dim, int):
        raise ValueError("a custom encoder needs an integer `out_dim` attribute (the size of h)")
    return out_dim


class ProjectionHead(nn.Module):
    """g(h) = z. Version 1: Linear(d, d) → ReLU → Linear(d, out). Version 2 (SimCLRv2): three
    linear layers of width d with BatchNorm on each, ReLU between, output size `out_dim`."""

    def __init__(self, in_dim: int, out_dim: int = 128, version: int = 1) -> None:
        super().__init__()
        if version == 1:
            layers: list[nn.Module] = [
                nn.Linear(in_dim, in_dim),
                nn.ReLU(inplace=True),
                nn.Linear(in_dim, out_dim),
            ]
        elif version == 2:
            layers = [
                nn.Linear(in_dim, in_dim, bias=False),
                nn.BatchNorm1d(in_dim),
                nn.ReLU(inplace=True),
                nn.Linear(in_dim, in_dim, bias=False),
                nn.BatchNorm1d(in_dim),
                nn.ReLU(inplace=True),
                nn.Linear(in_dim, out_dim, bias=False),
                nn.BatchNorm1d(out_dim, affine=False),
            ]
        else:
            raise ValueError(f"projection head version must be 1 or 2, got {version}")
        self.layers = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)  # type: ignore[no-any-return]


def head_layers(head: ProjectionHead, depth: int) -> nn.Sequential:
    """The first `depth` layers of g, each a Linear with the BatchNorm and ReLU after it (shared
    modules, not copies). SimCLRv2 fine-tunes f followed by `head_layers(g, 1)`: section 2 of
    arXiv:2006.10029, "fine-tuning from the first layer of the projection head"."""
    starts = [i for i, m in enumerate(head.layers) if isinstance(m, nn.Linear)]
    if not 0 <= depth <= len(starts):
        raise ValueError(f"the projection head has {len(starts)} layers, cannot take {depth}")
    end = starts[depth] if depth < len(starts) else len(head.layers)
    return nn.Sequential(*list(head.layers)[:end])


def head_depth(head_version: int) -> int:
    """Linear layers in a projection head of this version (2 for v1, 3 for v2)."""
    return 2 if head_version == 1 else 3


class SimCLR(nn.Module):
    """Encoder f plus projection head g. `forward(x1, x2)` sends both views through the network
    in a single pass, so BatchNorm statistics are computed over all 2N views together."""

    def __init__(self, encoder: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x1.shape[0]
        h = self.encoder(torch.cat([x1, x2]))  # (2n, d)
        z = self.head(h)  # (2n, out_dim)
        return z[:n], z[n:]


def build_model(
    encoder: str | nn.Module,
    in_channels: int = 3,
    image_size: int = 224,
    cifar_stem: bool | None = None,
    proj_dim: int = 128,
    head_version: int = 1,
    encoder_dim: int | None = None,
) -> SimCLR:
    """SimCLR network from a registry name, or from any user `nn.Module` mapping a batch to
    (B, d) features, with d given as `encoder_dim` or as the module's `out_dim` attribute."""
    if isinstance(encoder, str):
        f = build_encoder(encoder, in_channels, image_size, cifar_stem)
    else:
        f = encoder
        if encoder_dim is not None:
            f.out_dim = encoder_dim  # type: ignore[assignment]
    return SimCLR(f, ProjectionHead(feature_dim(f), proj_dim, head_version))
