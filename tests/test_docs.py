"""The documentation's tables are the committed results files' (benchmarks/tables.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_table_matches_its_results_file() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tables.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_table_block_names_a_known_table() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tables
    finally:
        sys.path.pop(0)
    names = [m.group(2) for path in tables.DOCS for m in tables.BLOCK.finditer(path.read_text())]
    assert names and set(names) <= set(tables.TABLES)
