"""Nothing lost: exact resume after SIGKILL, atomic checkpoints, safe loading, clean stops."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from simclr.checkpoint import load_checkpoint, save_checkpoint
from simclr.errors import UserError
from simclr.export import export_encoder
from simclr.model import build_model

# Small, deterministic: one thread, 14 steps per epoch on digits' 898 training images.
FAST = ["--batch-size", "64", "data.pretrain_on=train", "threads=1", "log_every=1", "checkpoint_every=1",
        "eval_finetune=false", "report=false"]


def simclr(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simclr", *args], capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload, no-any-return]


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def replay_seed() -> int:
    """A fresh seed each run (any kill point must work), printed so that a failure can be
    replayed with SIMCLR_TEST_SEED=<seed>."""
    return int(os.environ.get("SIMCLR_TEST_SEED", random.randrange(2**32)))


def last_step(run: Path) -> int:
    return (logged_steps(run) or [0])[-1]


def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert simclr("train", "--epochs", "2", "--out", str(full), *FAST).returncode == 0

    seed = replay_seed()
    kill_at = random.Random(seed).randint(3, 24)  # of 28 steps; any step must work
    print(f"SIMCLR_TEST_SEED={seed}: SIGKILL at step {kill_at}")
    proc = subprocess.Popen([sys.executable, "-m", "simclr", "train", "--epochs", "2", "--out", str(killed), *FAST],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while last_step(killed) < kill_at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last_step(killed) < 28, "the run finished before it could be killed"

    (killed / "metrics.jsonl").unlink()  # the checkpoint carries the metrics so far too
    resumed = simclr("train", "--resume", str(killed), *FAST)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr.splitlines()[0]
    a, b = load_file(str(full / "encoder.safetensors")), load_file(str(killed / "encoder.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resuming from step ~{kill_at} (SIMCLR_TEST_SEED={seed})"
    head_a = load_checkpoint(full / "checkpoint.pt")["model"]
    head_b = load_checkpoint(killed / "checkpoint.pt")["model"]
    assert all(torch.equal(head_a[k], head_b[k]) for k in head_a)
    assert logged_steps(killed) == list(range(1, 29)), "metrics.jsonl must hold each step once after a resume"


def test_sigint_checkpoints_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "simclr", "train", "--epochs", "3", "--out", str(run),
                             "--batch-size", "64", "data.pretrain_on=train", "threads=1", "log_every=1",
                             "checkpoint_every=0",
                             "eval_finetune=false", "report=false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while last_step(run) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert "--resume" in err.strip().splitlines()[-1]
    state = load_checkpoint(run / "checkpoint.pt")
    assert 5 <= state["progress"]["step"] < 42  # saved at the step it stopped, mid-epoch
    done = simclr("train", "--resume", str(run), "--batch-size", "64", "threads=1", "eval_every=0")
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["step"] == 42


def _state(step: int, value: float) -> dict[str, object]:
    return {"model": {"w": torch.full((4,), value)}, "progress": {"step": step}}


def test_crash_during_checkpoint_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, _state(1, 1.0), keep=2)

    def torn_save(obj: object, f: str) -> None:
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(2, 2.0), keep=2)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4,), 1.0))


WRITER = """
import sys, torch
from pathlib import Path
from simclr.checkpoint import save_checkpoint
path = Path(sys.argv[1])
for step in range(1, 10_000):
    save_checkpoint(path, {"model": {"w": torch.full((2_000_000,), float(step))}, "progress": {"step": step}}, keep=2)
    print(step, flush=True)
