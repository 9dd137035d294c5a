"""Distributed SimCLR is the same algorithm as one big batch: proofs on CPU with gloo.

Two processes with B samples each must give the loss, the gradients and the optimizer step
of one process with the concatenated 2B batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from simclr.checkpoint import load_checkpoint
from simclr.global_bn import to_global_batchnorm
from simclr.loss import nt_xent
from simclr.model import ProjectionHead, SimCLR, SmallCNN
from simclr.optim import build_optimizer
from simclr.training import train_step

WORLD = 2
B, D = 6, 16  # per-rank batch, embedding size


def _init(rank: int, store: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)


def _embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(2, WORLD * B, D, generator=g, dtype=torch.float64)
    return z1, z2


def _loss_worker(rank: int, store: str, out: str) -> None:
    _init(rank, store)
    z1_all, z2_all = _embeddings()
    z1 = z1_all[rank * B : (rank + 1) * B].clone().requires_grad_()
    z2 = z2_all[rank * B : (rank + 1) * B].clone().requires_grad_()
    loss = nt_xent(z1, z2, temperature=0.2)
    loss.backward()
    local = nt_xent(z1, z2, temperature=0.2, gather_distributed=False)  # this rank's pairs only
    torch.save({"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad, "local": local.detach()}, f"{out}.{rank}")
    torch_dist.destroy_process_group()


def test_nt_xent_two_ranks_equal_one_process(tmp_path: Path) -> None:
    out = str(tmp_path / "loss")
    mp.spawn(_loss_worker, args=(str(tmp_path / "store"), out), nprocs=WORLD)
    z1_all, z2_all = _embeddings()
    z1_all.requires_grad_()
    z2_all.requires_grad_()
    single = nt_xent(z1_all, z2_all, temperature=0.2, gather_distributed=False)
    single.backward()
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]
    # Each rank's loss is the mean over its own anchors; their mean is the global loss.
    mean_loss = sum(r["loss"] for r in ranks) / WORLD
    assert torch.allclose(mean_loss, single.detach(), rtol=1e-6, atol=0)
    # Each rank's gradient holds the terms of every rank's loss (the gather's backward sums
    # them), so it is WORLD times the gradient of the global mean; DistributedDataParallel
    # divides by WORLD when it averages parameter gradients.
    for r, got in enumerate(ranks):
        rows = slice(r * B, (r + 1) * B)
        assert torch.allclose(got["g1"] / WORLD, z1_all.grad[rows], rtol=1e-6, atol=1e-12)
        assert torch.allclose(got["g2"] / WORLD, z2_all.grad[rows], rtol=1e-6, atol=1e-12)
    # The bug this guards against: gathering without gradients loses most of the terms.
    assert not torch.allclose(ranks[0]["g1"] / WORLD, z1_all.grad[:B] / WORLD, rtol=1e-3)
    # gather_distributed=False inside a process group: negatives from this rank's B pairs only,
    # the one-process loss of that slice, and not the global batch's.
    for r, got in enumerate(ranks):
        rows = slice(r * B, (r + 1) * B)
        alone = nt_xent(z1_all[rows].detach(), z2_all[rows].detach(), temperature=0.2, gather_distributed=False)
        assert torch.allclose(got["local"], alone, rtol=1e-12, atol=0)
        assert abs(got["local"].item() - got["loss"].item()) > 0.1


def _model() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(SmallCNN(in_channels=3, width=8), ProjectionHead(64, 32, version=2))


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(WORLD * B, 3, 12, 12, generator=g), torch.rand(WORLD * B, 3, 12, 12, generator=g)


def _step_worker(rank: int, store: str, out: str, bf16: bool) -> None:
    _init(rank, store)
    model = to_global_batchnorm(_model(), cuda=False)
    net = DistributedDataParallel(model)
    opt = build_optimizer(model, "lars", lr=0.5, weight_decay=1e-4)
    x1, x2 = _views()
    rows = slice(rank * B, (rank + 1) * B)
    train_step(net, opt, x1[rows], x2[rows], temperature=0.5, bf16=bf16)
    if rank == 0:
        torch.save(model.state_dict(), out)
    torch_dist.destroy_process_group()


def _step_change(model: SimCLR, before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v - before[k]).double() for k, v in model.state_dict().items() if v.is_floating_point()}


# Compared by the change one step makes, not by the weights: a LARS step moves a weight by
# lr × trust = 0.5 × 0.001 of its norm, so weights compared to 2e-2 would pass a skipped step.
# Each parameter's and running statistic's change must be within STEP_TOLERANCE[bf16] of the
# one-process change (relative to its norm). Measured on 2026-12-06 (2-core AMD EPYC CPU): at
# most 2.3e-5 in float32 and 0.0032 under bf16 autocast (the default for images on CPUs with
# native bf16; the ranks' sums in another order round differently), against 0.24 between a bf16
# and a float32 step and 1.0 for a skipped one.
STEP_TOLERANCE = {False: 2e-4, True: 0.03}


@pytest.mark.parametrize("bf16", [False, True])
def test_training_step_two_ranks_equal_one_process(tmp_path: Path, bf16: bool) -> None:
    out = str(tmp_path / "step.pt")
    mp.spawn(_step_worker, args=(str(tmp_path / "store"), out, bf16), nprocs=WORLD)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, "lars", lr=0.5, weight_decay=1e-4)
    x1, x2 = _views()
    train_step(model, opt, x1, x2, temperature=0.5, bf16=bf16)
    got = torch.load(out, weights_only=True)
    assert got.keys() == before.keys()
    ranks = {k: (v - before[k]).double() for k, v in got.items() if v.is_floating_point()}
    one = _step_change(model, before)
    tol = STEP_TOLERANCE[bf16]
    for k, v in model.state_dict().items():
        assert got[k].dtype == v.dtype, k  # running statistics stay float32
        if k not in one:  # num_batches_tracked
            assert torch.equal(got[k], v), k
            continue
        # The one-process step moved it (every weight and running statistic), so a step the ranks
        # skipped errs by 1.0; they must have moved it the same way, within the tolerance.
        assert one[k].norm() > 0, k
        err = (ranks[k] - one[k]).norm() / one[k].norm()
        assert err <= tol, (k, err.item())
    if bf16:  # the tolerance tells bf16 from float32: the ranks really ran the step in bf16
        fp32 = _model()
        train_step(fp32, build_optimizer(fp32, "lars", lr=0.5, weight_decay=1e-4), x1, x2, temperature=0.5)
        apart = max(((ranks[k] - c).norm() / c.norm()).item() for k, c in _step_change(fp32, before).items())
        assert apart > 2 * tol, apart


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python")
# device=cpu: gloo, also on a machine with GPUs (two ranks cannot share one GPU under nccl)
FAST = ["--batch-size", "128", "data.pretrain_on=train", "device=cpu", "threads=1", "log_every=1",
        "eval_finetune=false", "report=false"]


def torchrun(*args: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [str(TORCHRUN), "--nproc-per-node", "2", *extra, "-m", "simclr", *args]


@needs_torchrun
def test_torchrun_trains_resumes_and_refuses_other_world_size(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(torchrun("train", "--epochs", "1", "--out", str(run), *FAST, "checkpoint_every=3"),
                           capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # one run directory for both ranks
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["progress"]["step"] == 7 and len(state["rng"]["augment"]) == 2
    assert (run / "eval.json").exists() and (run / "encoder.safetensors").exists()

    again = subprocess.run(torchrun("train", "--resume", str(run), "--epochs", "2", *FAST),
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stderr
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["step"] == 14

    single = subprocess.run([sys.executable, "-m", "simclr", "train", "--resume", str(run), "--epochs", "3", *FAST],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 2
    assert single.stderr.strip().splitlines()[-1].startswith("error: the checkpoint was written by 2 process(es)")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


@needs_torchrun
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes")
def test_killed_worker_restarts_group_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # Without this, torchrun shares its rendezvous store with the workers and a restarted group
    # can read the previous round's addresses and hang or fail to connect (pytorch#135712).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    proc = subprocess.Popen(
        torchrun("train", "--epochs", "3", "--out", str(run), *FAST, "checkpoint_every=2",
                 extra=("--max-restarts", "1")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        _kill_a_worker_and_check(proc, run)
    finally:  # never leave a hung group behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _kill_a_worker_and_check(proc: subprocess.Popen[str], run: Path) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
        if len(lines) >= 9 and (run / "checkpoint.pt").exists():
            break
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2, "expected torchrun's two workers"
    os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, "\n".join(line for line in err.splitlines() if "Warning" not in line)[-5000:]
    assert "resuming" in err
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["step"] == 21
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 22))


def _features_worker(rank: int, store: str, out: str) -> None:
    from simclr.evaluate import extract_features_sharded

    _init(rank, store)
    torch.manual_seed(0)
    encoder = SmallCNN(1, width=4)  # the same weights on both ranks
    images = torch.randint(0, 256, (7, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    torch.save(extract_features_sharded(encoder, images, batch_size=2), f"{out}.{rank}")
    torch_dist.destroy_process_group()


def test_evaluation_features_are_gathered_from_both_ranks(tmp_path: Path) -> None:
    """7 images over 2 ranks (shares of 4, the last one padded): every rank gets the 7 features
    one process computes, in order."""
    from simclr.evaluate import extract_features

    out = str(tmp_path / "feats")
    mp.spawn(_features_worker, args=(str(tmp_path / "store"), out), nprocs=WORLD)
    torch.manual_seed(0)
    encoder = SmallCNN(1, width=4)
    images = torch.randint(0, 256, (7, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    single = extract_features(encoder, images, batch_size=2)
    for r in range(WORLD):
        got = torch.load(f"{out}.{r}", weights_only=True)
        assert got.shape == single.shape
        assert torch.allclose(got, single, rtol=1e-6, atol=1e-6)
