"""The data path is bounded by the batch: subsets are read on demand, the next batches are read
ahead on a thread, the set moves to the device only when asked or when it fits, and the
held-out split is sized to the data."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from simclr.config import load_config
from simclr.data.imagedata import ImageData
from simclr.data.prefetch import Prefetcher, place
from simclr.data.rows import Rows, concat, take
from simclr.experiment import held_out_size, load_datasets
from simclr.modality import resolve


def test_rows_read_only_what_is_indexed_and_behave_as_the_subset() -> None:
    base = torch.arange(10 * 3).view(10, 3)
    rows = take(base, torch.tensor([7, 2, 5, 0]))
    assert isinstance(rows, Rows) and rows.base is base and len(rows) == 4 and rows.shape == (4, 3)
    expected = base[[7, 2, 5, 0]]
    assert torch.equal(rows[torch.tensor([1, 3])], expected[[1, 3]])
    assert torch.equal(rows[np.array([0])], expected[[0]]) and torch.equal(rows[2], expected[2])
    part = rows[1:3]
    assert isinstance(part, Rows) and torch.equal(part.materialize(), expected[1:3])  # a slice stays lazy
    assert torch.equal(rows.float(), expected.float())  # any other method on the materialized rows
    assert torch.equal(torch.cat([rows, base[:1]]), torch.cat([expected, base[:1]]))
    assert torch.equal(take(rows, torch.tensor([3, 0])).materialize(), expected[[3, 0]])
    both = concat(rows, take(base, torch.tensor([1])))
    assert isinstance(both, Rows) and both.base is base and torch.equal(both.materialize(), base[[7, 2, 5, 0, 1]])


def test_a_subset_of_a_set_copies_no_images() -> None:
    data = ImageData(torch.zeros(100, 1, 4, 4, dtype=torch.uint8), torch.arange(100) % 2, "x")
    sub = data.subset(np.arange(0, 100, 3))
    assert isinstance(sub.images, Rows) and sub.images.base is data.images and len(sub) == 34
    assert torch.equal(sub.labels, data.labels[::3])  # type: ignore[index]


@pytest.mark.parametrize(("n", "held_out"), [(1797, 899), (3000, 1000), (20_000, 2000), (100_000, 10_000),
                                             (1_000_000, 10_000)])
def test_the_held_out_split_is_sized_to_the_data(tmp_path: Path, n: int, held_out: int) -> None:
    """Half of a small set; 1,000 or 10 % of a larger one, at most 10,000: a labelled set of
    100,000 keeps 90,000 for pretraining, a million keeps 990,000."""
    if n <= 100_000:  # through load_datasets, on a real .npy source
        path = tmp_path / "x.npz"
        np.savez(path, images=np.zeros((n, 2, 2), np.uint8), labels=np.arange(n) % 10)
        cfg = load_config(overrides=[f"data.source={path}", "data.cache_dir=" + str(tmp_path / "c")])
        train, test = load_datasets(cfg, resolve(cfg))
        assert (len(train), len(test)) == (n - held_out, held_out)
        per_class = torch.bincount(test.labels)
        assert len(per_class) == 10 and per_class.max() - per_class.min() <= 1  # stratified
        assert not set(train.images.index.tolist()) & set(test.images.index.tolist())
    size = held_out_size(n)
    assert (round(size * n) if isinstance(size, float) else size) in (held_out, held_out - 1)


def test_a_train_and_val_folder_evaluates_on_val(tmp_path: Path) -> None:
    """ImageNet's layout: pretrain on train/, evaluate on val/ (nothing held out of train/)."""
    counts = {"train": 12, "val": 5}
    for split, n in counts.items():
        for cls in ("cat", "dog"):
            folder = tmp_path / "set" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"{i}.png")
    cfg = load_config(overrides=[f"data.source={tmp_path / 'set'}", f"data.cache_dir={tmp_path / 'c'}"])
    train, test = load_datasets(cfg, resolve(cfg))
    assert (len(train), len(test)) == (2 * counts["train"], 2 * counts["val"])
    assert test.classes == ["cat", "dog"] and all(i.startswith("val/") for i in test.ids)


def test_the_prefetcher_yields_every_batch_in_order_and_stops_when_closed() -> None:
    images = torch.arange(64 * 2, dtype=torch.uint8).view(64, 2)
    batches = [torch.randperm(64)[:8] for _ in range(6)]
    with Prefetcher(take(images, torch.arange(64)), batches, torch.device("cpu")) as feed:
        got = list(feed)
    assert [r for r, _ in got] == batches and all(torch.equal(x, images[r]) for r, x in got)
    feed = Prefetcher(images, batches, torch.device("cpu"), depth=1)
    next(iter(feed))
    feed.close()  # mid-epoch (a stop request): the reader thread ends
    assert feed.thread is not None and not feed.thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "simclr-prefetch"]


