"""SimCLRv2's distillation: the loss against a written-out reference, a frozen teacher, and a
student smaller than its teacher trained end to end through `simclr distill`; and `simclr eval`
fine-tuning from the first layer of a trained v2 head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.neighbors import KNeighborsClassifier

from simclr.cli import main
from simclr.config import load_config
from simclr.distill import DistillSettings, distill, distillation_loss
from simclr.evaluate import extract_features
from simclr.experiment import finetune_starts, load_datasets
from simclr.finetune import Classifier
from simclr.modality import get
from simclr.model import SmallCNN, build_encoder, build_model


def reference_loss(student: list[list[float]], teacher: list[list[float]], tau: float) -> float:
    """SimCLRv2 equation 2, one example and one class at a time, in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        t_norm = sum(math.exp(t / tau) for t in t_row)
        s_norm = sum(math.exp(s / tau) for s in s_row)
        for s, t in zip(s_row, t_row, strict=True):
            p_teacher = math.exp(t / tau) / t_norm
            total -= p_teacher * math.log(math.exp(s / tau) / s_norm)
    return total / len(student)


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_loss_matches_the_reference_and_its_gradient_is_p_student_minus_p_teacher(tau: float) -> None:
    gen = torch.Generator().manual_seed(0)
    student = (3 * torch.randn(5, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    teacher = 3 * torch.randn(5, 7, generator=gen, dtype=torch.float64)
    loss = distillation_loss(student, teacher, tau)
    assert loss.item() == pytest.approx(reference_loss(student.tolist(), teacher.tolist(), tau), rel=1e-12)
    loss.backward()  # type: ignore[no-untyped-call]
    # d/ds of the cross-entropy of softmax(s/τ) against p_T is (p_S − p_T)/τ, per example.
    expected = (torch.softmax(student / tau, 1) - torch.softmax(teacher / tau, 1)) / tau / len(student)
    assert student.grad is not None and torch.allclose(student.grad, expected.detach(), atol=1e-12)


def test_loss_is_the_teachers_entropy_when_the_student_agrees() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    p = torch.softmax(logits / 2, 1)
    assert distillation_loss(logits, logits, 2.0).item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-6)


def small(width: int, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(1, width=width)


def test_teacher_stays_frozen_and_the_student_learns() -> None:
    """After distillation the teacher's parameters and BatchNorm statistics are bit-identical
    and its mode is restored; the student learned the teacher's predictions, with or without
    the labelled loss. Its head starts at zero, so the untrained student predicts the uniform
    distribution and its distillation loss is exactly ln 10 (2.303); after 15 steps it is 1.83
    (1.85 with the labelled loss mixed in; 2026-12-06), the teacher's entropy, 1.01, the floor."""
    teacher = Classifier(small(16, 0), 128, 10).train()
    torch.nn.init.normal_(teacher.head.weight)  # a teacher with opinions:
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    x = images.float() / 255
    with torch.no_grad():  # logits of standard deviation 3 in eval mode, where it labels
        teacher.head.weight.mul_(3 / teacher.eval()(x).std())
        teacher_logits = teacher(x)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    labels = torch.arange(40) % 10
    untrained = Classifier(small(8, 1), 64, 10).eval()
    with torch.no_grad():
        assert distillation_loss(untrained(x), teacher_logits, 1.0).item() == pytest.approx(math.log(10))
    for weight in (0.0, 0.5):
        settings = DistillSettings(epochs=5, batch_size=16, labeled_weight=weight, flip_prob=0.0)
        student = distill(teacher, small(8, 1), images, 10, images[:20], labels[:20], seed=0, settings=settings)
        assert teacher.training and not student.training
        assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
        assert all(p.grad is None for p in teacher.parameters())
        with torch.no_grad():
            loss = distillation_loss(student(x), teacher_logits, 1.0).item()
        assert loss < math.log(10) - 0.25, (weight, loss)


def test_labeled_loss_needs_labels() -> None:
    teacher = Classifier(small(8, 0), 64, 10)
    with pytest.raises(ValueError, match="labelled"):
        distill(teacher, small(8, 1), torch.zeros(4, 1, 8, 8, dtype=torch.uint8), 10,
                settings=DistillSettings(labeled_weight=0.5))


@pytest.fixture(scope="module")
def v2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SimCLRv2 run (3-layer head) on 300 unlabelled native 8×8 digits (so that training
    skips its evaluation), and a labelled set of 600 others, half of them held out."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("v2")
    d = load_digits()
    images = np.round(d.images * 255 / 16).astype(np.uint8)
    np.savez(root / "unlabelled.npz", x=images[:300])
    np.savez(root / "labelled.npz", x=images[300:900], y=d.target[300:900])
    code = main(["train", "--data", str(root / "unlabelled.npz"), "--epochs", "1", "--batch-size", "64",
                 "--out", str(root / "run"), "model.head_version=2", "model.encoder=small_cnn", "report=false",
                 "threads=1"])
    assert code == 0
    return root / "run"


@pytest.fixture(scope="module")
def distilled(v2_run: Path) -> Path:
    out = v2_run / "student"
    code = main(["distill", str(v2_run), "--data", str(v2_run.parent / "unlabelled.npz"), "--student",
                 "small_cnn_w0.5", "--labeled-data", str(v2_run.parent / "labelled.npz"), "--out", str(out),
                 "distill.epochs=2", "distill.batch_size=64", "eval_finetune=false"])
    assert code == 0
    return out


def test_a_smaller_student_distills_end_to_end(v2_run: Path, distilled: Path) -> None:
    out = distilled
    data = json.loads((out / "eval.json").read_text())
    assert any("from head1" in note for note in data["notes"])  # the v2 recipe: teacher from head layer 1
    teacher, student = load_file(out / "teacher.safetensors"), load_file(out / "student.safetensors")
    # The accuracies are of the networks written out, on the held-out half of labelled.npz:
    # recomputed here from the files, the teacher rebuilt as f plus the v2 head's first layer.
    cfg = load_config(out / "config.yaml")
    train, test = load_datasets(cfg, get("image"), str(v2_run.parent / "labelled.npz"), input_shape=[1, 8, 8])
    assert train.labels is not None and test is not None and test.labels is not None and len(test) == 300
    x, y = test.inputs.float() / 255, test.labels
    v2 = build_model("small_cnn", 1, 8, head_version=2)
    rebuilt = {"teacher": Classifier(finetune_starts(v2.encoder, v2.head, ["head1"])["head1"], 256, 10),
               "student": Classifier(build_encoder("small_cnn_w0.5", 1, 8), 128, 10)}
    for name, weights in (("teacher", teacher), ("student", student)):
        net = rebuilt[name]
        net.load_state_dict(weights, strict=True)
        with torch.no_grad():
            hits = int((net.eval()(x).argmax(1) == y).sum()) / len(y)
        assert data[name]["classifier_10pct"] == pytest.approx(hits, abs=1e-9), name
    # The suite's rows are of the student's encoder: its kNN is scikit-learn's on those features.
    f = rebuilt["student"].encoder
    knn = KNeighborsClassifier(min(200, len(train)), metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1 - d) / 0.1))
    expected = knn.fit(extract_features(f, train.inputs).numpy(), train.labels.numpy()).score(
        extract_features(f, test.inputs).numpy(), y.numpy())
    assert data["student"]["knn"] == pytest.approx(expected, abs=1.01 / 300)
    assert sum(v.numel() for v in student.values()) < sum(v.numel() for v in teacher.values()) / 3
    assert student["encoder.features.0.weight"].shape[0] == 16  # half of small_cnn's 32 channels
    assert "encoder.1.0.weight" in teacher  # the teacher kept the head's first layer


