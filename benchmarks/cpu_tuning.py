"""CPU tuning, measured: SimCLR pretraining steps under the plain allocator (glibc malloc) against
jemalloc and tcmalloc loaded with LD_PRELOAD, jemalloc with the MALLOC_CONF of PyTorch's CPU launcher
plus page purging off, and one OpenMP thread instead of torch's default. Nothing here changes the
library: every contender is a fresh process that differs only in its environment, as a user sets it.

The steps are `simclr train`'s: a batch of uint8 images drawn at random, two views by ImageAugment
(the CIFAR recipe), NHWC inputs and weights, `simclr.training.train_step` (bf16 autocast where
`precision=auto` picks it) with LARS, the loss checked for finiteness. Two workloads: a small CNN
at batch 512 and ResNet-18 with the CIFAR stem at batch 256, on random 32 px RGB images.

Rounds interleave the contenders (the order reversed every other round) so that a slow spell of
the machine falls on all of them; each figure is the median over rounds, each ratio the median of
the per-round ratios against the plain allocator of the same round. A process that another job
starved of its cores is run again (see MIN_BUSY).

    .venv/bin/python benchmarks/cpu_tuning.py            # the full run (about 7 minutes on 2 idle cores)
    .venv/bin/python benchmarks/cpu_tuning.py --quick    # a smoke test: one round, a few steps

The allocators are found at the usual library paths, or named by JEMALLOC_LIB / TCMALLOC_LIB; a
contender whose library is missing is skipped and recorded as such.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "cpu_tuning.json"

# What torch's own CPU launcher sets with --enable-jemalloc (torch/backends/xeon/run_cpu.py), with page
# purging off (dirty/muzzy decay -1: freed pages stay with the process) as Intel's PyTorch recipes
# add it (they write 9000000000 ms, which amounts to the same).
MALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"

# Variables that would change a contender behind its back: cleared for every child, then set per contender.
CLEARED_ENV = ("LD_PRELOAD", "MALLOC_CONF", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
            "/usr/local/lib64")
LIB_NAMES = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
}
INSTALL_HINT = "apt-get install libjemalloc2 libtcmalloc-minimal4, or conda install -c conda-forge jemalloc gperftools"

WORKLOADS: dict[str, dict[str, Any]] = {
    # name: encoder, batch, (warm-up steps, timed steps, rounds) for the full run and for --quick
    "small_cnn": {"encoder": "small_cnn", "batch": 512, "full": (2, 5, 3), "quick": (1, 2, 1)},
    "resnet18": {"encoder": "resnet18", "batch": 256, "full": (1, 2, 2), "quick": (1, 1, 1)},
}
# Which contenders each workload runs: one thread on ResNet-18 would double the run for a
# figure the small CNN already gives.
CONTENDERS_OF = {
    "small_cnn": ("plain", "jemalloc", "jemalloc+MALLOC_CONF", "tcmalloc", "OMP_NUM_THREADS=1"),
    "resnet18": ("plain", "jemalloc", "jemalloc+MALLOC_CONF", "tcmalloc"),
}
IMAGE_SIZE = 32
# A child whose threads got less than this share of their cores over the timed steps (another job
# took them) is run again, up to RETRIES times; its figures are kept in the JSON as `contended`.
MIN_BUSY, RETRIES = 0.85, 2
DATASET_SIZE = 4096  # random uint8 images the batches are drawn from (12 MiB)


# ---------------------------------------------------------------- the child: one contender, one workload


def rss_mib() -> float | None:
    """This process's resident memory now (VmRSS), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def jemalloc_options(lib: str) -> dict[str, Any]:
    """The options the preloaded jemalloc runs with (mallctl), to show that MALLOC_CONF took."""
    mallctl = ctypes.CDLL(lib).mallctl
    out: dict[str, Any] = {}
    for name, ctype in (("opt.oversize_threshold", ctypes.c_size_t), ("opt.background_thread", ctypes.c_bool),
                        ("opt.metadata_thp", ctypes.c_char_p), ("opt.dirty_decay_ms", ctypes.c_ssize_t),
                        ("opt.muzzy_decay_ms", ctypes.c_ssize_t)):
        value, size = ctype(), ctypes.c_size_t(ctypes.sizeof(ctype))
        if mallctl(name.encode(), ctypes.byref(value), ctypes.byref(size), None, 0) == 0:
            v = value.value
            out[name.removeprefix("opt.")] = v.decode() if isinstance(v, bytes) else v
    return out


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time `spec["steps"]` training steps after `spec["warmup"]`, in this process."""
    import torch

    from simclr import ImageAugment, build_model, build_optimizer, train_step, two_views

    after_import = rss_mib()  # torch's libraries alone: about 1 GiB, the same under every allocator
    torch.manual_seed(0)
    batch = spec["batch"]
    model = build_model(spec["encoder"], 3, IMAGE_SIZE).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, "lars", 0.3 * batch / 256, 1e-6)  # as `simclr train` groups it
    augment = ImageAugment(size=IMAGE_SIZE, color_jitter_strength=0.5, blur_prob=0.0)  # the CIFAR recipe
    images = torch.randint(0, 256, (DATASET_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    order_gen, aug_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    bf16 = spec["bf16"]

    def step() -> float:
        start = time.perf_counter()
        x = images[torch.randint(DATASET_SIZE, (batch,), generator=order_gen)]
        x1, x2 = (v.contiguous(memory_format=torch.channels_last) for v in two_views(augment, x, aug_gen))
        loss = train_step(model, optimizer, x1, x2, 0.5, bf16)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()}")
        return time.perf_counter() - start

    warmup = [step() for _ in range(spec["warmup"])]
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    times = [step() for _ in range(spec["steps"])]
    cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    # CPU seconds per second over the timed steps: near the thread count on an idle machine, lower
    # when other processes took the cores.
    busy = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / (wall1 - wall0)
    median = statistics.median(times)
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    preload = os.environ.get("LD_PRELOAD", "")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "images_per_s": batch / median,
        "median_step_s": median,
        "step_s": times,
        "warmup_s": warmup,
        "peak_rss_mib": peak,
        "rss_after_import_mib": after_import,
        "peak_rss_above_import_mib": None if after_import is None else peak - after_import,
        "rss_at_end_mib": rss_mib(),  # what the allocator kept after the last step
        "cpu_busy": busy,
        "torch_threads": torch.get_num_threads(),
        "preloaded": bool(preload) and os.path.realpath(preload) in maps,
    }
    if result["preloaded"] and "jemalloc" in preload:
        result["jemalloc_options"] = jemalloc_options(preload)
    return result


# ---------------------------------------------------------------- the parent: contenders, rounds, the table


def cpu_model() -> str:
    from bench import cpu_name  # benchmarks/ is this script's folder

    return cpu_name()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def find_lib(kind: str) -> str | None:
    """$JEMALLOC_LIB / $TCMALLOC_LIB, else the first of the usual names in the usual folders."""
    named = os.environ.get(f"{kind.upper()}_LIB")
    if named:
        return named if Path(named).is_file() else None
    dirs = [*LIB_DIRS]
    for prefix in (os.environ.get("CONDA_PREFIX"), sys.prefix):
        if prefix:
            dirs.insert(0, f"{prefix}/lib")
    for name in LIB_NAMES[kind]:
        for d in dirs:
            hits = sorted(glob.glob(os.path.join(d, name)))
            if hits:
                return hits[0]
    return None


def contenders(libs: dict[str, str | None]) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(name -> the environment it adds, name -> why it is skipped)."""
    envs: dict[str, dict[str, str]] = {"plain": {}}
    skipped: dict[str, str] = {}
    variants = (("jemalloc", "jemalloc", {}), ("jemalloc", "jemalloc+MALLOC_CONF", {"MALLOC_CONF": MALLOC_CONF}),
                ("tcmalloc", "tcmalloc", {}))
    for kind, name, extra in variants:
        lib = libs[kind]
        if lib is None:
            skipped[name] = f"{kind} not found (set {kind.upper()}_LIB, or {INSTALL_HINT})"
        else:
            envs[name] = {"LD_PRELOAD": lib, **extra}
    envs["OMP_NUM_THREADS=1"] = {"OMP_NUM_THREADS": "1"}
    return envs, skipped


