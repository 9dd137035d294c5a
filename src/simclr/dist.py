"""Process-group helpers. torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR)
turns distributed mode on; without it every helper degrades to a single process."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
import torch.distributed.nn.functional as dist_fn

from simclr.errors import UserError

# The autograd-aware collectives below work and are what the maths needs; their announced
# successor is a private module, so keep them and silence the notice.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional", category=FutureWarning)


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(timeout_s: float, device: str = "auto") -> None:
    """Join the process group torchrun describes: nccl with one GPU per process, gloo on the
    CPU (`device=cpu`, or no CUDA). Collectives time out after `timeout_s` so a dead or missing
    rank is an error, not a hang."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    cuda = device.split(":")[0] != "cpu" and torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(
                f"local rank {local} has no GPU of its own ({torch.cuda.device_count()} visible): start at most "
                "that many processes per node, or train on the CPU with device=cpu"
            )
        torch.cuda.set_device(local)
    torch_dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    global _host_group, _patient_group
    # Host-side flags (a stop request) travel over gloo between CPU tensors: under nccl they
    # would be a device collective and a device-to-host copy, a sync on every training step.
    _host_group = torch_dist.new_group(backend="gloo") if cuda else None
    _patient_group = torch_dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)


_host_group: Any = None
_patient_group: Any = None

# How long ranks wait for each other around a first decode of a data set (`main_first`,
# `together`): hours for a large one on a slow disk, far beyond `dist_timeout_s`, whose point is
# to catch a dead rank quickly. No deadline is needed there: a rank's failure is sent to the
# others, and a rank that dies makes torchrun stop the whole group. A day bounds a hang outside
# torchrun.
PATIENT_TIMEOUT = timedelta(days=1)


def local_device() -> torch.device:
    """This process's device: its own GPU under nccl, else the CPU."""
    if is_distributed() and torch_dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shutdown() -> None:
    global _host_group, _patient_group
    if is_distributed():
        torch_dist.destroy_process_group()
    _host_group = _patient_group = None


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable objects of this program only)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, group: Any = None) -> Any:
    """Rank 0's `obj` on every rank (over `group`, default the whole process group)."""
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


T = TypeVar("T")


def main_only(work: Callable[[], None]) -> None:
    """`work()` on rank 0 only (a file only it writes); its error is raised on every rank, so
    all stop together instead of the others waiting out the timeout at their next collective."""
    if not is_distributed():
        work()
    elif is_main_process():
        _on_main(work, _host_group)
    else:
        _outcome(_host_group)


def main_first(work: Callable[[], T]) -> T:
    """`work()` on rank 0, then on the other ranks (rank 0 builds the decode cache they then
    read). They wait for it without the process group's timeout (PATIENT_TIMEOUT), and raise
    rank 0's error if it failed."""
    if not is_distributed():
        return work()
    if is_main_process():
        result: list[T] = []
        _on_main(lambda: result.append(work()), _patient_group)
        return result[0]
    _outcome(_patient_group)
    return work()


def together(work: Callable[[], T]) -> T:
    """`work()` on every rank at once, for work the ranks share through files (the image decode's
    blocks, `simclr.data.blocks`). They wait for each other without the process group's timeout
    (PATIENT_TIMEOUT), and when any rank failed, every rank raises its error."""
    if not is_distributed():
        return work()
    try:
        result = work()
        error = None
    except BaseException as e:
        error = str(e) if isinstance(e, UserError) else f"rank {rank()} failed: {type(e).__name__}: {e}"
        _errors(error)
        raise
    failed = _errors(error)
    if failed is not None:
        raise UserError(failed)
    return result


def _errors(error: str | None) -> str | None:
    """Every rank's error (None: it succeeded) over the patient group; the first one."""
    out: list[str | None] = [None] * world_size()
    torch_dist.all_gather_object(out, error, group=_patient_group)
    return next((e for e in out if e is not None), None)


def _on_main(work: Callable[[], None], group: Any) -> None:
    """`work()` on rank 0, how it went sent to the other ranks' `_outcome(group)`."""
    try:
        work()
    except BaseException as e:
        broadcast_object(str(e) if isinstance(e, UserError) else f"rank 0 failed: {type(e).__name__}: {e}", group)
        raise
    broadcast_object(None, group)


def _outcome(group: Any) -> None:
    """On the other ranks: rank 0's error from `_on_main`, raised as a UserError."""
    error = broadcast_object(None, group)
    if error is not None:
        raise UserError(error)


def mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (a detached copy)."""
    if not is_distributed():
        return x.detach()
    y = x.detach().clone()
    torch_dist.all_reduce(y)
    return y / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any rank."""
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)])  # on the host: no device sync (see init_from_env)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX, group=_host_group)
    return bool(t.item())


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, in rank order; every rank passes the same
    shape. No gradient: for features, not for the loss (see `gather_with_grad`)."""
    if not is_distributed() or world_size() == 1:
        return x
    device = local_device()
    parts = [torch.empty_like(x, device=device) for _ in range(world_size())]
    torch_dist.all_gather(parts, x.to(device))
    return torch.cat(parts).to(x.device)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, keeping the autograd graph.

    The backward pass sums the incoming gradients over ranks (a reduce-scatter), so each
    rank's gradient for its own rows includes the terms from every other rank's loss. Plain
    `torch.distributed.all_gather` cuts the graph, the bug several public ports shipped.
    """
    if not is_distributed() or world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)  # type: ignore[no-untyped-call]
