"""Reporting skipped files: a one-line count by reason, and the full list for the run folder."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from simclr.data.images import reason_kind
from simclr.errors import UserError


def skip_counts(skipped: Sequence[tuple[str, str]]) -> dict[str, int]:
    """How many files were skipped for each kind of reason, most common first."""
    return dict(Counter(reason_kind(reason) for _, reason in skipped).most_common())


def skip_summary(skipped: Sequence[tuple[str, str]]) -> str:
    """E.g. "3 files skipped: 2 not an image, 1 empty file" ("" when nothing was skipped)."""
    if not skipped:
        return ""
    counts = ", ".join(f"{n} {kind}" for kind, n in skip_counts(skipped).items())
    noun = "file" if len(skipped) == 1 else "files"
    return f"{len(skipped)} {noun} skipped: {counts}"


def write_skipped(path: Path, skipped: Sequence[tuple[str, str]]) -> None:
    """Write every skipped file as "<path>\\t<reason>", one per line (an empty file when
    nothing was skipped). Paths are printable already (see `listing.printable`)."""
    path.write_text("".join(f"{p}\t{reason}\n" for p, reason in skipped), encoding="utf-8")


def refuse_if_strict(strict: bool, skipped: Sequence[tuple[str, str]]) -> None:
    """With data.strict, the first skipped file is an error (also when a cache hit reports it)."""
    if strict and skipped:
        where, reason = skipped[0]
        raise UserError(f"{where}: {reason} (data.strict is on: fix or remove the file)")
