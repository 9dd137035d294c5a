"""The SIMCLR_* environment variables, read and checked: a bad value is one `error:` line that
names the variable and what it accepts, not a traceback or a silent fallback."""

from __future__ import annotations

import os
from pathlib import Path

from simclr.errors import UserError


def env_dir(name: str) -> Path | None:
    """$name as a folder (`~` expanded); None when unset or empty. A value naming something
    other than a folder is refused: the data and caches under it could never be there."""
    value = os.environ.get(name)
    if not value:
        return None
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{name}={value} is not a folder: point it at a folder (created if missing) or unset it")
    return path


def env_flag(name: str) -> bool | None:
    """$name as 0 or 1; None when unset or empty."""
    value = os.environ.get(name)
    if not value:
        return None
    if value.strip() not in ("0", "1"):
        raise UserError(f"{name}={value!r}: expected 0 or 1, or unset it")
    return value.strip() == "1"
