"""`simclr config`: every config key with its default, type and help, read from the typed
config itself (the dataclasses and the comments beside their fields), so it cannot drift."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import io
import textwrap
import tokenize
from typing import Any

from simclr.config import with_sections


@dataclasses.dataclass(frozen=True)
class Key:
    name: str  # dotted: optim.lr
    type: str
    default: Any
    help: str


def field_help(cls: type) -> dict[str, str]:
    """The comment of each field of dataclass `cls`: the one on its line, else the comment
    lines just above it."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        text = comments.get(node.lineno, "")
        if not text:  # a block of comment lines above the field
            above: list[str] = []
            row = node.lineno - 1
            while row in comments and lines[row - 1].strip().startswith("#"):
                above.insert(0, comments[row])
                row -= 1
            text = " ".join(above)
        found[node.target.id] = text
    return found


def keys(cls: type | None = None, prefix: str = "") -> list[Key]:
    """Every leaf key under dataclass `cls` (default: the config with all modality sections)."""
    cls = cls or with_sections()
    out: list[Key] = []
    helps: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # Config's own fields, then the sections the modalities add
        if dataclasses.is_dataclass(base) and base.__module__ != "builtins":
            with contextlib.suppress(OSError, TypeError):  # a class without source: no help
                helps.update(field_help(base))
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out += keys(type(value), f"{prefix}{f.name}.")
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out.append(Key(prefix + f.name, kind, value, helps.get(f.name, "")))
    return out


def render(entries: list[Key]) -> str:
    """One block per key: `name: type = default` and its help, indented."""
    blocks = []
    for k in entries:
        head = f"{k.name}: {k.type} = {k.default!r}"
        text = textwrap.fill(k.help, 100, initial_indent="    ", subsequent_indent="    ")
        blocks.append(head + (f"\n{text}" if k.help else ""))
    return "\n".join(blocks)


def epilog(names: list[str]) -> str:
    """The `--help` footer of a command: its common keys, one line each (`simclr config` has all)."""
    found = {k.name: k for k in keys()}
    width = max(len(n) for n in names)
    rows = [f"  {n:<{width}}  {found[n].help.split('. ')[0][:90]}" for n in names]
    return "common keys (key=value; `simclr config` lists all of them):\n" + "\n".join(rows)
