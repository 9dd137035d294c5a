"""Built-in dataset names: scikit-learn's digits, and MNIST, CIFAR-10, CIFAR-100 and STL-10
read from a local root folder. Downloading into the root happens only when asked for."""

from __future__ import annotations

import hashlib
import logging
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from simclr.data.locks import exclusive
from simclr.env import env_dir
from simclr.errors import UserError

log = logging.getLogger("simclr")

# Built-in sets too small for crops at their own size are upsampled to this by default.
DEFAULT_SIZE = {"digits": 16}


@dataclass(frozen=True)
class Download:
    url: str
    md5: str  # the published checksum of the file


@dataclass(frozen=True)
class Remote:
    """Where a standard dataset lives under the root, and where to fetch it from."""

    folders: tuple[str, ...]  # candidate folders below the root, first is where downloads go
    files: tuple[Download, ...]
    extract: bool  # tar.gz archives to unpack into the root (else files kept in folders[0])


REMOTE = {
    "mnist": Remote(
        ("mnist", "MNIST/raw", "mnist/raw"),
        tuple(Download(f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}", md5) for name, md5 in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        )),
        extract=False,
    ),
    "cifar10": Remote(
        ("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"),
        (Download("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        extract=True,
    ),
    "cifar100": Remote(
        ("cifar-100-python", "cifar100/cifar-100-python", "cifar100"),
        (Download("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        extract=True,
    ),
    "stl10": Remote(
        ("stl10_binary", "stl10/stl10_binary", "stl10"),
        (Download("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb"),),
        extract=True,
    ),
}

NAMES = ("digits", *REMOTE)


def default_root() -> Path:
    """$SIMCLR_DATA, else ~/.local/share/simclr/datasets."""
    return env_dir("SIMCLR_DATA") or Path.home() / ".local" / "share" / "simclr" / "datasets"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: 8×8, 17 grey levels, 10 classes; as uint8
    N×1×8×8 images and int64 labels."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)[:, None]
    return images, d.target.astype(np.int64)


def locate(name: str, root: Path | str | None, allow_download: bool) -> Path:
    """The folder holding built-in dataset `name` under `root` (default `default_root()`),
    downloading it first when it is missing and `allow_download` is set."""
    remote = REMOTE[name]
    base = Path(root).expanduser() if root is not None else default_root()
    for folder in remote.folders:
        if _has_files(base / folder):
            return base / folder
    looked = ", ".join(str(base / f) for f in remote.folders)
    if not allow_download:
        raise UserError(
            f"built-in dataset {name!r} not found (looked in {looked}); put its files there, "
            "point data.root or SIMCLR_DATA at its folder, or set data.download=true to download it"
        )
    try:
        with exclusive(base / f".{name}.download.lock"):  # one process downloads, the others wait
            if not any(_has_files(base / folder) for folder in remote.folders):
                download(name, base)
    except OSError as e:  # the lock's folder cannot be made
        raise UserError(f"cannot download {name!r} into {base}: {e.strerror or e}") from None
    for folder in remote.folders:
        if _has_files(base / folder):
            return base / folder
    raise UserError(f"downloaded {name!r} into {base} but found none of {looked}")


def download(name: str, root: Path) -> None:
    """Fetch dataset `name` into `root`, checking each file's MD5 and unpacking archives."""
    remote = REMOTE[name]
    target = root / remote.folders[0] if not remote.extract else root
    try:
        target.mkdir(parents=True, exist_ok=True)
        for item in remote.files:
            path = target / item.url.rsplit("/", 1)[1]
            if not (path.is_file() and _md5(path) == item.md5):
                _fetch(item, path)
            if remote.extract:
                _extract(path, root)
                path.unlink()
    except (OSError, tarfile.TarError) as e:
        raise UserError(f"cannot download {name!r} into {root}: {getattr(e, 'strerror', None) or e}") from None


def _fetch(item: Download, path: Path) -> None:
    log.info("downloading %s", item.url)
    part = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(item.url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, TimeoutError) as e:
        part.unlink(missing_ok=True)
        raise UserError(f"cannot download {item.url}: {getattr(e, 'reason', e)}") from None
    if _md5(part) != item.md5:
        part.unlink()
        raise UserError(f"{item.url} downloaded with the wrong checksum (expected MD5 {item.md5})")
    part.replace(path)


def _extract(archive: Path, root: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")  # refuses absolute paths, "..", device files
            return
        for member in tar.getmembers():  # Python before 3.10.12 has no extraction filters
            dest = (root / member.name).resolve()
            if not dest.is_relative_to(root.resolve()) or not (member.isfile() or member.isdir()):
                raise UserError(f"{archive} holds an unsafe member {member.name!r}")
        tar.extractall(root)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.iterdir())

