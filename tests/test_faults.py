"""Faults a run meets outside the maths: a full disk, a file system without hard links, a power
cut, a kill mid-write, a missing folder, bad environment variables, ranks that wait on rank 0.
Each ends in one `error: ...` line or is recovered from, never a traceback or a hang."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors import SafetensorError
from safetensors.torch import load_file

from simclr import checkpoint, cli
from simclr.checkpoint import load_checkpoint, save_checkpoint, save_encoder
from simclr.config import Config
from simclr.errors import UserError
from simclr.metrics import MetricsLogger
from simclr.model import SmallCNN, build_model

# A tiny unlabelled set: 4 steps an epoch, no evaluation; one run takes a few seconds.
TINY = ["--batch-size", "16", "threads=1", "checkpoint_every=1", "report=false", "device=cpu"]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8))
    return path


def train(data: Path, out: Path, *args: str) -> int:
    return cli.main(["train", "--data", str(data), "--out", str(out), *TINY, *args])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _state(step: int, value: float = 0.0) -> dict[str, Any]:
    return {"model": {"w": torch.full((4,), value)}, "progress": {"step": step}}


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".link")))


# 1. A full disk while checkpointing: one error line, no temporary, the previous checkpoint kept.


def test_torch_save_failing_on_a_full_disk_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint.save_training_checkpoint(tmp_path, _state(1, 1.0), Config())

    def full_disk(obj: object, f: str) -> None:
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="disk full") as e:
        checkpoint.save_training_checkpoint(tmp_path, _state(2, 2.0), Config())
    assert str(tmp_path) in str(e.value) and "previous one is kept" in str(e.value)
    assert temporaries(tmp_path) == []
    assert load_checkpoint(tmp_path / "checkpoint.pt")["progress"]["step"] == 1


def test_safetensors_failing_on_a_full_disk_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "encoder.safetensors"
    save_encoder(path, SmallCNN(1, 8))
    before = load_file(str(path))

    def full_disk(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"half")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(UserError, match="disk full") as e:
        save_encoder(path, SmallCNN(1, 8))
    assert str(path) in str(e.value)
    assert temporaries(tmp_path) == []
    after = load_file(str(path))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_full_disk_mid_run_is_one_error_line(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    real_save, calls = torch.save, []

    def fills_up(obj: object, f: Any, *args: Any, **kw: Any) -> None:
        calls.append(f)
        if len(calls) > 2:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        real_save(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", fills_up)
    assert train(tiny, tmp_path / "run", "--epochs", "1") == 2
    assert one_error_line(capsys).startswith(f"error: cannot write checkpoint in {tmp_path / 'run'}")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["progress"]["step"] == 2
    assert temporaries(tmp_path / "run") == []


# 2. File systems without hard links (FUSE, SMB, exFAT).


def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: object, dst: object, *args: object, **kw: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)


def test_checkpoints_rotate_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_hard_links(monkeypatch)
    path = tmp_path / "checkpoint.pt"
    for step in (1, 2, 3):
        save_checkpoint(path, _state(step, float(step)), keep=2)
        assert load_checkpoint(path)["progress"]["step"] == step
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.pt")) == ["checkpoint-000000002.pt",
                                                                         "checkpoint-000000003.pt"]
    assert temporaries(tmp_path) == []


def test_training_and_resume_without_hard_links(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_hard_links(monkeypatch)
    run = tmp_path / "run"
    assert train(tiny, run, "--epochs", "1") == 0
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["step"] == 4
    assert cli.main(["train", "--resume", str(run), "--epochs", "2", *TINY]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["step"] == 8  # `last` is the newest


# 3. Durable renames and stale temporaries.


def test_the_directory_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync, synced = os.fsync, []

    def record(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    save_checkpoint(tmp_path / "checkpoint.pt", _state(1))
    assert synced[0] is False  # the file's data first
    assert True in synced[1:], "the directory holding the renamed file was never fsynced"


def test_a_stale_temporary_is_removed_by_the_next_checkpoint(tmp_path: Path) -> None:
    stale = tmp_path / ".checkpoint-000000003.pt.tmp"  # a run killed while writing step 3
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "checkpoint.pt", _state(5))
    assert not stale.exists()


def test_stale_temporaries_are_removed_when_a_run_resumes(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(tiny, run, "--epochs", "1") == 0
    stale = [run / ".checkpoint-3.pt.tmp", run / ".encoder.safetensors.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    assert cli.main(["train", "--resume", str(run), "--epochs", "1", *TINY]) == 0  # nothing left to train
    assert not any(p.exists() for p in stale)


# 4. A torn last line in metrics.jsonl.


def test_resuming_over_a_torn_metrics_line_keeps_the_good_lines(tmp_path: Path) -> None:
    good = [json.dumps({"step": s, "epoch": 1, "loss": 1.0}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(good) + '\n{"step": 4, "epoch": 1, "lo')  # killed mid-write
    logger = MetricsLogger(tmp_path, every=1, total_steps=10, start_step=2)
    logger.close()
    assert (tmp_path / "metrics.jsonl").read_text() == "\n".join(good[:2]) + "\n"


# 5. export --out into a folder that does not exist yet.


def test_export_creates_the_folder_of_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simclr.config import to_dict

    cfg = Config()
    model = build_model(cfg.model.encoder, 1, 8)
    (tmp_path / "run").mkdir()
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", {"model": model.state_dict(), "progress": {"step": 1},
                                                         "config": to_dict(cfg), "input_shape": [1, 8, 8]})
    out = tmp_path / "some" / "missing" / "dir" / "model.safetensors"
    assert cli.main(["export", str(tmp_path / "run"), "--format", "safetensors", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert load_file(str(out)).keys() == model.encoder.state_dict().keys()


# 6. SIMCLR_* environment variables with bad values.


def test_a_bad_native_bf16_value_names_the_variable(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from simclr.device import native_bf16

    monkeypatch.setenv("SIMCLR_NATIVE_BF16", "maybe")
    with pytest.raises(UserError, match="SIMCLR_NATIVE_BF16='maybe': expected 0 or 1"):
        native_bf16()
    assert train(tiny, tmp_path / "run", "--epochs", "1") == 2  # precision=auto reads it
    assert "SIMCLR_NATIVE_BF16" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, expected", [("0", False), ("1", True), ("", None)])
def test_native_bf16_accepts_0_and_1(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool | None) -> None:
    from simclr.env import env_flag

    monkeypatch.setenv("SIMCLR_NATIVE_BF16", value)
    assert env_flag("SIMCLR_NATIVE_BF16") is expected


def test_env_dir_refuses_a_file_and_takes_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simclr.env import env_dir

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / "a-file"))
    with pytest.raises(UserError, match=r"SIMCLR_CACHE=.*a-file is not a folder"):
        env_dir("SIMCLR_CACHE")
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / "not-yet"))  # made when the cache is written
    assert env_dir("SIMCLR_CACHE") == tmp_path / "not-yet"
    monkeypatch.delenv("SIMCLR_CACHE")
    assert env_dir("SIMCLR_CACHE") is None


# Needs simclr.data.cache.default_cache_dir and simclr.data.builtin.default_root to read their
# variables through simclr.env.env_dir (a one-line change in each).
@pytest.mark.parametrize("name", ["SIMCLR_CACHE", "SIMCLR_DATA"])
def test_data_folders_from_the_environment_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       name: str) -> None:
    from simclr.data import default_cache_dir, default_root

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(name, str(tmp_path / "a-file"))
    with pytest.raises(UserError, match=rf"{name}=.*is not a folder"):
        (default_cache_dir if name == "SIMCLR_CACHE" else default_root)()


# 7. A refused run leaves no directory behind.


def test_too_little_data_leaves_no_directory(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--data", str(tiny), "--out", str(tmp_path / "run"), *TINY, "--batch-size", "128"]) == 2
    assert "fewer than one batch" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_full_disk_at_the_start_leaves_no_directory(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("simclr.training.shutil.disk_usage", lambda p: usage._replace(free=1024))
    assert train(tiny, tmp_path / "runs" / "run", "--epochs", "1") == 2
    assert "MiB free" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_a_model_refused_at_setup_leaves_no_directory(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(*args: object, **kw: object) -> None:
        raise UserError("this encoder does not take these inputs")

    monkeypatch.setattr("simclr.training.build_model", refuse)
    assert train(tiny, tmp_path / "run", "--epochs", "1") == 2
    assert "does not take" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


# 8. Distributed: the other ranks and rank 0.


def test_free_space_is_checked_where_the_run_directory_will_be(tmp_path: Path) -> None:
    from simclr.training import check_free_space

    check_free_space(tmp_path / "node-local" / "not" / "made", SmallCNN(1, 8), keep=2)  # no FileNotFoundError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(rank: int, port: int, out: Path, timeout_s: float) -> None:
    """Join a 2-rank gloo group through `simclr.dist`, once both ranks are past their imports
    (a short `timeout_s` is for the test, not for start-up)."""
    from simclr import dist

    (out / f"ready.{rank}").touch()
    while not (out / f"ready.{1 - rank}").exists():
        time.sleep(0.01)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_from_env(timeout_s, device="cpu")


def _outcome(out: Path, rank: int, what: str, work: Any) -> None:
    """Record how `work()` ended on this rank, and when."""
    start = time.perf_counter()
    try:
        work()
        result = "ok"
    except UserError as e:
        result = f"UserError: {e}"
    except Exception as e:
        result = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    with open(out / f"{what}.{rank}", "w") as f:
        json.dump({"result": result, "seconds": time.perf_counter() - start}, f)


def _first_decode_worker(rank: int, port: int, out: Path) -> None:
    from simclr import dist
    from simclr.experiment import load_datasets

    _join(rank, port, out, timeout_s=2)
    cfg = Config()

    class Slow:  # rank 0's first decode takes longer than the process group's timeout
        loads_together = False

        def load(self, *args: object, **kw: object) -> tuple[Any, None]:
            if rank == 0:
                time.sleep(3)
            return SimpleNamespace(labels=None), None

    class Broken:
        loads_together = False

        def load(self, *args: object, **kw: object) -> tuple[Any, None]:
            if rank == 0:
                raise UserError("no images in the folder")
            time.sleep(60)  # never reached: the other ranks stop with rank 0's error
            raise AssertionError

    class SlowTogether(Slow):  # every rank loads at once; rank 1 waits for rank 0 as long as it takes
        loads_together = True

    class BrokenTogether:  # rank 1 fails, rank 0 succeeds: both stop with rank 1's error
        loads_together = True

        def load(self, *args: object, **kw: object) -> tuple[Any, None]:
            if rank == 1:
                raise UserError("cannot read archive x.zip")
            return SimpleNamespace(labels=None), None

    for name, modality in [("slow", Slow), ("broken", Broken), ("slow_together", SlowTogether),
                           ("broken_together", BrokenTogether)]:
        _outcome(out, rank, name, lambda m=modality: load_datasets(cfg, m()))  # type: ignore[misc]
    dist.shutdown()


def outcomes(out: Path, what: str) -> list[dict[str, Any]]:
    return [json.loads((out / f"{what}.{rank}").read_text()) for rank in range(2)]


def test_other_ranks_wait_for_a_long_first_decode_and_share_its_error(tmp_path: Path) -> None:
    mp.spawn(_first_decode_worker, args=(free_port(), tmp_path), nprocs=2)
    for slow in ("slow", "slow_together"):
        assert [o["result"] for o in outcomes(tmp_path, slow)] == ["ok", "ok"]
    broken = outcomes(tmp_path, "broken")
    assert [o["result"] for o in broken] == ["UserError: no images in the folder"] * 2
    assert broken[1]["seconds"] < 10
    assert [o["result"] for o in outcomes(tmp_path, "broken_together")] == ["UserError: cannot read archive x.zip"] * 2


def _shared_decode_worker(rank: int, port: int, out: Path) -> None:
    """Both ranks load an image folder through `load_datasets`, as `simclr train` does."""
    import logging

    from simclr import dist
    from simclr.config import load_config
    from simclr.data import blocks, decode
    from simclr.experiment import load_datasets
    from simclr.modality import resolve

    _join(rank, port, out, timeout_s=60)
    blocks.BLOCK_ENTRIES = 8
    real = decode.decode_image

    def slow(data: bytes, size: int, channels: int | None) -> Any:
        time.sleep(0.01)  # so that both ranks are decoding at once
        return real(data, size, channels)

    decode.decode_image = slow  # type: ignore[assignment]
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("simclr").addHandler(handler)
    logging.getLogger("simclr").setLevel(logging.INFO)
    cfg = load_config(overrides=[f"data.source={out / 'imgs'}", f"data.cache_dir={out / 'cache'}"])
    train, test = load_datasets(cfg, resolve(cfg))
    here = [int(line.split(": ")[1].split(" of ")[0]) for line in lines if "blocks decoded by this process" in line]
    (out / f"decoded.{rank}").write_text(json.dumps({"here": here, "rows": [len(train), len(test)],
                                                       "sum": float(train.images.float().sum())}))
    dist.shutdown()


def test_the_ranks_of_a_job_share_the_first_decode(tmp_path: Path) -> None:
    """Under torchrun every rank decodes blocks of a new image folder (none twice), and all end
    with the same data."""
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(80):
            Image.new("L", (5, 5), i * 3 + (cls == "a")).save(tmp_path / "imgs" / cls / f"{i}.png")
    mp.spawn(_shared_decode_worker, args=(free_port(), tmp_path), nprocs=2)
    got = [json.loads((tmp_path / f"decoded.{rank}").read_text()) for rank in range(2)]
    here = [g["here"][0] for g in got]
    assert min(here) > 0 and sum(here) == 20, here  # 160 files in blocks of 8
    assert got[0]["rows"] == got[1]["rows"] == [80, 80] and got[0]["sum"] == got[1]["sum"]


def _checkpoint_worker(rank: int, port: int, out: Path) -> None:
    from simclr import dist
    from simclr.training import Progress, save

    _join(rank, port, out, timeout_s=60)
    model = SmallCNN(1, 8)
    run = SimpleNamespace(out=out, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), cfg=Config(),
                          train_data=SimpleNamespace(inputs=torch.zeros(1, 1, 8, 8)),
                          modality=SimpleNamespace(name="images"))
    if rank == 0:  # torch.save itself pickles the collectives' objects: fail the checkpoint's only
        def full_disk(*args: object, **kw: object) -> None:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

        checkpoint.save_checkpoint = full_disk  # type: ignore[assignment]
    progress = Progress(step=1, epoch_order_state=torch.Generator().get_state())
    _outcome(out, rank, "save", lambda: save(run, progress, torch.Generator()))  # type: ignore[arg-type]
    dist.shutdown()


def test_a_failed_checkpoint_write_stops_every_rank_together(tmp_path: Path) -> None:
    mp.spawn(_checkpoint_worker, args=(free_port(), tmp_path), nprocs=2)
    results = [o["result"] for o in outcomes(tmp_path, "save")]
    assert all(r.startswith(f"UserError: cannot write checkpoint in {tmp_path}") for r in results), results
    assert results[0] == results[1]
