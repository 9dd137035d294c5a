"""Checkpoints written atomically and loaded without unpickling code; encoder export."""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from simclr.config import Config, to_dict
from simclr.errors import UserError

log = logging.getLogger("simclr")

# What writing a file raises when the disk is full or the path unwritable: torch.save wraps the
# failed write in a RuntimeError, safetensors in its own error.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


@cache
def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def atomic_write(path: Path, write: Any) -> None:
    """Write through `write(tmp_path)`, flush to disk, then rename over `path`: a crash at any
    point leaves either the old file or the new one, never a torn one. A failed write removes
    its temporary."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable: until the directory itself is flushed, a power cut can
    undo the rename. Best effort: Windows cannot open a directory, some file systems refuse."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_failure(e: BaseException) -> str:
    """Why a write failed (one of WRITE_ERRORS), in one line. torch and safetensors do not say
    why a write failed; a full disk is the usual cause."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return f"{(str(e).splitlines() or [type(e).__name__])[0]} (is the disk full?)"


def remove_temporaries(folder: Path, pattern: str = ".*.tmp") -> None:
    """Delete what killed writes left behind (`atomic_write`'s temporaries): they are never
    renamed into place, and the numbered checkpoints' names differ every time."""
    for stale in folder.glob(pattern):
        stale.unlink(missing_ok=True)


def save_checkpoint(path: Path, state: dict[str, Any], keep: int = 1) -> None:
    """Write `<stem>-<step>.pt` atomically, point `path` at it, and delete all but the newest
    `keep` numbered checkpoints."""
    remove_temporaries(path.parent, f".{path.stem}-*{path.suffix}.tmp")  # of a run killed mid-write
    numbered = path.with_name(f"{path.stem}-{state['progress']['step']:09d}{path.suffix}")
    atomic_write(numbered, lambda p: torch.save(state, p))
    point_at(path, numbered)
    for stale in sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"))[:-keep]:
        stale.unlink()


def point_at(path: Path, target: Path) -> None:
    """Make `path` the file `target` is: an atomic swap of a hard link (no copy), or where the
    file system has no hard links (FUSE, SMB, exFAT: EPERM, ENOTSUP) an atomic copy."""
    link = path.with_name(f".{path.name}.link")
    link.unlink(missing_ok=True)
    try:
        os.link(target, link)
    except OSError as e:
        log.debug("no hard link for %s (%s); copying", path, e)
        atomic_write(path, lambda p: shutil.copyfile(target, p))
        return
    os.replace(link, path)
    fsync_dir(path.parent)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with `weights_only=True`: tensors and plain containers only, no code is run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except Exception as e:  # torch raises several types for truncated or hostile files
        first_line = (str(e).splitlines() or [""])[0]
        raise UserError(f"cannot load checkpoint {path}: {type(e).__name__}: {first_line}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a simclr checkpoint")
    return state


def save_encoder(path: Path, encoder: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    """The encoder's state dict as safetensors (shared storage made contiguous copies), with
    `metadata` in its header (simclr.export.encoder_metadata)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
    try:
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))
    except WRITE_ERRORS as e:
        raise UserError(f"cannot write {path}: {write_failure(e)}") from None


def rng_state(augment_states: list[torch.Tensor]) -> dict[str, Any]:
    """Every random state the run uses: Python, NumPy, torch (CPU and CUDA), and each rank's
    augmentation generator (in rank order)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),  # type: ignore[index]
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
        "augment": augment_states,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], augment_gen: torch.Generator, rank: int, world_size: int) -> None:
    if len(state["augment"]) != world_size:
        raise UserError(
            f"the checkpoint was written by {len(state['augment'])} process(es), this run has {world_size}; "
            "resume with the same number of processes"
        )
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    augment_gen.set_state(state["augment"][rank])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(out: Path, state: dict[str, Any], cfg: Config) -> None:
    """checkpoint.pt in the run directory with the config, package version and git revision;
    a failed write stops the run with the previous checkpoint intact."""
    from simclr import __version__

    state = {**state, "config": to_dict(cfg), "version": __version__, "git": git_revision()}
    try:
        save_checkpoint(out / "checkpoint.pt", state, cfg.keep_checkpoints)
    except WRITE_ERRORS as e:
        raise UserError(f"cannot write checkpoint in {out}: {write_failure(e)}; the previous one is kept") from None
