"""Data and runs from someone else (issue #30): a file may be crafted to run code, to exhaust
memory or disk, or a received run may choose where this machine writes."""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import simclr.data.blocks as blocks_module
import simclr.data.cache as cache_module
import simclr.data.decode as decode_module
import simclr.data.listing as listing_module
from simclr.cli import main
from simclr.data import load_images
from simclr.errors import UserError


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test caches under its own folder and finds no built-in data by accident."""
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIMCLR_DATA", str(tmp_path / "no-datasets-here"))


def png(seed: int, size: int = 8, grey: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size) if grey else (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# --- 1. CIFAR batches: only the globals a pickled array needs -------------------------------------


# GLOBAL "numpy.f2py.__main__ dtype", then STOP: 30 bytes. Importing that module runs f2py's
# command line, which ends in sys.exit; a prefix check on "numpy" and a known name let it in.
F2PY_PAYLOAD = b"\x80\x02cnumpy.f2py.__main__\ndtype\n."


def test_cifar_batch_naming_an_importable_numpy_module_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(F2PY_PAYLOAD) == 30
    monkeypatch.setattr(sys, "argv", ["simclr"])  # should f2py start after all: its usage, no work
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(F2PY_PAYLOAD)
    with pytest.raises(UserError, match=r"data_batch_1.*numpy\.f2py\.__main__\.dtype"):
        load_images(str(folder))
    assert "numpy.f2py.__main__" not in sys.modules  # refused before anything was imported
    capsys.readouterr()
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "numpy.f2py.__main__" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickled_numpy_batches_still_load(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "cifar"
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    batch = {b"data": images.reshape(3, -1), b"labels": np.array([1, 0, 2]), b"count": np.int64(3),
             "batch_label": b"training batch"}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    data = load_images(str(folder))
    assert np.array_equal(data.images.numpy(), images) and data.labels is not None
    assert data.labels.tolist() == [1, 0, 2]


# --- 2. archives: bounded memory while reading, cache rows only for what decodes ----------------------


def test_empty_archive_members_take_no_cache_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5,000 empty members reserved 717 MiB (a 224 px row each); now they take none."""
    shapes: list[tuple[int, ...]] = []
    real = cache_module.new_mapped

    def recording(path: Path, shape: tuple[int, ...], *args: bool, **kwargs: bool) -> np.memmap:
        shapes.append(shape)
        return real(path, shape, *args, **kwargs)

    for module in (cache_module, blocks_module):  # every file the decode maps: blocks, their join, copies
        monkeypatch.setattr(module, "new_mapped", recording)
    members = [(f"empty{i:03d}.png", b"") for i in range(300)] + [("a.png", png(1)), ("b.png", png(2))]
    data = load_images(str(write_tar(tmp_path / "a.tar.gz", members)))
    assert len(data) == 2 and len(data.skipped) == 300
    assert {reason for _, reason in data.skipped} == {"empty file"}
    assert shapes and max(s[0] for s in shapes) == 2


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="space is reserved with posix_fallocate")
def test_members_that_are_no_images_reserve_no_cache_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk is reserved for the rows that decoded, not for every listed member."""
    row = 3 * 32 * 32
    peak = {"bytes": 0}
    real = decode_module.decode_image

    def measuring(data: bytes, size: int, channels: int | None) -> tuple[np.ndarray, bool]:
        used = sum(p.stat().st_blocks * 512 for p in (tmp_path / "cache").rglob("*.u8*"))
        peak["bytes"] = max(peak["bytes"], used)
        return real(data, size, channels)

    monkeypatch.setattr(decode_module, "decode_image", measuring)
    # The images first: the 300 junk members are decoded after their rows were reserved.
    members = [("a.png", png(1)), ("b.png", png(2))] + [(f"junk{i:03d}.png", b"x") for i in range(300)]
    data = load_images(str(write_tar(tmp_path / "a.tar.gz", members)), image_size=32, workers=1)
    assert len(data) == 2 and len(data.skipped) == 300
    assert 0 < peak["bytes"] <= 2 * row + 8192  # two rows, up to file-system blocks; was 302 rows


def test_archive_members_read_ahead_of_decoding_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight 64 MiB members of zeros (2.3 MB zipped) were all held before decoding; now a chunk
    holds at most CHUNK_BYTES (here scaled down 512 times), and a member over MAX_FILE_BYTES is
    skipped unread."""
    monkeypatch.setattr(decode_module, "CHUNK_BYTES", 128 << 10, raising=False)
    monkeypatch.setattr(listing_module, "MAX_FILE_BYTES", 150 << 10)
    path = tmp_path / "zeros.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(8):
            zf.writestr(f"{i}.png", bytes(64 << 10))
        zf.writestr("huge.png", bytes(200 << 10))
        zf.writestr("ok.png", png(3))
    held = {"now": 0, "peak": 0}
    real_read, real_decode = zipfile.ZipFile.read, decode_module.decode_image

    def reading(self: zipfile.ZipFile, name: str | zipfile.ZipInfo, pwd: bytes | None = None) -> bytes:
        data = real_read(self, name, pwd)
        held["now"] += len(data)
        held["peak"] = max(held["peak"], held["now"])
        return data

    def decoding(data: bytes, size: int, channels: int | None) -> tuple[np.ndarray, bool]:
        held["now"] = 0  # the chunk was read: decoding has begun
        return real_decode(data, size, channels)

    monkeypatch.setattr(zipfile.ZipFile, "read", reading)
    monkeypatch.setattr(decode_module, "decode_image", decoding)
    data = load_images(str(path), image_size=8, workers=1)
    assert len(data) == 1
    assert held["peak"] <= 128 << 10  # was 8 x 64 KiB = 512 KiB
    reasons = dict(data.skipped)
    assert reasons[f"{path}/huge.png"].startswith("too large: member of 204800 bytes")
    assert sum(r.startswith("not an image") for r in reasons.values()) == 8


