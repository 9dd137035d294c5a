"""Encoders f, projection heads g, and the one-pass SimCLR network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simclr import ProjectionHead, SimCLR, build_encoder, build_model
from simclr.model import CIFAR_STEM_MAX_SIZE, ENCODERS, resolve_encoder
from simclr.wide_resnet import WIDE_RESNETS

FEATURE_DIM = {"small_cnn": 256, "resnet18": 512, "resnet34": 512, "resnet50": 2048}


def test_registry_holds_the_documented_encoders() -> None:
    assert set(FEATURE_DIM) <= set(ENCODERS)


# The 27 wide and SK ResNets (up to 795M parameters) would take minutes here; test_wide_resnet
# checks their shapes and sizes on two of them and on the meta device.
@pytest.mark.parametrize("name", sorted(set(ENCODERS) - set(WIDE_RESNETS)))
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_of_h_and_z(name: str, channels: int) -> None:
    # 16 px keeps the ResNets fast; it is small enough for the CIFAR stem, as 32 px is.
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, image_size=16, proj_dim=64)
    d = model.encoder.out_dim
    assert d == FEATURE_DIM[name] if name in FEATURE_DIM else isinstance(d, int) and d > 0
    hs: list[torch.Size] = []
    model.encoder.register_forward_hook(lambda m, i, out: hs.append(out.shape))
    x1 = torch.rand(2, channels, 16, 16)
    x2 = torch.rand(2, channels, 16, 16)
    with torch.no_grad():
        z1, z2 = model(x1, x2)
    assert hs == [(4, d)]  # h for both views
    assert z1.shape == z2.shape == (2, 64)
    assert torch.isfinite(z1).all() and torch.isfinite(z2).all()


def test_small_cnn_on_tiny_digits() -> None:
    f = build_encoder("small_cnn", in_channels=1, image_size=8)
    h = f(torch.rand(3, 1, 8, 8))
    assert h.shape == (3, f.out_dim) == (3, 256)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_cifar_stem_chosen_for_small_images(name: str) -> None:
    for size in (32, CIFAR_STEM_MAX_SIZE):
        f = build_encoder(name, in_channels=3, image_size=size)
        assert f.conv1.kernel_size == (3, 3) and f.conv1.stride == (1, 1)
        assert isinstance(f.maxpool, nn.Identity)
    f = build_encoder(name, in_channels=1, image_size=224)
    assert f.conv1.kernel_size == (7, 7) and f.conv1.stride == (2, 2)
    assert f.conv1.in_channels == 1
    assert isinstance(f.maxpool, nn.MaxPool2d)
    f = build_encoder(name, in_channels=3, image_size=CIFAR_STEM_MAX_SIZE + 1)
    assert f.conv1.kernel_size == (7, 7)


def test_cifar_stem_can_be_forced_either_way() -> None:
    assert build_encoder("resnet18", 3, 224, cifar_stem=True).conv1.kernel_size == (3, 3)
    f = build_encoder("resnet18", 3, 32, cifar_stem=False)
    assert f.conv1.kernel_size == (7, 7) and isinstance(f.maxpool, nn.MaxPool2d)


def test_cifar_stem_keeps_resolution() -> None:
    # With the CIFAR stem a 32 px input reaches layer4 at 4×4; the ImageNet stem gives 1×1.
    seen = {}
    for stem in (True, False):
        f = build_encoder("resnet18", 3, 32, cifar_stem=stem).eval()
        f.layer4.register_forward_hook(lambda m, i, o, stem=stem: seen.__setitem__(stem, o.shape[-2:]))
        with torch.no_grad():
            f(torch.rand(1, 3, 32, 32))
    assert seen == {True: (4, 4), False: (1, 1)}


def test_imagenet_size_forward() -> None:
    f = build_encoder("resnet18", in_channels=3, image_size=224).eval()
    with torch.no_grad():
        h = f(torch.rand(1, 3, 224, 224))
    assert h.shape == (1, 512)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnets_are_randomly_initialized(name: str) -> None:
    # weights=None: two builds under different seeds differ (pretrained weights would not).
    torch.manual_seed(0)
    a = build_encoder(name, 3, 32).conv1.weight
    torch.manual_seed(1)
    b = build_encoder(name, 3, 32).conv1.weight
    assert not torch.equal(a, b)
    assert isinstance(build_encoder(name, 3, 32).fc, nn.Identity)


def test_projection_head_v1() -> None:
    g = ProjectionHead(32, 16, version=1)
    linears = [m for m in g.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 32), (32, 16)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in g.modules())
    assert any(isinstance(m, nn.ReLU) for m in g.modules())
    assert g(torch.rand(5, 32)).shape == (5, 16)


def test_projection_head_v2() -> None:
    g = ProjectionHead(32, 16, version=2)
    linears = [m for m in g.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in g.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 32), (32, 32), (32, 16)]
    assert [m.num_features for m in norms] == [32, 32, 16]
    assert g(torch.rand(5, 32)).shape == (5, 16)


def test_projection_head_bad_version() -> None:
    with pytest.raises(ValueError):
        ProjectionHead(8, 4, version=3)


def test_build_model_head_version_and_proj_dim() -> None:
    m = build_model("small_cnn", 1, 16, proj_dim=32, head_version=2)
    assert isinstance(m, SimCLR)
    assert sum(isinstance(x, nn.BatchNorm1d) for x in m.head.modules()) == 3
    assert m(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))[0].shape == (2, 32)


def test_both_views_go_through_one_encoder_call() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, image_size=16)
    batches: list[int] = []
    model.encoder.register_forward_hook(lambda m, inputs, out: batches.append(inputs[0].shape[0]))
    heads: list[int] = []
    model.head.register_forward_hook(lambda m, inputs, out: heads.append(inputs[0].shape[0]))
    x1, x2 = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    z1, z2 = model(x1, x2)
    assert batches == [6] and heads == [6]
    # ... and the views come back in order: z1 from x1, z2 from x2, normalized over all 2N.
    ref = build_model("small_cnn", in_channels=1, image_size=16)
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        z = ref.head(ref.encoder(torch.cat([x1, x2])))
    torch.testing.assert_close(z1, z[:3])
    torch.testing.assert_close(z2, z[3:])


def test_batchnorm_sees_both_views() -> None:
    # If each view went through BatchNorm alone, shifting x2 would leave z1 unchanged.
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, image_size=8)
    x1, x2 = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        a, _ = model(x1, x2)
        b, _ = model(x1, x2 + 1.0)
    assert not torch.allclose(a, b)


class TinyUserEncoder(nn.Module):
    def __init__(self, out_dim: int = 12) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_custom_user_encoder() -> None:
    model = build_model(TinyUserEncoder(12), proj_dim=5)
    assert model.head(torch.rand(2, 12)).shape == (2, 5)
    z1, z2 = model(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    assert z1.shape == z2.shape == (2, 5)


def test_custom_encoder_with_explicit_dim() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 7))
    model = build_model(net, proj_dim=4, encoder_dim=7)
    assert model(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))[0].shape == (2, 4)


def test_custom_encoder_without_out_dim_raises() -> None:
    with pytest.raises(ValueError, match="out_dim"):
        build_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 4)))


def test_unknown_encoder_raises() -> None:
    with pytest.raises(ValueError, match="resnet1000"):
        build_encoder("resnet1000")
    with pytest.raises(ValueError, match="resnet1000"):
        build_model("resnet1000")


def test_the_grid_encoder_keeps_where_a_feature_is_and_averages_to_the_global_one() -> None:
    """small_cnn_g2's h is the last map averaged over each quarter (channel-major, then the 2×2
    cells); the mean of the four cells is small_cnn's h with the same weights."""
    torch.manual_seed(0)
    grid, plain = build_encoder("small_cnn_g2", 1, 28), build_encoder("small_cnn", 1, 28)
    plain.load_state_dict(grid.state_dict())
    x = torch.rand(3, 1, 28, 28)
    h = grid.eval()(x)
    assert h.shape == (3, 1024) and grid.out_dim == 1024 and plain.out_dim == 256
    cells = h.view(3, 256, 2, 2)
    assert torch.allclose(cells.mean((2, 3)), plain.eval()(x), atol=1e-6)


def test_auto_pools_to_a_grid_above_16_px() -> None:
    assert [resolve_encoder("auto", s) for s in (8, 16, 17, 28, 32, 224)] == [
        "small_cnn", "small_cnn", "small_cnn_g2", "small_cnn_g2", "small_cnn_g2", "small_cnn_g2"]
    assert resolve_encoder("resnet18", 16) == "resnet18"
    assert build_encoder("auto", 1, 28).out_dim == 1024 and build_encoder("auto", 1, 16).out_dim == 256
