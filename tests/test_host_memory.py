"""The command line's host memory settings: large tensors freed at one step are reused at the
next without the kernel faulting in fresh pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

# Allocate, touch and free a 28 MB tensor (two 96 px views of 128 images) five times; report the
# page faults of the last four.
PROBE = """
import json, os, resource, sys
from simclr.host_memory import reuse_host_memory
took = reuse_host_memory() if sys.argv[1] == "reuse" else None
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.empty(256, 3, 96, 96).fill_(1.0); del x
before = faults()
for _ in range(4):
    x = torch.empty(256, 3, 96, 96).fill_(1.0); del x
print(json.dumps({"faults": faults() - before, "took": took, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def probe(mode: str, **env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env})
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings are for Linux")
def test_freed_tensors_are_reused_without_new_page_faults() -> None:
    default = probe("default")
    # The fewest of three probes: on a loaded machine the kernel now and then hands a few
    # huge pages back as 4 KB ones (2,102 faults in about 1 probe of 10 under load, 0-2 else).
    tries = [probe("reuse") for _ in range(3)]
    reused = min(tries, key=lambda r: int(r["faults"]))
    assert reused["took"] is True and reused["thp"] == "1"
    # 28 MB is 7,000 pages of 4 KB: by default many are faulted in anew each time (6,800 or
    # 13,800 in the four rounds on the 2-core machine, glibc's adaptive threshold saving some).
    assert isinstance(default["faults"], int) and isinstance(reused["faults"], int)
    assert default["faults"] > 4000 and reused["faults"] < default["faults"] / 5, (default, tries)


def test_settings_the_user_made_are_kept() -> None:
    kept = probe("reuse", THP_MEM_ALLOC_ENABLE="0", MALLOC_MMAP_THRESHOLD_="1000000")
    assert kept["thp"] == "0" and kept["took"] is False