def test_distill_rejects_an_unknown_student(v2_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["distill", str(v2_run), "--data", "digits", "--student", "resnet9000"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown student encoder 'resnet9000'")


def test_eval_fine_tunes_from_h_and_from_the_first_head_layer(v2_run: Path, distilled: Path) -> None:
    code = main(["eval", str(v2_run), "--data", str(v2_run.parent / "labelled.npz"), "eval_finetune_from=[h,head1]"])
    assert code == 0
    data = json.loads((v2_run / "eval.json").read_text())
    for metric in ("finetune_1pct", "finetune_head1_1pct", "finetune_10pct", "finetune_head1_10pct"):
        assert isinstance(data["simclr"][metric], float), metric
    assert isinstance(data["supervised"]["finetune_10pct"], float)
    assert data["supervised"]["finetune_head1_10pct"] is None
    # Fine-tuning from head1 on 10 % of the labels is what `simclr distill` does to make its
    # teacher (same seeded labels, same recipe); that teacher's accuracy is recomputed from its
    # weights file in test_a_smaller_student_distills_end_to_end.
    teacher = json.loads((distilled / "eval.json").read_text())["teacher"]["classifier_10pct"]
    assert data["simclr"]["finetune_head1_10pct"] == pytest.approx(teacher, abs=1e-9)
