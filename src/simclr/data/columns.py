"""Finding a column of a tabular source (CSV/TSV header, JSONL keys) by name, shared by the
series, text and paired readers so that one file reads the same whichever modality reads it."""

from __future__ import annotations

from pathlib import Path

from simclr.errors import UserError

# The label column, when none is configured: the first of these present (case-insensitive).
# One tuple for every modality, so a labelled CSV does not lose its labels by switching modality.
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y")


def first_column(names: list[str], candidates: tuple[str, ...]) -> int | None:
    """The index in `names` of the first of `candidates` present, matching case-insensitively and
    without surrounding spaces; None when none is."""
    lower = [n.strip().lower() for n in names]
    return next((lower.index(n) for n in candidates if n in lower), None)


def pick_column(names: list[str], wanted: str | None, candidates: tuple[str, ...], path: Path | str,
                key: str) -> int | None:
    """The index in `names` of the column `wanted` (the setting `key` names it) or, when nothing is
    configured, `first_column(names, candidates)`. A configured name that is absent is an error
    naming the file and its columns: a typo must not silently drop the labels."""
    if wanted is None:
        return first_column(names, candidates)
    found = first_column(names, (wanted.strip().lower(),))
    if found is None:
        columns = ", ".join(names) if names else "none (no header row)"
        raise UserError(f"{path}: no column {wanted!r} ({key}); columns: {columns}")
    return found


def numeric_field(field: str) -> bool:
    """A CSV field a series may hold: a number, or empty / `?` / NaN for a missing value."""
    try:
        float(field)
    except ValueError:
        return field.strip() in ("", "?", "nan", "NaN")
    return True


def header_names(path: Path) -> list[str]:
    """The column names of a CSV header, or the keys of a JSONL file's first object."""
    import csv
    import json

    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if path.suffix.lower() == ".jsonl":
        try:
            return list(json.loads(first)) if first.strip().startswith("{") else []
        except json.JSONDecodeError:
            return []
    return next(csv.reader([first]), [])
