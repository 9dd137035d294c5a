"""Standard dataset folders in their original formats: MNIST IDX (raw or .gz), CIFAR-10 and
CIFAR-100 python batches, STL-10 binary. Each reader returns `Arrays` without resizing."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simclr.errors import UserError

IDX_PATTERN = re.compile(
    r"(?P<split>train|t10k|test)[-_.](?P<what>images|labels)[-_.]idx(?P<ndim>\d)[-_.]ubyte(?P<gz>\.gz)?$"
)
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
STL_SIZE = 96


@dataclass
class Arrays:
    """Images as uint8 N×C×H×W in one or more parts (possibly memory-mapped views), labels
    over all parts, and class names."""

    parts: list[np.ndarray]
    labels: np.ndarray | None
    classes: list[str] | None

    @property
    def count(self) -> int:
        return sum(len(p) for p in self.parts)


@dataclass
class StandardFolder:
    """A detected standard-format folder: its kind, the files a split reads (for the cache
    fingerprint) and how to read them."""

    kind: str
    files: list[Path]
    read: Callable[[], Arrays]


def detect(folder: Path, split: str | None) -> StandardFolder | None:
    """The standard format of `folder`, set up to read `split`; None if it is none of them."""
    names = {p.name for p in folder.iterdir() if p.is_file()}
    if any(IDX_PATTERN.search(n) for n in names):
        return _idx(folder, names, split)
    if "batches.meta" in names or any(n.startswith("data_batch_") for n in names):
        return _cifar10(folder, names, split)
    if "meta" in names and names & {"train", "test"}:
        return _cifar100(folder, names, split)
    if any(n.endswith("_X.bin") for n in names):
        return _stl10(folder, names, split)
    return None


def _check_split(kind: str, split: str | None, allowed: tuple[str, ...]) -> str:
    split = split or allowed[0]
    if split not in allowed:
        raise UserError(f"{kind} has no {split!r} split (choose from {', '.join(allowed)})")
    return split


# --- MNIST IDX ---------------------------------------------------------------------------


def _idx(folder: Path, names: set[str], split: str | None) -> StandardFolder:
    split = _check_split("an MNIST IDX folder", split, ("train", "test"))
    found: dict[str, Path] = {}
    for name in sorted(names):
        m = IDX_PATTERN.search(name)
        if m and ("train" if m["split"] == "train" else "test") == split:
            found.setdefault(m["what"], folder / name)  # raw and .gz both present: either
    if "images" not in found:
        raise UserError(f"{folder} has no {split} images file (*-images-idx3-ubyte[.gz])")
    images_path, labels_path = found["images"], found.get("labels")

    def read() -> Arrays:
        images = read_idx(images_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise UserError(f"{images_path}: expected N×H×W uint8 images, got {images.dtype} {images.shape}")
        labels = None
        if labels_path is not None:
            labels = read_idx(labels_path).astype(np.int64).reshape(-1)
            _check_count(labels, len(images), labels_path)
        return Arrays([images[:, None]], labels, None)

    return StandardFolder("mnist-idx", [p for p in (images_path, labels_path) if p], read)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (big-endian magic: 0, 0, type code, number of dimensions; then the sizes
    as big-endian uint32; then the data), from a raw or gzip-compressed file."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path} is truncated (header)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(f"{path} holds {len(raw) - header} data bytes, expected {expected} for shape {dims}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


# --- CIFAR-10 / CIFAR-100 python batches ------------------------------------------------------


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can run any code, and the
    CIFAR batches need nothing else. Globals are matched exactly, before anything is imported:
    importing a module can itself run code (`numpy.f2py.__main__` starts f2py and exits)."""

    # (module, name) of every global a pickled array, dtype or numpy scalar needs, as written by
    # NumPy 1 (`numpy.core`) and NumPy 2 (`numpy._core`), protocols 2 to 5.
    ALLOWED = frozenset({
        ("_codecs", "encode"),  # bytes pickled by Python 3, protocol 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
        *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),  # protocol 5
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]  # NumPy 2 moved these
        return super().find_class(module, name)