def run_child(spec: dict[str, Any], extra_env: dict[str, str]) -> dict[str, Any]:
    """One fresh process; again (up to RETRIES times) while other jobs take its cores."""
    contended: list[dict[str, Any]] = []
    while True:
        start = time.perf_counter()
        result = run_child_once(spec, extra_env)
        result["child_wall_s"] = round(time.perf_counter() - start, 1)
        if result["cpu_busy"] >= MIN_BUSY * result["torch_threads"] or len(contended) == RETRIES:
            break
        print(f"  (CPU busy {result['cpu_busy']:.2f} of {result['torch_threads']} threads: contended, again)",
              flush=True)
        contended.append(result)
    result["contended_attempts"] = contended
    result["contended"] = result["cpu_busy"] < MIN_BUSY * result["torch_threads"]
    return result


def run_child_once(spec: dict[str, Any], extra_env: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env.update(extra_env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec} with {extra_env} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    noted = ("<jemalloc>", "tcmalloc", "ld.so")  # bad MALLOC_CONF pairs, large-alloc reports, failed preloads
    warnings = [line for line in proc.stderr.splitlines() if any(k in line for k in noted)]
    if warnings:
        result["allocator_warnings"] = warnings[:5]
    return result


def summarize(rounds: list[list[dict[str, Any]]], names: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    medians: dict[str, Any] = {}
    for workload, contenders_ in names.items():
        mine = [r for rnd in rounds for r in rnd if r["workload"] == workload]
        plain = {r["round"]: r for r in mine if r["contender"] == "plain"}
        medians[workload] = {}
        for c in contenders_:
            rows = [r for r in mine if r["contender"] == c]
            if not rows:
                continue
            paired = [(r, plain[r["round"]]) for r in rows if r["round"] in plain]

            def med(key: str, rows: list[dict[str, Any]] = rows) -> float | None:
                values = [r[key] for r in rows if r.get(key) is not None]
                return statistics.median(values) if values else None

            medians[workload][c] = {
                "images_per_s": med("images_per_s"),
                "speed_vs_plain": statistics.median(r["images_per_s"] / p["images_per_s"] for r, p in paired),
                "peak_rss_mib": med("peak_rss_mib"),
                "rss_vs_plain": statistics.median(r["peak_rss_mib"] / p["peak_rss_mib"] for r, p in paired),
                "peak_rss_above_import_mib": med("peak_rss_above_import_mib"),
                "rss_at_end_mib": med("rss_at_end_mib"),
                "cpu_busy": med("cpu_busy"),
                "rounds": len(rows),
                "contended_rounds": sum(r["contended"] for r in rows),
            }
    return medians


def table(medians: dict[str, Any]) -> str:
    def mib(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    lines = [f"{'workload':<10} {'contender':<22} {'images/s':>9} {'vs plain':>9} {'peak RSS MiB':>13} "
             f"{'vs plain':>9} {'peak-import':>12} {'RSS at end':>11}"]
    for workload, rows in medians.items():
        for c, m in rows.items():
            lines.append(f"{workload:<10} {c:<22} {m['images_per_s']:>9.1f} {m['speed_vs_plain']:>8.2f}x "
                         f"{m['peak_rss_mib']:>13.0f} {m['rss_vs_plain']:>8.2f}x "
                         f"{mib(m['peak_rss_above_import_mib']):>12} {mib(m['rss_at_end_mib']):>11}"
                         + (f"  ({m['contended_rounds']} round(s) contended)" if m["contended_rounds"] else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one round of a few steps: a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes (default: %(default)s)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 autocast on CPUs with native bf16, as `precision=auto` picks (default)")
    parser.add_argument("--workloads", nargs="+", choices=tuple(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    started = time.perf_counter()
    from simclr import native_bf16

    bf16 = native_bf16() if args.precision == "auto" else args.precision == "bf16"
    libs = {kind: find_lib(kind) for kind in LIB_NAMES}
    envs, skipped = contenders(libs)
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", flush=True)
    mode = "quick" if args.quick else "full"
    names = {w: tuple(c for c in CONTENDERS_OF[w] if c in envs) for w in args.workloads}
    n_rounds = max(WORKLOADS[w][mode][2] for w in args.workloads)
    print(f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{'bf16 autocast' if bf16 else 'float32'} (--precision {args.precision}); {n_rounds} round(s)", flush=True)

    rounds: list[list[dict[str, Any]]] = []
    for rnd in range(n_rounds):
        jobs = [(w, c) for w in args.workloads if rnd < WORKLOADS[w][mode][2] for c in names[w]]
        if rnd % 2:
            jobs.reverse()  # neither the first nor the last slot of a round always goes to the same contender
        results = []
        for slot, (w, c) in enumerate(jobs):
            spec = WORKLOADS[w]
            warmup, steps, _ = spec[mode]
            child = {"encoder": spec["encoder"], "batch": spec["batch"], "warmup": warmup, "steps": steps,
                     "bf16": bf16}
            load = os.getloadavg()[0]
            r = run_child(child, envs[c])
            r.update(round=rnd, slot=slot, workload=w, contender=c, env=envs[c], loadavg_1min_before=load)
            results.append(r)
            print(f"round {rnd + 1}/{n_rounds} {w:<9} {c:<22} {r['images_per_s']:7.1f} images/s "
                  f"(median step {r['median_step_s']:.3f} s), peak RSS {r['peak_rss_mib']:.0f} MiB, "
                  f"CPU busy {r['cpu_busy']:.2f}, load {load:.1f}"
                  f"{'' if r['preloaded'] or 'LD_PRELOAD' not in envs[c] else ' (LD_PRELOAD NOT loaded!)'}",
                  flush=True)
        rounds.append(results)

    medians = summarize(rounds, names)
    print("\nmedians over rounds; ratios: median of each round's ratio to plain in the same round")
    print(table(medians))
    wall = time.perf_counter() - started
    flags = cpu_flags()
    report = {
        "benchmark": "cpu_tuning",
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([".venv/bin/python", "benchmarks/cpu_tuning.py", *sys.argv[1:]]),
        "cpu": {"model": cpu_model(), "cores": os.cpu_count(),
                "avx512_bf16": "avx512_bf16" in flags, "amx_tile": "amx_tile" in flags},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "precision": {"requested": args.precision, "bf16_autocast": bf16},
        "allocators": libs,
        "malloc_conf": MALLOC_CONF,
        "skipped": skipped,
        "cleared_env": list(CLEARED_ENV),
        "workloads": {w: {"encoder": WORKLOADS[w]["encoder"], "batch": WORKLOADS[w]["batch"],
                          "image_size": IMAGE_SIZE, "warmup_steps": WORKLOADS[w][mode][0],
                          "timed_steps": WORKLOADS[w][mode][1], "rounds": WORKLOADS[w][mode][2],
                          "contenders": list(names[w])} for w in args.workloads},
        "mode": mode,
        "rounds": rounds,
        "medians": medians,
        "wall_s": round(wall, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{wall:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
