"""Size, training memory and CPU speed of the registered encoders (`python benchmarks/encoders.py`).

For each encoder: parameters (millions); activation memory per image that a training step
keeps for the backward pass (the tensors autograd saves, counted once each), at 32 px with the
CIFAR stem and at 224 px with the ImageNet stem; and the CPU time of one forward + backward
pass per image at 32 px (batch 16, after a warm-up, median of `--repeats`). Prints a Markdown table
and writes benchmarks/results/encoders.json (docs/simclr-v2.md's table is generated from it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from simclr import build_encoder

ENCODERS = ("small_cnn", "resnet18", "resnet18_w2", "resnet50", "resnet50_sk", "resnet50_w2", "resnet50_w2_sk")


def saved_activation_bytes(encoder: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for backward in one training-mode forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):  # weights are counted as parameters, not activations
            seen[(t.untyped_storage().data_ptr(), t.storage_offset())] = t.numel() * t.element_size()
        return t

    encoder.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        encoder(x.requires_grad_())
    return sum(seen.values())


def seconds_per_image(encoder: torch.nn.Module, size: int, batch: int, repeats: int) -> float:
    x = torch.rand(batch, 3, size, size)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        encoder(x).square().mean().backward()
        if i:  # the first pass is a warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default=str(Path(__file__).parent / "results" / "encoders.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| encoder | params (M) | h size | saved activations / image, 32 px | at 224 px | CPU ms / image |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in ENCODERS:
        small = build_encoder(name, 3, 32)
        params = sum(p.numel() for p in small.parameters()) / 1e6
        mem32 = saved_activation_bytes(small, torch.rand(2, 3, 32, 32)) / 2 / 2**20
        mem224 = saved_activation_bytes(build_encoder(name, 3, 224), torch.rand(2, 3, 224, 224)) / 2 / 2**20
        ms = 1000 * seconds_per_image(small, 32, 16, args.repeats)
        row = f"| `{name}` | {params:.1f} | {small.out_dim} | {mem32:.2f} MiB | {mem224:.0f} MiB | {ms:.1f} |"
        print(row, flush=True)
        rows.append({"encoder": name, "params_m": params, "h_size": small.out_dim, "activations_mib_32": mem32,
                     "activations_mib_224": mem224, "cpu_ms_per_image_32": ms})
    machine = {"cores": os.cpu_count(), "threads": args.threads, "load_1min": os.getloadavg()[0]}
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
               "machine": machine, "rows": rows}
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
