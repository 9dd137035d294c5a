"""Fine-tuning the whole encoder plus a linear head on few labels (SimCLR's semi-supervised
protocol): it learns, it uses the initialization it is given, it is seeded, and it never
touches the caller's encoder or random state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simclr.data import ImageData, load_images
from simclr.evaluate import balanced_subset
from simclr.finetune import FinetuneSettings, accuracy, finetune, finetune_accuracy
from simclr.model import SmallCNN

# A short budget with a gentle rate: enough to fit a head on good features, too little to
# train a network from scratch. No flips: a flipped digit is another digit (or none).
SHORT = FinetuneSettings(min_steps=20, lr=0.01, flip_prob=0.0)



@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_images("digits", None, 8)  # the native 8×8: cheap


def fresh(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(1, width=16)


def test_steps_cover_the_epochs_with_a_floor() -> None:
    s = FinetuneSettings(epochs=20, min_steps=50, batch_size=32)
    assert s.steps(10) == 50  # one batch of 10 per epoch: the floor applies
    assert s.steps(90) == 60  # 3 batches per epoch
    assert s.steps(1000) == 20 * 32


def test_a_good_initialization_beats_training_from_scratch(digits: ImageData) -> None:
    """Fine-tuning on one label per class from an encoder that already separates the digits
    must beat the same network from random weights on the same ten labels and budget
    (measured: about 0.9 against 0.25). It fails if fine-tuning ignores (re-initializes)
    or wrecks the encoder it is given."""
    assert digits.labels is not None
    pool, test = torch.arange(0, 800), torch.arange(800, len(digits))
    good = finetune(fresh(1), digits.images[pool], digits.labels[pool], 10, seed=1,
                    settings=FinetuneSettings(epochs=4, batch_size=64, flip_prob=0.0))
    assert accuracy(good, digits.images[test], digits.labels[test]) > 0.8  # fine-tuning learns

    few = pool[balanced_subset(digits.labels[pool].numpy(), 1, seed=0)]
    assert np.bincount(digits.labels[few].numpy()).tolist() == [1] * 10
    args = (digits.images[few], digits.labels[few], digits.images[test], digits.labels[test])
    from_good = finetune_accuracy(good.encoder, *args, seed=0, settings=SHORT)
    from_scratch = finetune_accuracy(fresh(2), *args, seed=0, settings=SHORT)
    assert 0.0 <= from_scratch <= 1.0
    assert from_good > from_scratch + 0.3, (from_good, from_scratch)


def test_finetuning_is_seeded_and_leaves_encoder_and_rng_alone(digits: ImageData) -> None:
    assert digits.labels is not None
    images, labels = digits.images[:64], digits.labels[:64]
    encoder = fresh().train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    rng = torch.get_rng_state()
    cheap = FinetuneSettings(epochs=1, min_steps=4, batch_size=16)
    a = finetune(encoder, images, labels, 10, seed=0, settings=cheap).state_dict()
    b = finetune(encoder, images, labels, 10, seed=0, settings=cheap).state_dict()
    c = finetune(encoder, images, labels, 10, seed=1, settings=cheap).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert torch.equal(torch.get_rng_state(), rng)
    assert encoder.training
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(a["encoder.features.0.weight"], before["features.0.weight"])  # the copy trained
