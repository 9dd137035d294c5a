"""Self-training by distillation (SimCLRv2, arXiv:2006.10029, section 2, equation 2).

A teacher, the pretrained network fine-tuned on a few labels, labels unlabelled images with
its softened predictions; a student network (the same size: self-training; smaller:
distillation) is trained from random weights to match them:

    L_distill = − Σ_x Σ_y p_T(y | x; τ) log p_S(y | x; τ),   p(y | x; τ) = softmax(logits / τ)

optionally mixed with the cross-entropy on the labelled images: (1 − w)·L_distill + w·L_labelled
(the paper's α is 1 − w). As in the paper's notebook, the teacher sees the same augmented view
as the student. The teacher is frozen: eval mode, no gradients, its parameters, BatchNorm
statistics and mode left exactly as they were.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simclr.augment import ImageAugment
from simclr.checkpoint import save_encoder
from simclr.config import Config, save_config
from simclr.data import ImageData
from simclr.evaluate import evaluate_suite, fraction_name, fraction_subset, save_eval
from simclr.experiment import finetune_starts
from simclr.finetune import Classifier, FinetuneSettings, accuracy, finetune, sgd_nesterov
from simclr.model import ProjectionHead, build_encoder

log = logging.getLogger("simclr")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """−Σ_y p_T(y|x;τ) log p_S(y|x;τ), averaged over the batch. No τ² factor: the paper has none."""
    p_teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)  # (B, classes)
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)  # (B, classes)
    return -(p_teacher * log_p_student).sum(1).mean()


@dataclass(frozen=True)
class DistillSettings:
    """The student's training budget and recipe (CPU-sized; the paper trains for 400 epochs)."""

    epochs: int = 10  # passes over the unlabelled images
    batch_size: int = 128
    lr: float = 0.1  # peak, SGD with Nesterov momentum; cosine decay to 0 over the steps
    momentum: float = 0.9
    weight_decay: float = 5e-4  # not applied to biases and normalization parameters
    temperature: float = 1.0
    labeled_weight: float = 0.0  # w: (1 − w)·L_distill + w·L_labelled
    min_scale: float = 0.5  # random resized crop area ~ U(min_scale, 1), as in fine-tuning
    flip_prob: float = 0.5

    def steps(self, n: int) -> int:
        return self.epochs * math.ceil(n / min(self.batch_size, n))


def _batches(n: int, batch: int, total: int, gen: torch.Generator) -> torch.Tensor:
    """Epoch permutations cut into `total` full batches (no batch of one for BatchNorm)."""
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(total * batch / n))])


