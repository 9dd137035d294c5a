"""The command line's host memory settings: large tensors freed at one step are reused at the
next without the kernel faulting in fresh pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

# Allocate, touch and free a 64 MB tensor (the small CNN's first activation at batch 512, two
# views, bf16: above glibc's 32 MB mmap ceiling) six times; report the page faults of the last four
# (glibc settles on two blocks it alternates between, so the first two rounds fault in both).
PROBE = """
import json, os, resource, sys
from simclr.host_memory import reuse_host_memory
took = reuse_host_memory() if sys.argv[1] == "reuse" else None
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    x = torch.empty(1024, 32, 32, 32, dtype=torch.bfloat16).fill_(1.0); del x
before = faults()
for _ in range(4):
    x = torch.empty(1024, 32, 32, 32, dtype=torch.bfloat16).fill_(1.0); del x
print(json.dumps({"faults": faults() - before, "took": took, "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def probe(mode: str, **env: str) -> dict[str, Any]:
    ours = ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")
    clean = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**clean, **env})
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings are for Linux")
def test_freed_tensors_are_reused_without_new_page_faults() -> None:
    assert probe("reuse")["thp"] == "1"  # huge pages unless the user says otherwise
    # Counted on 4 KB pages (huge pages would make a fresh mapping 32 faults, not 16,384): glibc's
    # settings alone must keep the freed 64 MB block. By default it is mapped afresh and faulted
    # in each time (65,500 faults in the four rounds); with a 32 MB mmap ceiling it was too.
    default = probe("default", THP_MEM_ALLOC_ENABLE="0")
    reused = probe("reuse", THP_MEM_ALLOC_ENABLE="0")
    assert reused["took"] is True
    assert isinstance(default["faults"], int) and isinstance(reused["faults"], int)
    assert default["faults"] > 40_000 and reused["faults"] < 1000, (default, reused)


@pytest.mark.parametrize("setting", ["MALLOC_MMAP_THRESHOLD_=1000000", "MALLOC_MMAP_MAX_=65536",
                                     "MALLOC_TRIM_THRESHOLD_=1000000", "GLIBC_TUNABLES=glibc.malloc.mmap_max=9"])
def test_settings_the_user_made_are_kept(setting: str) -> None:
    name, value = setting.split("=", 1)
    kept = probe("reuse", THP_MEM_ALLOC_ENABLE="0", **{name: value})
    assert kept["thp"] == "0" and kept["took"] is False
