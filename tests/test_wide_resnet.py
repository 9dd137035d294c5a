"""Wide and selective-kernel ResNets: the published parameter counts, shapes, and the blocks'
defining properties."""

from __future__ import annotations

import pytest
import torch
import torchvision

from simclr.config import load_config
from simclr.model import build_encoder, feature_dim
from simclr.wide_resnet import Block, SelectiveKernel, WideResNet


def n_params(name: str) -> int:
    with torch.device("meta"):  # no memory, no initialization: counting 795M parameters is instant
        return sum(p.numel() for p in build_encoder(name, 3, 224).parameters())


@pytest.mark.parametrize(
    ("name", "millions"),
    [  # SimCLRv2 (arXiv:2006.10029) table 1, and SimCLR's ResNet-50 (4×) (arXiv:2002.05709, figure 7)
        ("resnet50_sk", 35), ("resnet50_w2", 94), ("resnet50_w2_sk", 140), ("resnet152_w3_sk", 795),
        ("resnet50_w4", 375),
    ],
)
def test_parameter_counts_match_the_papers(name: str, millions: int) -> None:
    assert round(n_params(name) / 1e6) == millions


@pytest.mark.parametrize("depth", [18, 50])
def test_width_one_is_torchvisions_resnet(depth: int) -> None:
    with torch.device("meta"):
        ours = sum(p.numel() for p in WideResNet(depth).parameters())
        theirs = getattr(torchvision.models, f"resnet{depth}")()
        theirs.fc = torch.nn.Identity()
        assert ours == sum(p.numel() for p in theirs.parameters())


def test_shapes_with_either_stem() -> None:
    torch.manual_seed(0)
    wide = build_encoder("resnet18_w2", 1, 16)  # CIFAR stem: 16 px stays 16 px into stage 1
    assert feature_dim(wide) == 1024 and wide(torch.rand(2, 1, 16, 16)).shape == (2, 1024)
    sk = build_encoder("resnet50_sk", 3, 64, cifar_stem=False)  # ResNet-D deep stem, SK bottlenecks
    h = sk(torch.rand(2, 3, 64, 64))
    assert h.shape == (2, 2048) and torch.isfinite(h).all()
    assert sum(isinstance(m, SelectiveKernel) for m in sk.modules()) == 16  # one per bottleneck


def test_sk_of_two_equal_paths_is_that_path() -> None:
    """The mixing weights are a softmax over the two paths: whatever they are, two identical
    paths mix to the path itself."""
    torch.manual_seed(0)
    sk = SelectiveKernel(8, 8, stride=2).eval()
    conv, bn = sk.paths[0], sk.paths[1]
    with torch.no_grad():
        conv.weight[8:] = conv.weight[:8]
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(torch.rand(16))
            t[8:] = t[:8]
    x = torch.rand(3, 8, 10, 10)
    assert torch.allclose(sk(x), sk.paths(x)[:, :8], atol=1e-6)


def test_blocks_start_as_the_identity() -> None:
    """The residual branch's last BatchNorm scale starts at zero (SimCLR's init_zero)."""
    x = torch.randn(2, 64, 6, 6)
    for bottleneck, sk in ((False, False), (True, False), (True, True)):
        block = Block(64, 16 if bottleneck else 64, 1, bottleneck, sk)
        assert torch.equal(block(x), torch.relu(x))


def test_config_accepts_the_new_names() -> None:
    assert load_config(None, ["model.encoder=resnet50_w2_sk"]).model.encoder == "resnet50_w2_sk"
