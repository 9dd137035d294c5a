"""Semi-supervised evaluation: fine-tune the whole encoder plus a linear head on a few labels.

The SimCLR paper (Chen et al. 2020, arXiv:2002.05709, section 6 and appendix B.5) fine-tunes
the pretrained network on 1% and 10% of the labels and compares it with the same architecture
trained from scratch on those labels alone; SimCLRv2 (arXiv:2006.10029) does the same. Here
the recipe is shrunk to run on a CPU: SGD with Nesterov momentum, cosine decay per step, and
only random resized crops and flips as augmentation (as the paper's fine-tuning does) for
images and videos (one crop and flip per video); series and text are fine-tuned on their
inputs as they are (their encoders' dropout is the only noise), since crops and flips are image
operations.
The passed-in encoder is deep-copied and never touched.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from simclr.augment import ImageAugment
from simclr.data.rows import Rows

log = logging.getLogger("simclr")


@dataclass(frozen=True)
class FinetuneSettings:
    """The fine-tuning budget and recipe, shared by the SimCLR init and the from-scratch baseline."""

    epochs: int = 20  # passes over the labelled subset...
    min_steps: int = 50  # ...but at least this many optimizer steps (a tiny subset is one batch)
    batch_size: int = 32
    lr: float = 0.02  # peak, SGD with Nesterov momentum; cosine decay to 0 over the steps
    momentum: float = 0.9
    weight_decay: float = 5e-4  # not applied to biases and normalization parameters
    min_scale: float = 0.5  # random resized crop area fraction ~ U(min_scale, 1): mild crops
    flip_prob: float = 0.5  # horizontal flips (set 0 for data such as digits or text)

    def steps(self, n: int) -> int:
        """Optimizer steps for `n` labelled examples."""
        return max(self.epochs * math.ceil(n / min(self.batch_size, n)), self.min_steps)


class Classifier(nn.Module):
    """Encoder f followed by a linear head on h: logits = W f(x) + b.

    The head starts at zero, so the first steps fit the head before any gradient reaches the
    encoder, rather than a random head pushing random gradients into pretrained features; it
    also leaves nothing random to seed."""

    def __init__(self, encoder: nn.Module, feature_dim: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        # skip_init: weights about to be zeroed take no draw from the caller's random generator
        self.head: nn.Linear = nn.utils.skip_init(nn.Linear, feature_dim, n_classes)  # type: ignore[no-untyped-call]
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))  # type: ignore[no-any-return]


def sgd_nesterov(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum; weight decay on weights only, not on biases or BN parameters."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, momentum=momentum, nesterov=True,
    )


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to [0, 1]; series and token ids are already the encoder's input."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def crop_flip(augment: ImageAugment, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Images (b, c, s, s) each with its own crop and flip; videos (b, f, c, s, s) with one crop
    and flip for all the frames of a video (the video encoder picks its clip of them)."""
    if x.ndim == 5:
        b, f = x.shape[:2]
        return augment(x.flatten(0, 1), gen, frames=f).view(b, f, *x.shape[2:])
    return augment(x, gen)


def clip_batch(inputs: torch.Tensor | Rows, batch_size: int) -> int:
    """A batch size for inference that counts each frame of a video (N, F, C, H, W) as one
    image, so a batch of videos takes about the memory of `batch_size` images."""
    return max(1, batch_size // int(inputs.shape[1])) if inputs.ndim == 5 else batch_size


def finetune(
    encoder: nn.Module, images: torch.Tensor, labels: torch.Tensor, n_classes: int,
    device: torch.device | str = "cpu", seed: int = 0, settings: FinetuneSettings | None = None,
) -> Classifier:
    """Train a copy of `encoder` plus a new linear head on uint8 `images` (N, C, H, W) or videos
    (N, F, C, H, W), or on series or token ids, with
    integer `labels`, by cross-entropy; returns the classifier in eval mode. Seeded: the batch
    order and the augmentations come from `seed`; the caller's random state is not used."""
    s = settings or FinetuneSettings()
    n = len(images)
    if n < 2:
        raise ValueError("fine-tuning needs at least two labelled examples")
    f = copy.deepcopy(encoder).to(device)
    f.eval()
    with torch.no_grad():
        d = int(f(_to_unit(images[:2]).to(device)).shape[1])
    model = Classifier(f, d, n_classes).to(device)
    optimizer = sgd_nesterov(model, s.lr, s.momentum, s.weight_decay)
    is_pixels = images.dtype == torch.uint8  # images (N, C, H, W) or videos (N, F, C, H, W)
    augment = ImageAugment(
        size=int(images.shape[-1]), min_scale=s.min_scale, flip_prob=s.flip_prob,
        color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
    ) if is_pixels else None
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    batch, total = min(s.batch_size, n), s.steps(n)
    # A stream of epoch permutations cut into full batches, so no batch is ever of size one.
    stream = torch.cat([torch.randperm(n, generator=order_gen) for _ in range(math.ceil(total * batch / n))])
    labels = labels.long()
    model.train()
    for step in range(total):
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * s.lr * (1 + math.cos(math.pi * step / total))
        idx = stream[step * batch : (step + 1) * batch]
        x = images[idx].to(device)
        x = crop_flip(augment, x, aug_gen) if augment is not None else _to_unit(x)
        loss = F.cross_entropy(model(x), labels[idx].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(
    model: nn.Module, images: torch.Tensor | Rows, labels: torch.Tensor,
    device: torch.device | str = "cpu", batch_size: int = 512,
) -> float:
    """Top-1 accuracy of a classifier on uint8 images, in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    batch_size = clip_batch(images, batch_size)
    for start in range(0, len(images), batch_size):
        x = _to_unit(images[start : start + batch_size]).to(device)
        pred = model(x).argmax(1).cpu()
        correct += int((pred == labels[start : start + batch_size].cpu()).sum())
    model.train(was_training)
    return correct / max(len(images), 1)


def finetune_accuracy(
    encoder: nn.Module, train_images: torch.Tensor, train_labels: torch.Tensor,
    test_images: torch.Tensor, test_labels: torch.Tensor, device: torch.device | str = "cpu",
    seed: int = 0, settings: FinetuneSettings | None = None,
) -> float:
    """Fine-tune a copy of `encoder` on the training examples and return its test accuracy
    after the last step (no model selection on the test set)."""
    n_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    model = finetune(encoder, train_images, train_labels, n_classes, device, seed, settings)
    return accuracy(model, test_images, test_labels, device)
