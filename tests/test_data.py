"""Data sources: folders, archives, arrays and standard formats; awkward files used, broken
files skipped with their reason; the decode-once cache; the shared real datasets."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simclr.data.decode as decode_module
import simclr.data.standard as standard_module
from simclr.data import (
    ImageData,
    convert_channels,
    load_digits,
    load_images,
    resize_uint8,
    skip_counts,
    skip_summary,
    write_skipped,
)
from simclr.data import builtin as builtin_module
from simclr.data.decode import decode_entries
from simclr.data.images import BrokenImage, decode_image, reason_kind
from simclr.data.layout import infer_layout
from simclr.data.listing import Entry
from simclr.errors import UserError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CIFAR_TRAIN_ZIP = SHARED / "cifar10_jpeg" / "cifar10-train-first2000perclass-jpeg.zip"
MNIST_DIR = SHARED / "mnist"
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test caches under its own folder, finds no built-in data by accident, and cannot
    reach the network."""
    monkeypatch.setenv("SIMCLR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIMCLR_DATA", str(tmp_path / "no-datasets-here"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests never download")

    monkeypatch.setattr("urllib.request.urlopen", no_network)


# --- writing test files ----------------------------------------------------------------------


def noise_image(seed: int, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written byte by byte (Pillow cannot write 16-bit RGB, nor lie about its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def rgb16_png(colour: tuple[int, int, int], size: int = 4) -> bytes:
    row = b"\x00" + struct.pack(">3H", *colour) * size  # filter byte, then 6 bytes per pixel
    return handmade_png(size, size, 16, 2, row * size)


def exif_rotated_jpeg() -> bytes:
    """40×20 stored: red left half, blue right half; EXIF orientation 6 says "rotate 90°
    clockwise to display", so the displayed image is 20×40 with red on top."""
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(Image.new("RGB", (20, 20), RED), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def awkward_files() -> dict[str, bytes]:
    """One valid but awkward file of each kind, by file name."""
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    palette.paste(0, (0, 0, 4, 8))  # left half: index 0, the transparent one
    rgba = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 4, 8))  # left half fully transparent
    grey16 = np.zeros((8, 8), np.uint16)
    grey16[:, :4] = 65535
    return {
        "cmyk.jpg": encode(Image.new("CMYK", (12, 12), (0, 255, 255, 0)), "JPEG", quality=95),
        "palette_transparent.png": encode(palette, "PNG", transparency=0),
        "rgba.png": encode(rgba, "PNG"),
        "grey16.png": encode(Image.fromarray(grey16), "PNG"),
        "rgb16.png": rgb16_png((65535, 0, 32896)),
        "grey.png": encode(Image.new("L", (10, 10), 77), "PNG"),
        "exif_rotated.jpg": exif_rotated_jpeg(),
        "one_pixel.png": encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
    }


NON_UTF8_NAME = b"caf\xe9-non-utf8.png"  # Latin-1 é: not valid UTF-8


def truncated_jpeg() -> bytes:
    data = encode(noise_image(1, (64, 64)), "JPEG", quality=90)
    return data[: len(data) // 2]


def bomb_png(side: int) -> bytes:
    """A PNG header claiming side×side pixels (never decoded: Pillow refuses at open)."""
    return handmade_png(side, side, 1, 0, b"\x00")


# name → (bytes, expected reason kind); the symlink loop and unreadable file are made apart.
BROKEN: dict[str, tuple[bytes, str]] = {
    "truncated.jpg": (truncated_jpeg(), "truncated or corrupt image"),
    "empty.jpg": (b"", "empty file"),
    "text.jpg": (b"this is a text file, not a photo\n" * 4, "not an image"),
    "random.png": (np.random.default_rng(7).bytes(3000), "not an image"),
    "random.dat": (np.random.default_rng(8).bytes(3000), "not an image"),
    "bomb_error.png": (bomb_png(30_000), "too large"),  # past twice Pillow's limit: an error
    "bomb_warning.png": (bomb_png(10_000), "too large"),  # past the limit: a warning, made an error
}


def write_good(folder: Path, n: int, start: int = 0, size: tuple[int, int] = (16, 16)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"good_{i:04d}.{'png' if i % 2 else 'jpg'}"
        path.write_bytes(encode(noise_image(i, size), "PNG" if i % 2 else "JPEG"))
        paths.append(path)
    return paths


def write_awkward(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in awkward_files().items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    odd = os.path.join(os.fsencode(folder), NON_UTF8_NAME)
    with open(odd, "wb") as f:
        f.write(encode(noise_image(99), "PNG"))
    paths.append(Path(os.fsdecode(odd)))
    return paths


def write_broken(folder: Path) -> dict[str, str]:
    """Every broken kind; returns file name → expected reason kind."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, kind) in BROKEN.items():
        (folder / name).write_bytes(data)
        expected[name] = kind
    (folder / "loop.jpg").symlink_to("loop.jpg")
    expected["loop.jpg"] = "symlink loop"
    return expected


def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count decode_image calls from now on."""
    calls: list[int] = []
    real = decode_image

    def counting(data: bytes, size: int, channels: int | None) -> tuple[np.ndarray, bool]:
        calls.append(1)
        return real(data, size, channels)

    monkeypatch.setattr(decode_module, "decode_image", counting)
    return calls


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(decode_module, "decode_image", fail)


# --- the in-memory form ------------------------------------------------------------------------


def test_digits_and_tensor_helpers() -> None:
    digits = load_digits()
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.dtype == torch.uint8
    assert int(digits.images.max()) == 255
    data = load_images("digits", channels=3)
    assert data.images.shape == (1797, 3, 16, 16) and data.labels is not None
    sub = data.subset(np.array([0, 5]))
    assert len(sub) == 2 and sub.labels is not None and sub.labels.tolist() == data.labels[[0, 5]].tolist()
    x = torch.full((2, 3, 8, 8), 200, dtype=torch.uint8)
    assert convert_channels(x, 1).shape == (2, 1, 8, 8) and int(convert_channels(x, 1)[0, 0, 0, 0]) == 200
    assert resize_uint8(x, 4).shape == (2, 3, 4, 4)
    with pytest.raises(UserError, match="no splits"):
        load_images("digits:test")


# --- awkward files: decoded and used -------------------------------------------------------------


def pixel(chw: np.ndarray, y: int, x: int) -> tuple[int, ...]:
    return tuple(int(v) for v in chw[:, y, x])


def test_cmyk_jpeg_becomes_rgb() -> None:
    out, grey = decode_image(awkward_files()["cmyk.jpg"], 12, 3)
    r, g, b = pixel(out, 6, 6)
    assert out.shape == (3, 12, 12) and r > 230 and g < 30 and b < 30 and not grey


@pytest.mark.parametrize("name", ["palette_transparent.png", "rgba.png"])
def test_transparency_is_composited_over_white(name: str) -> None:
    out, _ = decode_image(awkward_files()[name], 8, 3)
    assert pixel(out, 4, 1) == WHITE  # the transparent left half
    assert pixel(out, 4, 6) in (RED, BLUE)  # the opaque right half keeps its colour


def test_16_bit_pngs_scale_to_8_bits() -> None:
    grey, is_grey = decode_image(awkward_files()["grey16.png"], 8, 1)
    assert grey.shape == (1, 8, 8) and is_grey
    assert int(grey[0, 0, 0]) == 255 and int(grey[0, 0, 7]) == 0
    rgb, _ = decode_image(awkward_files()["rgb16.png"], 4, 3)
    assert pixel(rgb, 0, 0) == (255, 0, 128)


def test_exif_orientation_is_applied() -> None:
    out, _ = decode_image(awkward_files()["exif_rotated.jpg"], 20, 3)
    # Displayed 20×40 with red on top; its central square has red above blue. Unrotated, the
    # square would have red on the left and blue on the right instead.
    top_right, bottom_left = pixel(out, 2, 17), pixel(out, 17, 2)
    assert top_right[0] > 200 and top_right[2] < 60, top_right
    assert bottom_left[2] > 200 and bottom_left[0] < 60, bottom_left


def test_one_pixel_image_is_upsampled() -> None:
    out, _ = decode_image(awkward_files()["one_pixel.png"], 16, 3)
    assert out.shape == (3, 16, 16) and pixel(out, 0, 0) == pixel(out, 15, 15) == (10, 200, 30)


def test_grey_mixed_with_rgb(tmp_path: Path) -> None:
    (tmp_path / "grey.png").write_bytes(awkward_files()["grey.png"])
    (tmp_path / "colour.png").write_bytes(encode(noise_image(3, (10, 10)), "PNG"))
    mixed = load_images(str(tmp_path), image_size=10)
    assert mixed.images.shape == (2, 3, 10, 10)
    assert (mixed.images[1] == 77).all()  # "grey.png" sorts after "colour.png"
    (tmp_path / "colour.png").unlink()
    only_grey = load_images(str(tmp_path), image_size=10)
    assert only_grey.images.shape == (1, 1, 10, 10)  # all grey: one channel
    assert load_images(str(tmp_path), channels=3, image_size=10).channels == 3


def test_every_awkward_file_is_used(tmp_path: Path) -> None:
    paths = write_awkward(tmp_path / "awkward")
    data = load_images(str(tmp_path / "awkward"), channels=3, image_size=16)
    assert data.images.shape == (len(paths), 3, 16, 16)
    assert data.skipped == [] and data.labels is None
    assert load_images(str(tmp_path / "awkward"), channels=1, image_size=16).images.shape == (len(paths), 1, 16, 16)


def test_auto_size_is_the_median_shorter_side(tmp_path: Path) -> None:
    write_good(tmp_path, 3, 0, (40, 60))
    write_good(tmp_path, 2, 3, (20, 20))
    (tmp_path / "tiny.png").write_bytes(awkward_files()["one_pixel.png"])
    data = load_images(str(tmp_path))
    assert data.image_size == 30  # shorter sides 1, 20, 20, 40, 40, 40
    assert data.images.shape == (6, 3, 30, 30)


# --- broken files: skipped with their reason ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_file_is_skipped_with_its_reason(tmp_path: Path, name: str) -> None:
    write_good(tmp_path, 3)
    data_bytes, kind = BROKEN[name]
    (tmp_path / name).write_bytes(data_bytes)
    data = load_images(str(tmp_path), image_size=16)
    assert len(data) == 3
    assert [(Path(p).name, reason_kind(r)) for p, r in data.skipped] == [(name, kind)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow warns, then we refuse
        with pytest.raises(BrokenImage, match=kind):
            decode_image(data_bytes, 16, 3)


def test_text_file_reason_says_text() -> None:
    with pytest.raises(BrokenImage, match="looks like text"):
        decode_image(BROKEN["text.jpg"][0], 16, 3)


def test_symlink_loop_is_skipped(tmp_path: Path) -> None:
    write_good(tmp_path, 2)
    (tmp_path / "a.jpg").symlink_to("b.jpg")
    (tmp_path / "b.jpg").symlink_to("a.jpg")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")  # a folder loop: must not recurse forever
    (tmp_path / "dangling.png").symlink_to("missing.png")
    data = load_images(str(tmp_path), image_size=16)
    reasons = {Path(p).name: reason_kind(r) for p, r in data.skipped}
    assert len(data) == 2
    assert reasons == {"a.jpg": "symlink loop", "b.jpg": "symlink loop", "up": "symlink loop",
                       "dangling.png": "broken symlink"}


def test_unreadable_file_is_skipped(tmp_path: Path) -> None:
    write_good(tmp_path, 2)
    locked = tmp_path / "locked.png"
    locked.write_bytes(encode(noise_image(5), "PNG"))
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): mode 000 does not stop reads; "
                        "test_unreadable_reason_from_permission_error covers the reason")
        data = load_images(str(tmp_path), image_size=16)
        assert len(data) == 2
        assert [(Path(p).name, r) for p, r in data.skipped] == [("locked.png", "unreadable: permission denied")]
    finally:
        locked.chmod(0o644)


def test_unreadable_reason_from_permission_error() -> None:
    """The reason for a read refused by the OS, independent of who runs the tests."""

    def refuse() -> bytes:
        raise PermissionError(13, "Permission denied")

    good = encode(noise_image(1), "PNG")
    entries = [Entry(("ok.png",), "ok.png", lambda: good), Entry(("locked.png",), "locked.png", refuse)]
    out = decode_entries(entries, 8, 3, lambda shape: np.empty(shape, np.uint8), workers=1)
    assert out.count == 1 and out.skipped == [("locked.png", "unreadable: permission denied")]


def test_fifo_is_skipped_not_read(tmp_path: Path) -> None:
    write_good(tmp_path, 2)
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    data = load_images(str(tmp_path), image_size=16)
    assert [(Path(p).name, reason_kind(r)) for p, r in data.skipped] == [("pipe.png", "not a regular file")]


def test_hundred_good_plus_every_awkward_and_broken_kind(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    good = write_good(folder, 100)
    awkward = write_awkward(folder)
    expected = write_broken(folder)
    (folder / "README.txt").write_text("notes: ignored, never an image")
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")
    data = load_images(str(folder), channels=3, image_size=16)
    assert len(data) == len(good) + len(awkward)
    assert {Path(p).name: reason_kind(r) for p, r in data.skipped} == expected
    assert data.labels is None
    summary = skip_summary(data.skipped)
    assert summary.startswith(f"{len(expected)} files skipped: ") and "2 too large" in summary
    assert sum(skip_counts(data.skipped).values()) == len(expected)
    report = tmp_path / "skipped_files.txt"
    write_skipped(report, data.skipped)
    lines = report.read_text(encoding="utf-8").splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in lines) == sorted(expected)


def test_non_utf8_names_are_printable(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path)
    with open(os.path.join(folder, NON_UTF8_NAME), "wb") as f:
        f.write(encode(noise_image(1), "PNG"))
    with open(os.path.join(folder, b"bad-\xff.jpg"), "wb") as f:
        f.write(b"")
    data = load_images(str(tmp_path), image_size=8)
    assert len(data) == 1
    (path, reason), = data.skipped
    assert path.endswith("bad-\\xff.jpg") and reason == "empty file"
    path.encode("utf-8")  # printable and writable as UTF-8


def test_strict_makes_the_first_broken_file_an_error(tmp_path: Path) -> None:
    write_good(tmp_path, 3)
    (tmp_path / "truncated.jpg").write_bytes(BROKEN["truncated.jpg"][0])
    with pytest.raises(UserError, match=r"truncated\.jpg: truncated or corrupt image"):
        load_images(str(tmp_path), image_size=16, strict=True)
    assert not list((tmp_path / "cache").glob("*/*.tmp-*"))  # the half-built slot was cleaned up
    load_images(str(tmp_path), image_size=16)  # cached with the file skipped...
    with pytest.raises(UserError, match=r"truncated\.jpg"):  # ...and still refused strictly
        load_images(str(tmp_path), image_size=16, strict=True)


def test_no_usable_images_is_one_line_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"no image files found in .*empty") as info:
        load_images(str(empty))
    assert "\n" not in str(info.value)
    broken = tmp_path / "broken"
    write_broken(broken)
    with pytest.raises(UserError, match=r"no usable images in .*broken") as info:
        load_images(str(broken), image_size=8)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        load_images(str(tmp_path / "nowhere"))
    packed = tmp_path / "cifar-10-python.tar"
    with tarfile.open(packed, "w") as tf:
        write_cifar10(tmp_path / "batches")
        tf.add(tmp_path / "batches", arcname="cifar-10-batches-py")
    with pytest.raises(UserError, match="unpack it and pass the folder"):
        load_images(str(packed))
    (tmp_path / "notes.bin").write_bytes(b"abc")
    with pytest.raises(UserError, match="unsupported data source"):
        load_images(str(tmp_path / "notes.bin"))


def test_threads_give_the_same_result(tmp_path: Path) -> None:
    write_good(tmp_path, 40, size=(24, 20))
    one = load_images(str(tmp_path), image_size=12, use_cache=False, workers=1)
    two = load_images(str(tmp_path), image_size=12, use_cache=False, workers=3)
    assert torch.equal(one.images, two.images)


# --- layouts ---------------------------------------------------------------------------------------


def parts(*paths: str) -> list[tuple[str, ...]]:
    return [tuple(p.split("/")) for p in paths]


def test_layout_rules() -> None:
    labelled = infer_layout(parts("cat/1.jpg", "cat/2.jpg", "dog/1.jpg"), None, "x")
    assert labelled.classes == ["cat", "dog"] and labelled.labels == [0, 0, 1]
    assert infer_layout(parts("1.jpg", "2.jpg"), None, "x").labels is None  # flat
    nested = infer_layout(parts("a/b/1.jpg", "a/c/2.jpg", "d/3.jpg"), None, "x")
    assert nested.labels is None and nested.index == [0, 1, 2]  # nested without classes
    assert infer_layout(parts("1.jpg", "cat/2.jpg", "dog/3.jpg"), None, "x").labels is None  # mixed
    wrapped = infer_layout(parts("data/train/cat/1.jpg", "data/train/dog/2.jpg"), None, "x")
    assert wrapped.classes == ["cat", "dog"] and wrapped.prefix == ("data", "train")
    splits = parts("train/cat/1.jpg", "train/dog/2.jpg", "val/cat/3.jpg", "val/dog/4.jpg")
    train = infer_layout(splits, None, "x")
    assert train.index == [0, 1] and train.labels == [0, 1]
    test = infer_layout(splits, "test", "x")  # "test" falls back to val/
    assert test.index == [2, 3] and test.classes == ["cat", "dog"]
    with pytest.raises(UserError, match="has no unlabeled split"):
        infer_layout(splits, "unlabeled", "x")
    with pytest.raises(UserError, match="has no test split"):
        infer_layout(parts("cat/1.jpg", "dog/2.jpg"), "test", "x")


def test_class_folders_give_labels(tmp_path: Path) -> None:
    for k, name in enumerate(["zebra", "ant", "moth"]):
        write_good(tmp_path / name, 2 + k, start=10 * k)
    (tmp_path / "labels.csv").write_text("ignored\n")
    data = load_images(str(tmp_path), image_size=16)
    assert data.classes == ["ant", "moth", "zebra"]
    assert data.labels is not None and data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]


# --- archives ------------------------------------------------------------------------------------


def archive_members() -> dict[str, bytes]:
    members = {}
    for split, n in (("train", 3), ("test", 2)):
        for k, cls in enumerate(("cat", "dog")):
            for i in range(n):
                members[f"photos/{split}/{cls}/{i}.png"] = encode(noise_image(100 * k + i, (20, 20)), "PNG")
    members["photos/README.md"] = b"# ignored"
    members["__MACOSX/photos/._0.png"] = b"resource fork junk"
    members["photos/train/cat/broken.jpg"] = b"not a jpeg"
    return members


def test_zip_with_splits_and_classes(tmp_path: Path) -> None:
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in archive_members().items():
            zf.writestr(name, data)
    train = load_images(str(path), image_size=16)
    assert train.images.shape == (6, 3, 16, 16) and train.classes == ["cat", "dog"]
    assert train.labels is not None and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [(p, reason_kind(r)) for p, r in train.skipped] == [(f"{path}/photos/train/cat/broken.jpg", "not an image")]
    test = load_images(f"{path}:test", image_size=16)
    assert len(test) == 4 and test.labels is not None and test.labels.tolist() == [0, 0, 1, 1]
    assert test.name == "photos-test"


@pytest.mark.parametrize("name", ["flat.tar", "flat.tar.gz"])
def test_tar_flat_is_unlabelled(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with tarfile.open(path, "w:gz" if name.endswith(".gz") else "w") as tf:
        for i in range(5):
            jpeg = encode(noise_image(i, (12, 18)), "JPEG")
            info = tarfile.TarInfo(f"images/{i}.jpg")
            info.size = len(jpeg)
            tf.addfile(info, io.BytesIO(jpeg))
        link = tarfile.TarInfo("images/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "0.jpg"
        tf.addfile(link)
    data = load_images(str(path), image_size=8)
    assert data.images.shape == (5, 3, 8, 8) and data.labels is None and data.name == "flat"
    assert [reason_kind(r) for _, r in data.skipped] == ["not a regular file"]


def test_corrupt_archive_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.png", encode(noise_image(0), "PNG"))
    path.write_bytes(path.read_bytes()[:-30])  # cut into the central directory
    with pytest.raises(UserError):
        load_images(str(path))


# --- arrays ----------------------------------------------------------------------------------------


def test_npz_and_npy_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (6, 10, 10, 3), dtype=np.uint8)
    np.savez(tmp_path / "xy.npz", x=nhwc, y=np.arange(6))
    data = load_images(str(tmp_path / "xy.npz"))
    assert data.images.shape == (6, 3, 10, 10)
    assert torch.equal(data.images, torch.from_numpy(nhwc.transpose(0, 3, 1, 2)))
    assert data.labels is not None and data.labels.tolist() == list(range(6))
    np.savez(tmp_path / "named.npz", images=nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 255, labels=np.ones(6))
    named = load_images(str(tmp_path / "named.npz"), image_size=5)
    assert named.images.shape == (6, 3, 5, 5) and named.labels is not None
    np.savez(tmp_path / "keras.npz", x_train=nhwc[:4, :, :, 0], y_train=np.arange(4),
             x_test=nhwc[4:, :, :, 0], y_test=np.arange(2))
    assert load_images(str(tmp_path / "keras.npz")).images.shape == (4, 1, 10, 10)
    keras_test = load_images(str(tmp_path / "keras.npz:test"), channels=3)
    assert keras_test.images.shape == (2, 3, 10, 10) and keras_test.labels is not None
    np.save(tmp_path / "plain.npy", nhwc[..., 0])
    plain = load_images(str(tmp_path / "plain.npy"))
    assert plain.images.shape == (6, 1, 10, 10) and plain.labels is None
    np.savez(tmp_path / "mismatch.npz", x=nhwc, y=np.arange(5))
    with pytest.raises(UserError, match="5 labels"):
        load_images(str(tmp_path / "mismatch.npz"))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read"):
        load_images(str(tmp_path / "junk.npy"))


# --- standard formats, written at test time -------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, gz: bool, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_folder(tmp_path: Path, gz: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = write_mnist(tmp_path / "mnist", gz)
    train = load_images(str(tmp_path / "mnist"))
    assert train.images.shape == (30, 1, 28, 28)
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert train.labels is not None and train.labels.tolist() == [i % 10 for i in range(30)]
    test = load_images(str(tmp_path / "mnist") + ":test", channels=3, image_size=32)
    assert test.images.shape == (10, 3, 32, 32)

    def no_reading(path: Path) -> np.ndarray:
        raise AssertionError("read the IDX files again instead of the cache")

    monkeypatch.setattr(standard_module, "read_idx", no_reading)
    assert torch.equal(load_images(str(tmp_path / "mnist")).images, train.images)


def test_bad_idx_files_are_user_errors(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(29, np.uint8)))
    with pytest.raises(UserError, match="29 labels for 30 images"):
        load_images(str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(UserError, match="not an IDX file"):
        load_images(str(tmp_path))


def cifar_images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the batches were written by Python 2's cPickle


def write_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True)
    train = [cifar_images(1, 4), cifar_images(2, 3)]
    for k, images in enumerate(train, 1):
        write_pickle(folder / f"data_batch_{k}", {b"batch_label": b"training batch",
                                                  b"data": images.reshape(len(images), -1),
                                                  b"labels": [(i + k) % 10 for i in range(len(images))]})
    test = cifar_images(3, 5)
    write_pickle(folder / "test_batch", {b"data": test.reshape(5, -1), b"labels": list(range(5))})
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                  "horse", "ship", "truck")]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return np.concatenate(train), test


def test_cifar10_python_batches(tmp_path: Path) -> None:
    train_images, _ = write_cifar10(tmp_path / "cifar-10-batches-py")
    train = load_images(str(tmp_path / "cifar-10-batches-py"))
    assert torch.equal(train.images, torch.from_numpy(train_images))  # planes R, G, B; rows of 32
    assert train.labels is not None and train.labels.tolist() == [1, 2, 3, 4, 2, 3, 4]
    assert train.classes is not None and train.classes[0] == "airplane"
    test = load_images(str(tmp_path / "cifar-10-batches-py:test"), image_size=16, channels=1)
    assert test.images.shape == (5, 1, 16, 16) and test.labels is not None and test.labels.tolist() == [0, 1, 2, 3, 4]


def test_cifar100_python_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = cifar_images(4, 6)
    write_pickle(folder / "train", {b"data": images.reshape(6, -1), b"fine_labels": [5, 99, 0, 1, 2, 3],
                                    b"coarse_labels": [0] * 6})
    write_pickle(folder / "test", {b"data": images[:2].reshape(2, -1), b"fine_labels": [7, 8]})
    write_pickle(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    data = load_images(str(folder))
    assert torch.equal(data.images, torch.from_numpy(images))
    assert data.labels is not None and data.labels.tolist() == [5, 99, 0, 1, 2, 3]
    assert data.classes is not None and len(data.classes) == 100
    assert len(load_images(str(folder), split="test")) == 2


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()

    class Exploit:
        def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    write_pickle(folder / "data_batch_1", {b"data": Exploit(), b"labels": []})
    with pytest.raises(UserError, match="refusing to load"):
        load_images(str(folder))
    assert not (tmp_path / "pwned").exists()


def test_stl10_binary_folder(tmp_path: Path) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(5)
    counts = {"train": 3, "test": 2, "unlabeled": 4}
    images = {s: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for s, n in counts.items()}
    for split, array in images.items():
        # The format stores each channel column by column.
        array.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
    np.array([1, 10, 2], np.uint8).tofile(folder / "train_y.bin")
    np.array([3, 4], np.uint8).tofile(folder / "test_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    train = load_images(str(folder))
    assert torch.equal(train.images, torch.from_numpy(images["train"]))
    assert train.labels is not None and train.labels.tolist() == [0, 9, 1] and train.classes is not None
    unlabeled = load_images(str(folder) + ":unlabeled", image_size=32)
    assert unlabeled.images.shape == (4, 3, 32, 32) and unlabeled.labels is None
    both = load_images(str(folder) + ":train+unlabeled")
    assert len(both) == 7 and both.labels is None
    assert torch.equal(both.images[3:], torch.from_numpy(images["unlabeled"]))
    assert load_images(str(folder) + ":test").labels is not None


# --- built-in names ---------------------------------------------------------------------------------


def test_builtin_names_read_from_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "datasets" / "mnist", gz=True)
    data = load_images("mnist", root=tmp_path / "datasets")
    assert data.images.shape == (30, 1, 28, 28) and data.name == "mnist"
    monkeypatch.setenv("SIMCLR_DATA", str(tmp_path / "datasets"))
    assert len(load_images("mnist:test")) == 10
    with pytest.raises(UserError, match=r"cifar10.*not found.*data\.download=true"):
        load_images("cifar10")


def test_download_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The opt-in path, fed from a local file: fetch, check the MD5, unpack, load."""
    build = tmp_path / "build" / "cifar-10-batches-py"
    write_cifar10(build)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(build, arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    remote = builtin_module.Remote(("cifar-10-batches-py",), (builtin_module.Download(archive.as_uri(), md5),), True)
    monkeypatch.setitem(builtin_module.REMOTE, "cifar10", remote)
    import urllib.request

    from_file = urllib.request.build_opener(urllib.request.FileHandler()).open
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=0: from_file(url))
    root = tmp_path / "root"
    with pytest.raises(UserError, match="not found"):
        load_images("cifar10", root=root)
    data = load_images("cifar10", root=root, allow_download=True)
    assert len(data) == 7 and (root / "cifar-10-batches-py" / "data_batch_1").is_file()
    bad = builtin_module.Remote(("cifar-10-batches-py",), (builtin_module.Download(archive.as_uri(), "0" * 32),), True)
    monkeypatch.setitem(builtin_module.REMOTE, "cifar10", bad)
    with pytest.raises(UserError, match="wrong checksum"):
        load_images("cifar10", root=tmp_path / "other", allow_download=True)


# --- the cache ---------------------------------------------------------------------------------------


def test_second_load_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_good(tmp_path / "data" / "a", 3)
    write_good(tmp_path / "data" / "b", 2, start=3)
    (tmp_path / "data" / "b" / "empty.jpg").write_bytes(b"")
    first = load_images(str(tmp_path / "data"), image_size=16, cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir())  # a slot was written
    forbid_decoding(monkeypatch)
    second = load_images(str(tmp_path / "data"), image_size=16, cache_dir=tmp_path / "c")
    assert torch.equal(first.images, second.images) and first.skipped == second.skipped
    assert second.labels is not None and first.labels is not None and torch.equal(first.labels, second.labels)
    assert second.classes == ["a", "b"]


def test_cache_rebuilds_when_a_file_or_setting_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_good(tmp_path / "data", 4)
    source = str(tmp_path / "data")
    load_images(source, image_size=16)
    calls = decode_calls(monkeypatch)
    load_images(source, image_size=16)
    assert calls == []
    st = paths[0].stat()
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # "edited"
    load_images(source, image_size=16)
    assert len(calls) == 4
    load_images(source, image_size=12)  # another size
    assert len(calls) == 8
    load_images(source, image_size=12, channels=1)  # another channel count
    assert len(calls) == 12
    write_good(tmp_path / "data", 1, start=50)  # a new file
    assert len(load_images(source, image_size=16)) == 5
    calls.clear()
    load_images(source, image_size=12)  # every earlier setting still cached, and still valid?
    assert len(calls) == 5  # no: the folder changed since that slot was built


def test_archive_cache_follows_the_archive_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.writestr(f"{i}.png", encode(noise_image(i), "PNG"))
    load_images(str(path), image_size=8)
    calls = decode_calls(monkeypatch)
    load_images(str(path), image_size=8)
    assert calls == []
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    load_images(str(path), image_size=8)
    assert len(calls) == 3


def test_unwritable_cache_falls_back_to_memory(tmp_path: Path) -> None:
    write_good(tmp_path / "data", 3)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    data = load_images(str(tmp_path / "data"), image_size=8, cache_dir=blocker)
    assert len(data) == 3
    off = load_images(str(tmp_path / "data"), image_size=8, use_cache=False, cache_dir=tmp_path / "off")
    assert torch.equal(off.images, data.images) and not (tmp_path / "off").exists()


def test_cache_survives_a_damaged_slot(tmp_path: Path) -> None:
    write_good(tmp_path / "data", 3)
    first = load_images(str(tmp_path / "data"), image_size=8, cache_dir=tmp_path / "c")
    (slot,) = (tmp_path / "c").iterdir()
    (slot / "images.u8").unlink()  # a new file: `first` keeps its memory map of the old one
    (slot / "images.u8").write_bytes(b"short")
    again = load_images(str(tmp_path / "data"), image_size=8, cache_dir=tmp_path / "c")
    assert torch.equal(first.images, again.images)


# --- the shared real datasets (skipped when absent) -----------------------------------------------


needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST not present at {MNIST_DIR}")
needs_cifar = pytest.mark.skipif(
    not CIFAR_TRAIN_ZIP.is_file(), reason=f"shared CIFAR-10 zip not present at {CIFAR_TRAIN_ZIP}"
)


@needs_mnist
def test_shared_mnist_folder(tmp_path: Path) -> None:
    train = load_images(str(MNIST_DIR), cache_dir=tmp_path / "c")
    assert train.images.shape == (60000, 1, 28, 28) and train.labels is not None
    counts = torch.bincount(train.labels).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # the README's
    test = load_images(f"{MNIST_DIR}:test", cache_dir=tmp_path / "c")
    assert len(test) == 10000


@pytest.fixture(scope="module")
def cifar_train(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ImageData, Path]]:
    cache = tmp_path_factory.mktemp("cifar-cache")
    yield load_images(str(CIFAR_TRAIN_ZIP), cache_dir=cache), cache


@needs_cifar
def test_shared_cifar10_zip(cifar_train: tuple[ImageData, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, cache = cifar_train
    assert data.images.shape == (20000, 3, 32, 32) and data.skipped == []
    assert data.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert data.labels is not None and torch.bincount(data.labels).tolist() == [2000] * 10
    forbid_decoding(monkeypatch)
    again = load_images(str(CIFAR_TRAIN_ZIP), cache_dir=cache)
    assert torch.equal(again.images[::997], data.images[::997])


@needs_cifar
def test_shared_cifar10_unpacked_matches_the_zip(cifar_train: tuple[ImageData, Path], tmp_path: Path) -> None:
    """Part of the same set unpacked into a folder gives the same pixels and labels."""
    data, _ = cifar_train
    per_class = 20
    with zipfile.ZipFile(CIFAR_TRAIN_ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg") and int(n[-8:-4]) < per_class)
        for name in names:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(zf.read(name))
    folder = load_images(str(tmp_path / "train"), cache_dir=tmp_path / "c")
    assert folder.images.shape == (10 * per_class, 3, 32, 32) and folder.classes == data.classes
    rows = torch.cat([torch.arange(per_class) + 2000 * k for k in range(10)])
    assert torch.equal(folder.images, data.images[rows])
    assert folder.labels is not None and data.labels is not None and torch.equal(folder.labels, data.labels[rows])


def test_ids_are_the_paths_of_the_used_files_and_survive_the_cache(tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    write_good(folder / "cat", 3)
    write_good(folder / "dog", 2, start=3)
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    first = load_images(str(folder), channels=3, image_size=16)
    expected = [f"cat/good_{i:04d}.{'png' if i % 2 else 'jpg'}" for i in range(3)]
    expected += [f"dog/good_{i:04d}.{'png' if i % 2 else 'jpg'}" for i in range(3, 5)]
    assert first.ids == expected  # the broken file is skipped, not listed
    assert first.labels is not None and first.labels.tolist() == [0, 0, 0, 1, 1]
    again = load_images(str(folder), channels=3, image_size=16)  # from the cache
    assert again.ids == expected
    assert first.subset(np.array([4, 0])).ids == [expected[4], expected[0]]
