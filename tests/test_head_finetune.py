"""Fine-tuning from a layer of the projection head (SimCLRv2): the trained head's weights are
what fine-tuning starts from, and the layer choice is validated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from simclr.config import load_config
from simclr.errors import UserError
from simclr.experiment import finetune_starts
from simclr.finetune import FinetuneSettings, finetune
from simclr.modality import get
from simclr.model import ProjectionHead, build_model, head_layers


def test_head_layers_cut_after_each_layers_bn_and_relu() -> None:
    v1, v2 = ProjectionHead(16, 8, version=1), ProjectionHead(16, 8, version=2)
    assert [type(m) for m in head_layers(v1, 1)] == [nn.Linear, nn.ReLU]
    assert [type(m) for m in head_layers(v2, 1)] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert len(head_layers(v2, 2)) == 6 and len(head_layers(v2, 3)) == 8 and len(head_layers(v2, 0)) == 0
    with pytest.raises(ValueError, match="3 layers"):
        head_layers(v2, 4)


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A checkpoint whose v2 head has non-default weights and BatchNorm statistics."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 8, head_version=2)
    with torch.no_grad():
        for name, t in model.head.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + (0.5 if "var" in name else -0.5))
    torch.save({"model": model.state_dict()}, tmp_path / "checkpoint.pt")
    return tmp_path, {k: v.clone() for k, v in model.state_dict().items()}


def test_head1_is_the_trained_first_layer(trained: tuple[Path, dict[str, torch.Tensor]]) -> None:
    run_dir, state = trained
    cfg = load_config(None, ["model.head_version=2", "model.encoder=small_cnn"])  # the fixture's network
    model = get("image").load_network(cfg, [1, 8, 8], run_dir, torch.load(run_dir / "checkpoint.pt"))
    encoder, head = model.encoder, model.head
    start = finetune_starts(encoder, head, ["head1"])["head1"].eval()
    x = torch.rand(4, 1, 8, 8)
    # relu(BN(W h)) from the checkpoint's tensors, written out.
    h = encoder.eval()(x)
    u = h @ state["head.layers.0.weight"].T
    mean, var = state["head.layers.1.running_mean"], state["head.layers.1.running_var"]
    gamma, beta = state["head.layers.1.weight"], state["head.layers.1.bias"]
    expected = torch.relu((u - mean) / torch.sqrt(var + 1e-5) * gamma + beta)
    assert torch.allclose(start(x), expected, atol=1e-5)
    # Fine-tuning starts there: after one step at learning rate 0 the weights are the head's.
    images, labels = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8), torch.arange(8) % 4
    tuned = finetune(start, images, labels, 4, settings=FinetuneSettings(epochs=0, min_steps=1, lr=0.0))
    assert torch.equal(tuned.encoder[1][0].weight, state["head.layers.0.weight"])  # type: ignore[index]
    assert tuned.head.in_features == 256  # the head layer's width (small_cnn: d = 256)


def test_a_head_layer_needs_the_head() -> None:
    with pytest.raises(UserError, match="projection head"):
        finetune_starts(nn.Identity(), None, ["h", "head1"])


def test_layer_choice_is_validated() -> None:
    assert load_config(None, ["model.head_version=2", "eval_finetune_from=[h,head1,head2]"]).eval_finetune_from == [
        "h", "head1", "head2"]
    with pytest.raises(UserError, match=r"eval_finetune_from.*head2"):
        load_config(None, ["eval_finetune_from=[head2]"])  # a v1 head has one hidden layer
    with pytest.raises(UserError, match=r"distill\.teacher_from"):
        load_config(None, ["distill.teacher_from=z"])