def load_batch(path: Path) -> dict[str, Any]:
    """A CIFAR python batch (a pickled dict, usually written by Python 2), keys as str."""
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError, ImportError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR batch (expected a dict, got {type(obj).__name__})")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar_images(batch: dict[str, Any], path: Path) -> np.ndarray:
    data = np.asarray(batch.get("data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: expected 'data' as N×3072 uint8, got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32)  # rows hold the red, green and blue planes in turn


def _names(meta_path: Path, key: str) -> list[str] | None:
    if not meta_path.is_file():
        return None
    values = load_batch(meta_path).get(key)
    if not isinstance(values, list):
        return None
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _cifar10(folder: Path, names: set[str], split: str | None) -> StandardFolder:
    split = _check_split("a CIFAR-10 folder", split, ("train", "test"))
    if split == "train":
        numbered = [n for n in names if re.fullmatch(r"data_batch_\d+", n)]
        batches = sorted(numbered, key=lambda n: int(n.rsplit("_", 1)[1]))
    else:
        batches = ["test_batch"] if "test_batch" in names else []
    if not batches:
        raise UserError(f"{folder} has no CIFAR-10 {split} batches (data_batch_1..5, test_batch)")
    paths = [folder / n for n in batches]

    def read() -> Arrays:
        parts, labels = [], []
        for path in paths:
            batch = load_batch(path)
            parts.append(_cifar_images(batch, path))
            labels.append(np.asarray(batch.get("labels", []), dtype=np.int64))
            _check_count(labels[-1], len(parts[-1]), path)
        return Arrays(parts, np.concatenate(labels), _names(folder / "batches.meta", "label_names"))

    return StandardFolder("cifar10-batches", [*paths, folder / "batches.meta"], read)


def _cifar100(folder: Path, names: set[str], split: str | None) -> StandardFolder:
    split = _check_split("a CIFAR-100 folder", split, ("train", "test"))
    if split not in names:
        raise UserError(f"{folder} has no CIFAR-100 {split} file")
    path = folder / split

    def read() -> Arrays:
        batch = load_batch(path)
        images = _cifar_images(batch, path)
        labels = np.asarray(batch.get("fine_labels", []), dtype=np.int64)
        _check_count(labels, len(images), path)
        return Arrays([images], labels, _names(folder / "meta", "fine_label_names"))

    return StandardFolder("cifar100-batches", [path, folder / "meta"], read)


# --- STL-10 binary ------------------------------------------------------------------------


def _stl10(folder: Path, names: set[str], split: str | None) -> StandardFolder:
    split = _check_split("an STL-10 folder", split, ("train", "test", "unlabeled", "train+unlabeled"))
    wanted = split.split("+")
    files = [folder / f"{s}_X.bin" for s in wanted]
    missing = [p.name for p in files if p.name not in names]
    if missing:
        raise UserError(f"{folder} has no {', '.join(missing)} (STL-10 binary)")
    label_file = folder / f"{split}_y.bin" if split in ("train", "test") else None

    def read() -> Arrays:
        parts = [_stl_images(p) for p in files]
        labels = None
        if label_file is not None and label_file.is_file():
            # STL-10 numbers its classes from 1.
            labels = np.fromfile(label_file, dtype=np.uint8).astype(np.int64) - 1
            _check_count(labels, len(parts[0]), label_file)
        classes = None
        names_file = folder / "class_names.txt"
        if names_file.is_file():
            classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        return Arrays(parts, labels, classes)

    extra = [p for p in (label_file, folder / "class_names.txt") if p is not None and p.is_file()]
    return StandardFolder("stl10-binary", files + extra, read)


def _stl_images(path: Path) -> np.ndarray:
    per_image = 3 * STL_SIZE * STL_SIZE
    size = path.stat().st_size
    if size == 0 or size % per_image:
        raise UserError(f"{path}: {size} bytes is not a whole number of 3×96×96 images")
    # Each image is stored channel by channel, each channel column by column: read as
    # (C, W, H) and swap the last two axes. Memory-mapped: the 100k unlabeled images are 2.8 GB.
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // per_image, 3, STL_SIZE, STL_SIZE))
    return raw.transpose(0, 1, 3, 2)


def _check_count(labels: np.ndarray, n: int, path: Path) -> None:
    if len(labels) != n:
        raise UserError(f"{path}: {len(labels)} labels for {n} images")