def test_a_reading_error_reaches_the_training_thread() -> None:
    bad = Rows(torch.zeros(4, 1), torch.tensor([0, 9]))  # row 9 is out of range
    with pytest.raises(IndexError), Prefetcher(bad, [torch.tensor([0, 1])], torch.device("cpu")) as feed:
        list(feed)


def test_device_resident_on_the_cpu() -> None:
    """auto and false read the map per batch; true reads the set into memory, the same values."""
    base = torch.arange(40, dtype=torch.uint8).view(10, 4)
    rows = take(base, torch.arange(9, -1, -1))
    assert place(rows, torch.device("cpu"), "auto") is rows and place(rows, torch.device("cpu"), "False") is rows
    moved = place(rows, torch.device("cpu"), "true")
    assert isinstance(moved, torch.Tensor) and torch.equal(moved, base.flip(0))
    assert moved.untyped_storage().data_ptr() != base.untyped_storage().data_ptr()


def test_streamed_and_in_memory_training_are_bit_identical(tmp_path: Path) -> None:
    """The prefetcher changes when rows are read, not which: the same weights either way."""
    env = {**os.environ, "SIMCLR_CACHE": str(tmp_path / "cache")}
    for resident in ("false", "true"):
        result = subprocess.run(
            [sys.executable, "-m", "simclr", "train", "--out", str(tmp_path / resident), "--epochs", "2",
             "--batch-size", "128", f"data.device_resident={resident}", "report=false", "eval_finetune=false",
             "eval_every=0", "threads=1"], capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
    a, b = (load_file(tmp_path / r / "encoder.safetensors") for r in ("false", "true"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def write_folder(folder: Path, per_class: int = 300) -> None:
    """Two classes of tiny distinct images, and one broken file among them."""
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (6, 6), (i % 256, 40 if cls == "a" else 200, i // 256)).save(folder / cls / f"{i:03d}.png")
    (folder / "a" / "broken.png").write_bytes(b"not an image")  # a skipped file survives it all


def same_data(a: ImageData, b: ImageData) -> bool:
    return (torch.equal(a.images, b.images) and a.labels is not None and b.labels is not None
            and torch.equal(a.labels, b.labels) and a.skipped == b.skipped and a.ids == b.ids)


def test_an_interrupted_first_decode_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decode stopped partway (Ctrl-C, a killed job) decodes only the blocks it had not
    finished, and gives the cache an uninterrupted decode gives."""
    from simclr.data import blocks, decode, load_images

    write_folder(tmp_path / "imgs")  # 601 files: 10 blocks of 64
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 64)
    calls = {"n": 0}
    real = decode.decode_image

    def counting(data: bytes, size: int, channels: int | None) -> tuple[np.ndarray, bool]:
        calls["n"] += 1
        if calls["n"] == 450 and calls.get("stop", True):  # in block 7, after blocks 0-6
            raise KeyboardInterrupt
        return real(data, size, channels)

    monkeypatch.setattr(decode, "decode_image", counting)
    with pytest.raises(KeyboardInterrupt):
        load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "cache", workers=1)
    calls.update(n=0, stop=False)
    resumed = load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "cache", workers=1)
    assert calls["n"] == 601 - 7 * 64  # blocks 7, 8 and 9 only
    fresh = load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "fresh", workers=1)
    assert same_data(resumed, fresh) and len(resumed.skipped) == 1
    slot = next((tmp_path / "cache").iterdir())
    assert sorted(p.name for p in slot.iterdir()) == ["decode.lock", "images.u8", "join.lock", "labels.npy",
                                                      "meta.json"]


def test_an_interrupted_join_resumes_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Joining deletes each block once copied: stopped after four of ten blocks, the next run
    copies the other six, decodes nothing, and the cache is the same."""
    from simclr.data import blocks, decode, load_images

    write_folder(tmp_path / "imgs")
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 64)
    real_write = blocks._write_json

    def stopping(path: Path, value: object) -> None:
        if path.name == "joined.json" and value == {"blocks": 4}:
            raise KeyboardInterrupt
        real_write(path, value)

    monkeypatch.setattr(blocks, "_write_json", stopping)
    with pytest.raises(KeyboardInterrupt):
        load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "cache", workers=1)
    left = sorted(p.name for p in next((tmp_path / "cache").iterdir()).glob("decoding/*.u8"))
    assert left == [f"{b}.u8" for b in range(3, 10)] + ["images.u8"]  # block 3 copied, not yet recorded
    monkeypatch.setattr(blocks, "_write_json", real_write)
    monkeypatch.setattr(decode, "decode_image", None)  # nothing is decoded again
    resumed = load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "cache", workers=1)
    monkeypatch.undo()
    assert same_data(resumed, load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "fresh", workers=1))


