"""Labels from a folder layout, the same for folders and archives.

From the top, a level holding only one folder is descended into (`train/` inside a zip); a
level holding split folders (`train/` with `test/`, `val/`, ...) is descended into the
requested split (train by default). At the level reached:

- no files of its own, two or more subfolders, and every file exactly one folder down
  (`<class>/<image>`): labelled, the subfolders are the classes in sorted order;
- anything else (flat, nested deeper, or mixed): unlabelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simclr.errors import UserError

# Split folder names, by the split they serve.
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "test": ("test", "testing", "val", "valid", "validation"),
    "val": ("val", "valid", "validation", "test", "testing"),
    "unlabeled": ("unlabeled", "unlabelled"),
}


class NoSplit(UserError):
    """The source has no folder for the split asked for."""


@dataclass
class Layout:
    """Which of the listed paths are used and their labels."""

    index: list[int]  # positions in the listed paths
    labels: list[int] | None
    classes: list[str] | None
    prefix: tuple[str, ...]  # the folders descended into


def infer_layout(paths: Sequence[tuple[str, ...]], split: str | None, origin: str) -> Layout:
    """Apply the layout rules to file paths (tuples of path parts below the source root)."""
    prefix: tuple[str, ...] = ()
    chosen = list(range(len(paths)))
    split_used = False
    while True:
        depth = len(prefix)
        has_files = any(len(paths[i]) == depth + 1 for i in chosen)
        folders = sorted({paths[i][depth] for i in chosen if len(paths[i]) > depth + 1})
        step: str | None = None
        if not has_files and len(folders) == 1:
            step = folders[0]
            if _split_name(step):
                if split is not None and not _serves(step, split):
                    raise NoSplit(f"{origin} has no {split} split (only {step}/)")
                split_used = True
        elif not has_files and _is_split_level(folders):
            wanted = split or "train"
            step = next((f for name in SPLIT_FOLDERS.get(wanted, (wanted,)) for f in folders
                         if f.lower() == name), None)
            if step is None:
                raise NoSplit(f"{origin} has no {wanted} split (found {', '.join(folders)})")
            split_used = True
        if step is None:
            break
        prefix = (*prefix, step)
        chosen = [i for i in chosen if paths[i][depth] == step]
    if split is not None and not split_used:
        raise NoSplit(f"{origin} has no {split} split: no train/, test/ or val/ folders")
    depth = len(prefix)
    if folders and not has_files and len(folders) >= 2 and all(len(paths[i]) == depth + 2 for i in chosen):
        classes = folders
        label_of = {name: k for k, name in enumerate(classes)}
        return Layout(chosen, [label_of[paths[i][depth]] for i in chosen], classes, prefix)
    return Layout(chosen, None, None, prefix)


def _split_name(folder: str) -> bool:
    return any(folder.lower() in names for names in SPLIT_FOLDERS.values())


def _serves(folder: str, split: str) -> bool:
    return folder.lower() in SPLIT_FOLDERS.get(split, (split,))


def _is_split_level(folders: list[str]) -> bool:
    """train/ next to test/, val/ or unlabeled/ (other folders may sit beside them)."""
    names = {f.lower() for f in folders}
    others = set(SPLIT_FOLDERS["test"]) | set(SPLIT_FOLDERS["unlabeled"])
    return bool(names & set(SPLIT_FOLDERS["train"])) and bool(names & others)
