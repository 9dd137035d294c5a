"""Every `simclr ...` command shown in README.md and docs/ parses with today's command line, and
every key=value it sets is a config key with a valid value, so no example can rot unnoticed
(the README's quick start and Python example also run for real: tests/test_readme.py). The
commands' data paths are placeholders (./photos, runs/mine) and are not read here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from simclr.cli import parse
from simclr.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A command line of a code block: indented 4 spaces or inside a fence, possibly after env vars,
# torchrun's options or a prompt; continued with a trailing backslash.
START = re.compile(r"(?:^|\s)(?:-m\s+)?simclr\s+(train|eval|embed|export|report|distill|config)\b")


def commands() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for page in PAGES:
        lines = page.read_text().splitlines()
        fenced = False
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.strip().startswith("```"):
                fenced = not fenced
            code = fenced or line.startswith("    ")
            match = START.search(line) if code else None
            if match:
                text = line[match.start():].strip()
                while text.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text = text[:-1] + " " + lines[i].strip()
                found.append((f"{page.name}:{i + 1}", text))
            i += 1
    return found


def argv_of(text: str) -> list[str]:
    """The arguments after `simclr`, without a trailing comment."""
    words = shlex.split(text, comments=True)
    return words[words.index("simclr") + 1:]


COMMANDS = commands()


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 40  # the quick starts of every page


@pytest.mark.parametrize(("where", "text"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_parses_and_its_settings_are_valid(where: str, text: str) -> None:
    args = parse(argv_of(text))
    overrides = getattr(args, "overrides", [])
    if args.command == "train":
        flags = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "time_budget": args.time}
        overrides = [*overrides, *(f"{k}={v}" for k, v in flags.items() if v is not None)]
        load_config(args.config, overrides)  # unknown keys, bad values and missing recipes fail here
    elif overrides:
        load_config(None, overrides)