def distill(
    teacher: nn.Module, student_encoder: nn.Module, unlabeled: torch.Tensor, n_classes: int,
    labeled_images: torch.Tensor | None = None, labeled_labels: torch.Tensor | None = None,
    device: torch.device | str = "cpu", seed: int = 0, settings: DistillSettings | None = None,
) -> Classifier:
    """Train `student_encoder` plus a new linear head on the frozen `teacher`'s softened
    predictions for the uint8 `unlabeled` images (N, C, H, W); with `labeled_weight` > 0 also on
    the labelled images. Returns the student in eval mode. Seeded; the caller's random state
    and the teacher are not touched (the student encoder is trained in place)."""
    s = settings or DistillSettings()
    n = len(unlabeled)
    if n < 2:
        raise ValueError("distillation needs at least two unlabelled images")
    use_labels = s.labeled_weight > 0
    if use_labels and (labeled_images is None or labeled_labels is None or len(labeled_images) < 2):
        raise ValueError("labeled_weight > 0 needs at least two labelled images")
    was_training = teacher.training
    teacher.eval()
    student_encoder.to(device).eval()
    with torch.no_grad():
        d = int(student_encoder(unlabeled[:2].to(device).float() / 255).shape[1])
    student = Classifier(student_encoder, d, n_classes).to(device)
    optimizer = sgd_nesterov(student, s.lr, s.momentum, s.weight_decay)
    augment = ImageAugment(
        size=int(unlabeled.shape[-1]), min_scale=s.min_scale, flip_prob=s.flip_prob,
        color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
    )
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    batch, total = min(s.batch_size, n), s.steps(n)
    stream = _batches(n, batch, total, order_gen)
    if use_labels:
        assert labeled_images is not None and labeled_labels is not None
        m = len(labeled_images)
        labeled_batch = min(s.batch_size, m)
        labeled_stream = _batches(m, labeled_batch, total, order_gen)
    student.train()
    try:
        for step in range(total):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * s.lr * (1 + math.cos(math.pi * step / total))
            x = augment(unlabeled[stream[step * batch : (step + 1) * batch]].to(device), aug_gen)  # (b, c, s, s)
            with torch.no_grad():
                teacher_logits = teacher(x)  # (b, classes)
            loss = distillation_loss(student(x), teacher_logits, s.temperature)
            if use_labels:
                idx = labeled_stream[step * labeled_batch : (step + 1) * labeled_batch]
                xl = augment(labeled_images[idx].to(device), aug_gen)  # type: ignore[index]
                labelled = F.cross_entropy(student(xl), labeled_labels[idx].long().to(device))  # type: ignore[index]
                loss = (1 - s.labeled_weight) * loss + s.labeled_weight * labelled
            if not torch.isfinite(loss):
                raise FloatingPointError(f"distillation loss is {loss.item()} at step {step}; lower distill.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if step % 50 == 0 or step == total - 1:
                log.info("distill step %d/%d: loss %.4f", step + 1, total, loss.item())
    finally:
        teacher.train(was_training)
    student.eval()
    return student


def teacher_layer(cfg: Config) -> str:
    """distill.teacher_from, with auto resolved: head1 for a v2 head (SimCLRv2's recipe), else h."""
    if cfg.distill.teacher_from != "auto":
        return cfg.distill.teacher_from
    return "head1" if cfg.model.head_version == 2 else "h"


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def distill_experiment(
    cfg: Config, encoder: nn.Module, head: ProjectionHead | None, train_data: ImageData, test_data: ImageData,
    unlabeled: torch.Tensor, student_name: str, device: torch.device, out: Path,
) -> dict[str, dict[str, float]]:
    """Fine-tune the teacher on `distill.label_fraction` of `train_data`'s labels (the same
    class-balanced subset as the evaluation's), distill it into a new `student_name` network on
    the `unlabeled` images, evaluate both classifiers on `test_data` and the student's encoder
    with the evaluation suite. Writes teacher.safetensors, student.safetensors, config.yaml and
    eval.json (rows `teacher` and `student` carry `classifier_<p>pct`, the network's own test
    accuracy; the suite's `simclr` row is the student's)."""
    assert train_data.labels is not None and test_data.labels is not None
    d = cfg.distill
    ytr, yte = train_data.labels.long(), test_data.labels.long()
    n_classes = int(max(int(ytr.max()), int(yte.max()))) + 1
    labelled, note = fraction_subset(ytr.numpy(), d.label_fraction, cfg.seed)
    images, labels = train_data.images[labelled], ytr[labelled]
    layer = teacher_layer(cfg)
    tune = FinetuneSettings(flip_prob=cfg.augment.flip_prob)
    log.info("teacher: fine-tuning from %s on %d labels", layer, len(labelled))
    start = finetune_starts(encoder, head, [layer])[layer]
    teacher = finetune(start, images, labels, n_classes, device, cfg.seed, tune)
    metric = f"classifier_{fraction_name(d.label_fraction)}"
    teacher_accuracy = accuracy(teacher, test_data.images, yte, device)
    log.info("teacher test accuracy %.4f; distilling into %s on %d unlabelled images",
             teacher_accuracy, student_name, len(unlabeled))

    def make_student() -> nn.Module:
        return build_encoder(student_name, train_data.channels, train_data.image_size, cfg.model.cifar_stem)

    settings = DistillSettings(
        d.epochs, d.batch_size, d.lr, weight_decay=d.weight_decay, temperature=d.temperature,
        labeled_weight=d.labeled_weight, flip_prob=cfg.augment.flip_prob,
    )
    # The student starts from the same seeded weights as the suite's random_init and supervised rows.
    student = distill(teacher, _seeded(make_student, cfg.seed), unlabeled, n_classes, images, labels,
                      device, cfg.seed, settings)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    save_encoder(out / "teacher.safetensors", teacher)
    save_encoder(out / "student.safetensors", student)
    results, notes = evaluate_suite(
        student.encoder, make_student, train_data, test_data, device, cfg.seed, cfg.eval_few_shot, cfg.eval_knn_k,
        finetune=cfg.eval_finetune, finetune_settings=tune,
    )
    results = {
        "teacher": {metric: teacher_accuracy},
        "student": {metric: accuracy(student, test_data.images, yte, device), **results.pop("simclr")},
        **results,
    }
    notes = [*([note] if note else []), f"teacher fine-tuned from {layer}; student {student_name}", *notes]
    save_eval(out / "eval.json", results, notes)
    return results