"""


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # one checkpoint exists
    seed = replay_seed()
    delay = random.Random(seed).uniform(0.05, 0.5)
    print(f"SIMCLR_TEST_SEED={seed}: SIGKILL {delay:.3f} s after the first checkpoint")
    time.sleep(delay)  # then die at an arbitrary point of a later write
    proc.kill()
    proc.wait()
    state = load_checkpoint(path)
    step = state["progress"]["step"]
    assert torch.equal(state["model"]["w"], torch.full((2_000_000,), float(step)))
    # A kill between writing the new numbered file and deleting the oldest leaves keep + 1;
    # the next save removes the extra one.
    assert len(list(tmp_path.glob("checkpoint-*.pt"))) <= 3
    save_checkpoint(path, {"model": {"w": torch.zeros(1)}, "progress": {"step": step + 1}}, keep=2)
    assert len(list(tmp_path.glob("checkpoint-*.pt"))) == 2


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("command", ["train --resume", "export", "eval", "embed --data digits --out h.npz"])
def test_malicious_checkpoint_runs_nothing(tmp_path: Path, command: str) -> None:
    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    torch.save({"model": _Payload(marker)}, run / "checkpoint.pt")  # a pickle that would run a command
    torch.load(run / "checkpoint.pt", weights_only=False)  # proof the payload is live: unsafe loading runs it
    assert marker.exists()
    marker.unlink()
    words = command.split()
    result = simclr(words[0], str(run), *words[1:], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists(), "loading the checkpoint executed its payload"


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04truncated"])
def test_broken_checkpoint_is_one_line_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "checkpoint.pt")
    result = simclr("export", str(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = simclr("train", "--epochs", "1", "--out", str(run), "--batch-size", "64", "checkpoint_every=1",
                    "optim.name=sgd", "optim.lr=1e30", "optim.warmup_steps=0", "report=false")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the loss was not finite at step") and "Traceback" not in result.stderr
    state = load_checkpoint(run / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_with_other_model_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert simclr("train", "--epochs", "1", "--out", str(run), "--batch-size", "256", "eval_finetune=false",
                  "report=false").returncode == 0
    result = simclr("train", "--out", str(run), "model.head_version=2")
    assert result.returncode == 2 and "model.head_version" in result.stderr


@pytest.mark.parametrize("cifar_stem", [True, False])
def test_export_loads_strictly_into_torchvision(tmp_path: Path, cifar_stem: bool) -> None:
    model = build_model("resnet18", 3, 32 if cifar_stem else 224)
    path = export_encoder(model.encoder, [3, 32, 32], "torchvision", tmp_path / "encoder.pt")
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()  # type: ignore[assignment]
    if cifar_stem:  # the documented CIFAR stem
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()  # type: ignore[assignment]
    net.load_state_dict(torch.load(path, weights_only=True), strict=True)
    net.eval()
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(net(x), model.encoder(x))

    st = export_encoder(model.encoder, [3, 32, 32], "safetensors", tmp_path / "enc.safetensors")
    assert load_file(str(st)).keys() == model.encoder.state_dict().keys()


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from simclr.config import Config, to_dict

    cfg = Config()
    cfg.model.encoder = "resnet18"
    model = build_model("resnet18", 3, 32)
    state = {"model": model.state_dict(), "progress": {"step": 1}, "config": to_dict(cfg), "input_shape": [3, 32, 32]}
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    result = subprocess.run([sys.executable, "-m", "simclr", "export", str(tmp_path), "--format", "onnx"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    session = ort.InferenceSession(str(tmp_path / "encoder.onnx"))
    x = torch.rand(5, 3, 32, 32)  # another batch size than the export's example
    model.eval()
    expected = model.encoder(x).detach().numpy()
    got = session.run(None, {"x": x.numpy()})[0]
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 1e-4


def test_full_disk_is_refused_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import shutil as shutil_module

    from simclr import cli

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr("simclr.training.shutil.disk_usage", lambda p: usage._replace(free=1024))
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "MiB free" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_failed_checkpoint_write_stops_with_error_and_keeps_previous(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from simclr import checkpoint
    from simclr.config import Config

    cfg = Config()
    checkpoint.save_training_checkpoint(tmp_path, _state(1, 1.0), cfg)

    def disk_full(path: Path, write: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "atomic_write", disk_full)
    with pytest.raises(UserError, match="No space left on device; the previous one is kept"):
        checkpoint.save_training_checkpoint(tmp_path, _state(2, 2.0), cfg)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["progress"]["step"] == 1


def test_a_repeated_sigterm_keeps_the_stop_request_and_a_second_ctrl_c_quits() -> None:
    """SLURM may signal torchrun and its workers, and torchrun forwards its own SIGTERM: a worker
    gets two. The second must not abandon the checkpoint the first asked for; a second Ctrl-C,
    a person's "now", quits at once."""
    from simclr.signals import SignalGuard

    with SignalGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