# --- 3. array files: declared sizes against the file's -----------------------------------------------


def npy_claiming(shape: tuple[int, ...], data: bytes) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return header.getvalue() + data


def test_npy_header_claiming_more_than_the_file_holds(tmp_path: Path) -> None:
    crafted = npy_claiming((250_000, 1_000_000), bytes(64))  # 931 GiB declared
    assert len(crafted) <= 200
    (tmp_path / "big.npy").write_bytes(crafted)
    with pytest.raises(UserError, match=r"big\.npy: the header declares .* \(1000000000000 bytes\) but only 64"):
        load_images(str(tmp_path / "big.npy"))
    with zipfile.ZipFile(tmp_path / "big.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", crafted)
    with pytest.raises(UserError, match=r"big\.npz\[x\]: the header declares"):
        load_images(str(tmp_path / "big.npz"))
    np.save(tmp_path / "ok.npy", np.zeros((4, 8, 8), np.float32))  # honest files still load
    np.savez_compressed(tmp_path / "ok.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.arange(4))
    assert len(load_images(str(tmp_path / "ok.npy"))) == 4 and len(load_images(str(tmp_path / "ok.npz"))) == 4


# --- 4. a received run does not choose where this machine writes ----------------------------------


@pytest.fixture(scope="module")
def received_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny run trained on a folder of images with its cache in `elsewhere`, which is then
    removed: (run, data folder, elsewhere)."""
    work = tmp_path_factory.mktemp("received")
    folder = work / "data"
    for k, cls in enumerate(("a", "b")):
        (folder / cls).mkdir(parents=True)
        for i in range(16):
            (folder / cls / f"{i}.png").write_bytes(png(100 * k + i))
    elsewhere, run = work / "elsewhere", work / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMCLR_CACHE", str(work / "trainer-cache"))
        code = main(["train", "--data", str(folder), "--epochs", "1", "--batch-size", "8", "--out", str(run),
                     "model.encoder=small_cnn", "eval_finetune=false", "report=false", "threads=1", "device=cpu",
                     f"data.cache_dir={elsewhere}"])
    assert code == 0 and any(elsewhere.iterdir())  # the trainer's cache went where its config said
    shutil.rmtree(elsewhere)
    return run, folder, elsewhere


def test_eval_and_embed_of_a_received_run_cache_locally(received_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from simclr.run import Run

    run, folder, elsewhere = received_run
    assert main(["eval", str(run), "--no-finetune"]) == 0
    assert main(["embed", str(run), "--data", str(folder), "--out", str(tmp_path / "h.npz")]) == 0
    assert not elsewhere.exists()
    assert any((tmp_path / "cache").iterdir())  # $SIMCLR_CACHE, this machine's choice
    assert Run.open(run).cfg.data.cache_dir is None


def test_a_command_may_still_choose_its_cache(received_run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from simclr.run import Run

    run, _, _ = received_run
    cfg = Run.open(run).config([f"data.cache_dir={tmp_path / 'mine'}"])
    assert cfg.data.cache_dir == str(tmp_path / "mine")


# --- 5. the cache: Pillow's version, atomic labels, reserved copies -----------------------------------


def write_classes(folder: Path, grey: bool = False) -> None:
    for k, cls in enumerate(("a", "b")):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            (folder / cls / f"{i}.png").write_bytes(png(10 * k + i, grey=grey))


def decode_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = decode_module.decode_image

    def counting(data: bytes, size: int, channels: int | None) -> tuple[np.ndarray, bool]:
        calls.append(1)
        return real(data, size, channels)

    monkeypatch.setattr(decode_module, "decode_image", counting)
    return calls


def test_a_pillow_upgrade_decodes_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import PIL

    write_classes(tmp_path / "data")
    load_images(str(tmp_path / "data"), image_size=8)
    calls = decode_count(monkeypatch)
    load_images(str(tmp_path / "data"), image_size=8)
    assert calls == []
    monkeypatch.setattr(PIL, "__version__", "999.0.0")
    load_images(str(tmp_path / "data"), image_size=8)
    assert len(calls) == 6
    assert len(list((tmp_path / "cache").iterdir())) == 1  # rebuilt in place, no second slot


def test_labels_npy_is_never_left_torn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    write_classes(tmp_path / "data")
    first = load_images(str(tmp_path / "data"), image_size=8)
    (slot,) = (tmp_path / "cache").iterdir()
    before = (slot / "labels.npy").read_bytes()
    edited = tmp_path / "data" / "a" / "0.png"
    st = edited.stat()
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # rebuild the slot

    def torn_save(file: object, arr: object, *args: object, **kwargs: object) -> None:
        f = open(file, "wb") if isinstance(file, (str, Path)) else file  # noqa: SIM115
        f.write(b"\x93NUMPY torn")  # type: ignore[union-attr]
        f.flush()  # type: ignore[union-attr]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.np, "save", torn_save)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        again = load_images(str(tmp_path / "data"), image_size=8)
    assert "cannot write the image cache" in caplog.text
    assert again.labels is not None and first.labels is not None and again.labels.tolist() == first.labels.tolist()
    assert (slot / "labels.npy").read_bytes() == before  # the old file, whole
    assert not [p.name for p in slot.iterdir() if ".tmp-" in p.name]


@pytest.mark.skipif(not hasattr(os, "posix_fallocate") or not Path("/proc/self/fd").is_dir(),
                    reason="needs posix_fallocate and /proc")
def test_a_full_disk_is_an_error_not_sigbus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """The channel-reducing copy (an all-grey set kept as one channel) reserves its file before
    mapping it, and so does the decoder row by row: no space is an OSError, never SIGBUS."""
    write_classes(tmp_path / "data", grey=True)
    real = os.posix_fallocate
    full: dict[str, str] = {"pattern": "images.u8.tmp-"}

    def fallocate(fd: int, offset: int, length: int) -> None:
        if full["pattern"] in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    with caplog.at_level(logging.WARNING, logger="simclr"):
        data = load_images(str(tmp_path / "data"), image_size=8)  # the copy's disk is full
    assert data.images.shape == (6, 1, 8, 8) and "cannot write the image cache" in caplog.text
    assert not (next((tmp_path / "cache").iterdir()) / "meta.json").exists()  # not cached
    shutil.rmtree(tmp_path / "cache")  # (the first run's decoded blocks would be joined, not decoded)
    full["pattern"] = "decoding/"  # the decoder's own files
    with pytest.raises(UserError, match=r"cannot write the image cache .*No space left"):
        load_images(str(tmp_path / "data"), image_size=8)
