"""Listing the candidate image files of a folder, a .zip or a .tar, without decoding them.

Every regular file is a candidate except hidden files, OS clutter (`__MACOSX/`, `Thumbs.db`)
and files whose extension marks them as documents or metadata (`.txt`, `.csv`, `.json`, ...):
a file in an unknown format is tried, and skipped with its reason if Pillow cannot read it.
Problems found while listing (symlink loops, unreadable folders, FIFOs) are recorded on the
entry instead of stopping the listing.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from simclr.data.images import BROKEN_LINK, EMPTY, NOT_A_FILE, SYMLINK_LOOP, TOO_LARGE, UNREADABLE

# Documents and metadata that commonly sit next to images; never treated as images.
IGNORED_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".xml", ".html",
    ".htm", ".pdf", ".py", ".ipynb", ".log", ".ini", ".cfg", ".toml", ".db", ".sqlite", ".pkl",
    ".pickle", ".sh", ".doc", ".docx",
})
IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})

# A single file larger than this is not read: an uncompressed 8-bit RGB image at Pillow's
# pixel limit (MAX_IMAGE_PIXELS) is 256 MiB, and this leaves room for 16 bits or alpha; a
# bigger file is no usable image, and reading it costs its size in memory.
MAX_FILE_BYTES = 512 << 20

# What reading a file or archive member can raise: OS errors, damaged archives (bad CRC or
# compressed data, early end), and members zipfile cannot read (encrypted: RuntimeError;
# unsupported compression: NotImplementedError).
READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, tarfile.TarError,
               NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class Entry:
    """One candidate file: its path parts below the source root, how to read its bytes, and an
    error already known from listing (then `read` is None)."""

    parts: tuple[str, ...]
    display: str  # printable path for messages and skipped_files.txt
    read: Callable[[], bytes] | None
    error: str | None = None
    stamp: tuple[int, ...] = ()  # (size, mtime_ns, mode) for folder files: the cache fingerprint
    size: int = 0  # bytes `read` returns, as listed: what reading it holds in memory


def printable(path: str) -> str:
    """A path that can be printed and written as UTF-8: undecodable bytes of a non-UTF-8 file
    name (kept by Python as surrogate escapes) become backslash escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES or Path(name).suffix.lower() in IGNORED_SUFFIXES


def list_folder(root: Path, exclude: Path | None = None) -> list[Entry]:
    """All candidate files below `root`, sorted by path, leaving out the folder `exclude` (the
    cache, should it sit inside the data). Directory symlinks are followed; one that leads back
    to a directory already being walked is a symlink loop."""
    entries: list[Entry] = []
    excluded = _identity(exclude) if exclude is not None else None
    start = root.stat()
    stack: list[tuple[Path, tuple[str, ...], frozenset[tuple[int, int]]]] = [
        (root, (), frozenset({(start.st_dev, start.st_ino)}))
    ]
    while stack:
        folder, rel, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda d: d.name)
        except OSError as e:
            entries.append(Entry(rel, printable(str(folder)), None, _os_reason(e, folder)))
            continue
        for child in children:
            if is_ignored(child.name):
                continue
            parts, display = (*rel, child.name), printable(child.path)
            try:
                st = os.stat(child.path)  # follows symlinks
            except OSError as e:
                entries.append(Entry(parts, display, None, _os_reason(e, Path(child.path))))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key == excluded:
                    continue
                if key in ancestors:
                    entries.append(Entry(parts, display, None, f"{SYMLINK_LOOP}: leads back to a parent folder"))
                else:
                    stack.append((Path(child.path), parts, ancestors | {key}))
            elif not stat.S_ISREG(st.st_mode):
                entries.append(Entry(parts, display, None, f"{NOT_A_FILE}: {_file_type(st.st_mode)}"))
            elif error := _size_error(st.st_size, "file"):
                entries.append(Entry(parts, display, None, error))
            else:
                entries.append(Entry(parts, display, _file_reader(child.path),
                                     stamp=(st.st_size, st.st_mtime_ns, st.st_mode), size=st.st_size))
    entries.sort(key=lambda e: e.parts)
    return entries