def test_blocks_joined_by_a_process_that_could_not_cache_them_are_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk after the join moved the images file: the next run cannot join the blocks
    again, says so and decodes in its own process; the data are the same every time."""
    import errno

    from simclr.data import blocks, cache, load_images

    write_folder(tmp_path / "imgs", per_class=40)
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 16)
    real_save = cache.np.save

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.np, "save", full_disk)  # labels.npy, after images.u8 was renamed
    first = load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "cache", workers=1)
    monkeypatch.setattr(cache.np, "save", real_save)
    with caplog.at_level("WARNING", logger="simclr"):
        second = load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "cache", workers=1)
    assert "joined by a process that could not write the cache" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="simclr"):
        third = load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "cache", workers=1)
    assert "from the cache" in caplog.text and "decoding" not in caplog.text  # the second one cached it
    assert same_data(first, second) and same_data(second, third)


TOGETHER = """
import logging, sys, time
from pathlib import Path
from simclr.data import blocks, decode, load_images, sources
{patch}
go = Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
logging.basicConfig(level=logging.INFO, format="%(message)s")
data = load_images(sys.argv[1], cache_dir=sys.argv[2], workers=1)
print("rows", len(data), data.images.float().sum().item(), flush=True)
"""
SLOW_DECODE = """
blocks.BLOCK_ENTRIES = 16
real = decode.decode_image
def slow(data, size, channels):
    time.sleep(0.004)  # long enough for both processes to be decoding at once
    return real(data, size, channels)
decode.decode_image = slow
"""
SLOW_CONVERSION = """
real = sources.fit_uint8
def slow(*args, **kwargs):
    time.sleep(1.0)  # the other process arrives while this one converts
    return real(*args, **kwargs)
sources.fit_uint8 = slow
"""


def load_in_two_processes(tmp_path: Path, source: Path, patch: str) -> list[tuple[str, str]]:
    """(stdout, stderr) of two processes that load `source` into one cache, started together once
    both are past their imports, each with `patch` applied."""
    go = tmp_path / "go"
    script = TOGETHER.format(patch=patch)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(source), str(tmp_path / "cache"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    return outs


def test_processes_decoding_the_same_source_share_the_blocks(tmp_path: Path) -> None:
    """Two processes (the ranks of a torchrun job, or two runs) that meet the same source
    decode disjoint blocks, neither repeats the other's, and both get the cache one process
    alone would have built."""
    write_folder(tmp_path / "imgs", per_class=160)  # 321 files: 21 blocks of 16
    outs = load_in_two_processes(tmp_path, tmp_path / "imgs", SLOW_DECODE)
    here = [int(line.split(": ")[1].split(" of ")[0]) for _, err in outs for line in err.splitlines()
            if "blocks decoded by this process" in line]
    assert len(here) == 2 and min(here) > 0 and sum(here) == 21  # shared, none decoded twice
    from simclr.data import load_images

    fresh = load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "fresh", workers=1)
    assert same_data(load_images(str(tmp_path / "imgs"), cache_dir=tmp_path / "cache"), fresh)
    assert {o.split("rows ")[1].strip() for o, _ in outs} == {f"{len(fresh)} {fresh.images.float().sum().item()}"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu.sh runs it)")
@pytest.mark.parametrize("resident", [True, False])
def test_the_steps_between_logs_never_wait_for_the_device(resident: bool) -> None:
    """The hot path of train_one_epoch (read ahead, two views, forward, loss, backward, LARS, the
    finiteness flag, the next learning rate) under CUDA's sync check set to raise."""
    from simclr import ImageAugment, build_model, build_optimizer, two_views
    from simclr.optim import set_lr
    from simclr.training import Finite, train_step

    device = torch.device("cuda")
    model = build_model("small_cnn", 3, 32).to(device)
    opt = build_optimizer(model, "lars", 0.3, 1e-6)
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    if resident:
        images = place(images, device, "true")  # type: ignore[assignment]
    batches = [torch.randperm(256)[:64] for _ in range(4)]
    gen, finite, aug = torch.Generator(device=device).manual_seed(0), Finite(device, 0), ImageAugment(32)
    feed = Prefetcher(images, batches, device)
    steps = iter(feed)
    next(steps)  # the first step may allocate and initialize lazily
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, (_, x) in enumerate(steps):
            set_lr(opt, 0.1 * (step + 1))
            finite.add(train_step(model, opt, *two_views(aug, x, gen), 0.5))
    finally:
        torch.cuda.set_sync_debug_mode(0)
        feed.close()
    finite.check(4)


def test_one_process_converts_a_standard_folder_while_the_others_wait(tmp_path: Path) -> None:
    """An MNIST IDX folder met by two processes at once (two ranks): one converts it (holding
    the set in memory), the other waits and reads its cache."""
    from test_data import write_mnist

    write_mnist(tmp_path / "mnist", gz=False)
    outs = load_in_two_processes(tmp_path, tmp_path / "mnist", SLOW_CONVERSION)
    logs = [err for _, err in outs]
    assert sum("converting" in e for e in logs) == 1 and sum("from the cache" in e for e in logs) == 1, logs
    assert outs[0][0] == outs[1][0]
