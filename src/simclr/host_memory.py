"""How CPU tensors get their memory: the command line asks for pages that are reused.

Every training step allocates and frees the same large tensors (two views of the batch,
activations, gradients). By default glibc maps each block of more than a few hundred KB afresh
and hands it back on free, so the kernel faults in and zeroes every 4 KB page of it again at
the next step. Two standard settings avoid that: PyTorch's THP_MEM_ALLOC_ENABLE=1 (tensors of
2 MB and more on transparent huge pages) and glibc's mmap and trim thresholds (freed blocks of
up to 32 MB stay in the heap for the next step). Measured on 2 cores: one fused colour-jitter
stage at 96 px 40 -> 11 ms; `simclr train` with the small CNN at batch 512 about 1.15x.
Blocks above glibc's 32 MB ceiling (the small CNN's first activations at batch 512) are kept
by simclr/block_cache.py instead, where a C++ compiler is at hand.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed on 64-bit systems
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GB freed at the top of the heap


def reuse_host_memory() -> bool:
    """Apply both settings to this process and its children, unless the user set them (the
    environment variables THP_MEM_ALLOC_ENABLE, MALLOC_MMAP_THRESHOLD_), and install the
    block cache (SIMCLR_BLOCK_CACHE_MIB=0 leaves it out). Call it before the first large
    tensor: PyTorch reads its variable once, at the first allocation. True if glibc took the
    thresholds (Linux); elsewhere only the PyTorch variable is set."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    from simclr import block_cache  # imports torch: after its variable is set

    block_cache.install()
    return glibc_thresholds()


def glibc_thresholds() -> bool:
    """glibc's mmap and trim thresholds, unless the user set MALLOC_MMAP_THRESHOLD_."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, say): nothing to set
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