def list_zip(archive: zipfile.ZipFile, origin: Path) -> list[Entry]:
    """All candidate members of an open zip archive, sorted by path."""
    entries = []
    for info in archive.infolist():
        parts = _member_parts(info.filename)
        if info.is_dir() or not parts or any(is_ignored(p) for p in parts):
            continue
        display = printable(f"{origin}/{info.filename}")
        if error := _size_error(info.file_size, "member"):
            entries.append(Entry(parts, display, None, error))
        else:
            entries.append(Entry(parts, display, _zip_reader(archive, info), size=info.file_size))
    entries.sort(key=lambda e: e.parts)
    return entries


def list_tar(archive: tarfile.TarFile, origin: Path) -> list[Entry]:
    """All candidate members of an open tar archive, in archive order (reading a compressed
    tar out of order would decompress it again for every backward step)."""
    entries = []
    for member in archive.getmembers():
        parts = _member_parts(member.name)
        if member.isdir() or not parts or any(is_ignored(p) for p in parts):
            continue
        display = printable(f"{origin}/{member.name}")
        if member.issym() or member.islnk():
            entries.append(Entry(parts, display, None, f"{NOT_A_FILE}: link inside the archive"))
        elif not member.isfile():
            entries.append(Entry(parts, display, None, f"{NOT_A_FILE}: special file in the archive"))
        elif error := _size_error(member.size, "member"):
            entries.append(Entry(parts, display, None, error))
        else:
            entries.append(Entry(parts, display, _tar_reader(archive, member), size=member.size))
    return entries


def _size_error(size: int, what: str) -> str | None:
    """Why a file of `size` bytes is skipped unread, if it is. Empty files are known to be no
    image without reading them, and are left out of the decoder's output size (an archive of
    thousands of empty members would otherwise reserve a row of cache for each)."""
    if size == 0:
        return EMPTY
    if size > MAX_FILE_BYTES:
        return f"{TOO_LARGE}: {what} of {size} bytes"
    return None


def read_error(e: BaseException, where: str) -> str:
    """The skip reason for a file whose bytes could not be read (one of READ_ERRORS)."""
    if isinstance(e, OSError):
        return _os_reason(e, Path(where))
    if isinstance(e, RuntimeError) and "encrypted" in str(e):
        return f"{UNREADABLE}: encrypted archive member"
    return f"{UNREADABLE}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _os_reason(e: OSError, path: Path) -> str:
    if e.errno == errno.ELOOP:
        return f"{SYMLINK_LOOP}: {e.strerror}"
    if e.errno == errno.ENOENT and path.is_symlink():
        return f"{BROKEN_LINK}: target {printable(os.readlink(path))} does not exist"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{UNREADABLE}: permission denied"
    return f"{UNREADABLE}: {e.strerror or e}"


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def _member_parts(name: str) -> tuple[str, ...]:
    # Archive paths use "/"; empty and "." components are dropped, ".." is kept literal and
    # harmless because members are only read, never extracted.
    return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def _bounded(f: BinaryIO) -> bytes:
    """At most MAX_FILE_BYTES from `f`: a file that grew after it was listed is not read whole."""
    data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(errno.EFBIG, f"file grew past {MAX_FILE_BYTES} bytes since it was listed")
    return data


def _file_reader(path: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb") as f:
            return _bounded(f)

    return read


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Callable[[], bytes]:
    # zipfile stops at the member's declared size (and checks its CRC), the size listed.
    return lambda: archive.read(info)


def _tar_reader(archive: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], bytes]:
    def read() -> bytes:
        f = archive.extractfile(member)
        if f is None:
            raise tarfile.TarError("not a regular member")
        with f:
            return f.read()

    return read
