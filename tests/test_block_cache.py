"""The CPU block cache (simclr/block_cache.py): large blocks come back for the next tensor of
their size, the idle ones stay under the limit, values and training are unchanged, and
without a compiler nothing changes. Each case runs in its own process: the allocator is
process-wide."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the block cache is built for Linux only"),
    pytest.mark.skipif(not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")),
                       reason="no C++ compiler to build the block cache"),
]

MIB = 1 << 20


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache-home")


def run(code: str, cache_home: Path, **env: str) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; it prints one JSON line last."""
    clean = {k: v for k, v in os.environ.items() if k not in ("SIMCLR_BLOCK_CACHE_MIB", "CXX")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**clean, "SIMCLR_CACHE": str(cache_home / "simclr"), **env})
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


REUSE = """
import json, torch
from simclr import block_cache
ok = block_cache.install(max_idle_bytes=64 << 20)
a = torch.ones(3 << 20, dtype=torch.uint8); first = a.data_ptr(); del a
b = torch.zeros(3 << 20, dtype=torch.uint8)  # the same 4 MB block, zeroed as asked
small = torch.ones(1000); small_ptr = small.data_ptr(); del small
print(json.dumps({"ok": ok, "same": b.data_ptr() == first, "zeros": int(b.sum()), "state": block_cache.STATE,
                  **block_cache.stats()}))
"""


def test_a_freed_large_block_is_handed_out_again(cache_home: Path) -> None:
    r = run(REUSE, cache_home)
    assert r["ok"] and r["state"].startswith("on"), r
    assert r["same"] and r["zeros"] == 0
    assert r["hits"] == 1 and r["misses"] >= 1 and r["live_blocks"] >= 1
    assert list(cache_home.glob("simclr/block_cache-*.so"))  # built once, for the next process


BOUND = """
import json, torch
from simclr import block_cache
block_cache.install(max_idle_bytes=16 << 20)
blocks = [torch.empty(mb << 20, dtype=torch.uint8) for mb in (2, 4, 6, 8, 10)]  # 30 MB
ptrs = [t.data_ptr() for t in blocks]
for i in range(5):  # freed in this order: 2, 4, 6, 8, 10 MB
    blocks[i] = None
before = block_cache.stats()
newest = torch.empty(10 << 20, dtype=torch.uint8)  # kept: the most recently freed
after_newest = block_cache.stats()
oldest = torch.empty(2 << 20, dtype=torch.uint8)  # handed back to the system: mapped afresh
after_oldest = block_cache.stats()
print(json.dumps({"idle": before["idle_bytes"], "newest_reused": newest.data_ptr() == ptrs[4],
                  "newest_hit": after_newest["hits"] - before["hits"],
                  "oldest_missed": after_oldest["misses"] - after_newest["misses"]}))
"""


RETURNED = """
import json, torch
from simclr import block_cache, host_memory
host_memory.glibc_thresholds()  # as the command line sets them: glibc would keep a 16 MB block
block_cache.install(max_idle_bytes=8 << 20)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
x = torch.ones(16 << 20, dtype=torch.uint8)
held = rss()
del x  # over the limit: unmapped, not kept in glibc's heap
print(json.dumps({"dropped": held - rss(), **block_cache.stats()}))
"""


def test_a_block_over_the_limit_leaves_the_process(cache_home: Path) -> None:
    r = run(RETURNED, cache_home)
    assert r["dropped"] >= 15 * MIB and r["idle_bytes"] == 0, r  # through glibc: 0 dropped


def test_idle_blocks_stay_under_the_limit_oldest_handed_back_first(cache_home: Path) -> None:
    r = run(BOUND, cache_home)
    # 2+4+6 kept; 8 makes 20 > 16 MB: 2 and 4 go; 10 makes 24: 6 and 8 go.
    assert r["idle"] == 10 * MIB, r
    assert r["newest_reused"] and r["newest_hit"] == 1 and r["oldest_missed"] == 1


STEPS = """
import hashlib, json, sys, torch
from simclr import block_cache
if sys.argv[1] == "cache":
    assert block_cache.install()
from simclr.model import build_model
from simclr.optim import build_optimizer
from simclr.train import train_step
torch.manual_seed(0)
model = build_model("small_cnn", 3, 32).to(memory_format=torch.channels_last)
opt = build_optimizer(model, "lars", 0.6, 1e-6)
losses = []
for step in range(3):
    x1, x2 = (torch.rand(128, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in range(2))
    losses.append(train_step(model, opt, x1, x2, 0.5).item())
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print(json.dumps({"losses": losses, "weights": digest, **block_cache.stats()}))
"""


def test_training_steps_are_bit_identical_with_the_cache(cache_home: Path, tmp_path: Path) -> None:
    script = tmp_path / "steps.py"
    script.write_text(STEPS)
    plain = run(f"import sys; sys.argv = ['', 'plain']; exec(open({str(script)!r}).read())", cache_home)
    cached = run(f"import sys; sys.argv = ['', 'cache']; exec(open({str(script)!r}).read())", cache_home)
    assert cached["hits"] > 0, cached  # the activations of steps 2 and 3 reused those of step 1
    assert cached["losses"] == plain["losses"] and cached["weights"] == plain["weights"]


FORK = """
import json, torch
from simclr import block_cache
block_cache.install()
class Big(torch.utils.data.Dataset):
    def __len__(self): return 8
    def __getitem__(self, i): return torch.full((1 << 20,), float(i))  # 4 MB each
loader = torch.utils.data.DataLoader(Big(), batch_size=2, num_workers=2, multiprocessing_context="fork")
sums = [float(b.sum()) for b in loader]
print(json.dumps({"sums": sums}))
"""


def test_forked_workers_allocate_through_the_cache(cache_home: Path) -> None:
    r = run(FORK, cache_home)
    assert r["sums"] == [float((2 * k + 2 * k + 1) << 20) for k in range(4)]


STATE = """
import json
from simclr import block_cache
print(json.dumps({"ok": block_cache.install(), "state": block_cache.STATE}))
"""


def test_without_a_compiler_or_when_turned_off_nothing_changes(cache_home: Path, tmp_path: Path) -> None:
    missing = run(STATE, tmp_path, CXX=str(tmp_path / "no-such-c++"))
    assert not missing["ok"] and "no-such-c++" in missing["state"], missing
    off = run(STATE, cache_home, SIMCLR_BLOCK_CACHE_MIB="0")
    assert not off["ok"] and "SIMCLR_BLOCK_CACHE_MIB=0" in off["state"]


def test_concurrent_first_builds_both_succeed(tmp_path: Path) -> None:
    """torchrun starts every rank at once on an empty cache: each builds privately, then renames."""
    env = {**os.environ, "SIMCLR_CACHE": str(tmp_path / "simclr")}
    procs = [subprocess.Popen([sys.executable, "-c", STATE], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    assert all(o["ok"] for o in outs), outs
    assert len(list((tmp_path / "simclr").glob("block_cache-*.so"))) == 1
    assert not [p for p in (tmp_path / "simclr").iterdir() if not p.name.endswith(".so")]  # no leftovers
