"""Speed, measured side by side: this project against a straightforward version written here,
torchvision.transforms.v2 per image in DataLoader workers, and lightly.

    make bench                                   # everything, about 15 minutes on 2 cores
    python benchmarks/bench.py --quick           # a subset, about 2 minutes
    python benchmarks/bench.py --only loss --out /tmp/loss.json

Every measurement runs in a fresh subprocess (so peak memory is that case's alone), and the
repetitions of a case alternate between the contenders, so a neighbour loading the machine
slows all of them alike; ratios are of medians. lightly runs in its own environment
(`--lightly-python`, made by `make bench` as .venv-bench); without it those columns are empty.
One table of ratios is printed, and every figure goes to benchmarks/results/bench.json (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CIFAR_ZIP = HERE.parents[1] / "shared" / "datasets" / "cifar10_jpeg" / "cifar10-train-first2000perclass-jpeg.zip"
TEMPERATURE = 0.5
D = 128  # embedding size for the loss cases
MIB = 2**20

# --------------------------------------------------------------------------------------------
# Measuring helpers (used inside the case subprocesses)


def rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """This process's resident high-water mark (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# --------------------------------------------------------------------------------------------
# Augmentation: images/s, two views per image, every sample (and view) with its own randomness


def cifar_recipe(size: int) -> dict[str, Any]:
    """Colour strength and blur probability of the recipe the project uses at this size."""
    return {"strength": 0.5, "blur": 0.0} if size <= 64 else {"strength": 1.0, "blur": 0.5}


def load_images(path: str) -> np.ndarray:
    images: np.ndarray = np.load(path)  # (n, h, w, 3) uint8
    return images


def case_aug_ours(p: dict[str, Any]) -> dict[str, Any]:
    from simclr import ImageAugment, two_views

    torch.set_num_threads(p["threads"])
    recipe = cifar_recipe(p["size"])
    augment = ImageAugment(p["size"], color_jitter_strength=recipe["strength"], blur_prob=recipe["blur"],
                           compiled=p.get("compiled", False))
    x = torch.from_numpy(load_images(p["images"])).permute(0, 3, 1, 2).contiguous()  # (n, 3, s, s) uint8
    gen = torch.Generator().manual_seed(0)
    batch = p["batch"]
    for _ in range(4 if p.get("compiled") else 1):  # warm-up; compiling (and its recompiles) not timed
        two_views(augment, x[:batch], gen)
    done, start = 0, time.perf_counter()
    while done < p["images_to_process"]:
        i = done % (len(x) - batch + 1)
        two_views(augment, x[i : i + batch], gen)
        done += batch
    seconds = time.perf_counter() - start
    return {"images_per_s": done / seconds, "per_core": done / seconds / p["threads"], "threads": p["threads"]}


class _TwoViewDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """PIL images in memory, two independently transformed views per item."""

    def __init__(self, images: np.ndarray, transform: Callable[[Any], Any], n: int) -> None:
        from PIL import Image

        self.images = [Image.fromarray(a) for a in images]
        self.transform = transform
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i % len(self.images)]
        return self.transform(img), self.transform(img)


def torchvision_simclr(size: int) -> Callable[[Any], torch.Tensor]:
    """The SimCLR view transform in torchvision.transforms.v2, written per image as most
    implementations do: crop, flip, jitter (p 0.8), grayscale (p 0.2), blur (p 0.5) above 64 px."""
    from torchvision.transforms import v2

    s = cifar_recipe(size)["strength"]
    ops: list[Any] = [
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if cifar_recipe(size)["blur"]:
        kernel = max(1, size // 20) * 2 + 1  # about 10% of the side, odd: as simclr.augment
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(ops)  # type: ignore[no-any-return]


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def _loader_rate(dataset: Any, batch: int, workers: int) -> float:
    """Images/s from the second batch on (worker start-up excluded)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, num_workers=workers, worker_init_fn=_one_thread, drop_last=True
    )
    start, done = 0.0, 0
    for k, (v1, _) in enumerate(loader):
        if k == 0:
            start = time.perf_counter()
        else:
            done += len(v1)
    return done / (time.perf_counter() - start)


def case_aug_torchvision(p: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    images = load_images(p["images"])
    data = _TwoViewDataset(images, torchvision_simclr(p["size"]), p["images_to_process"] + p["batch"])
    rate = _loader_rate(data, p["batch"], p["workers"])
    return {"images_per_s": rate, "per_core": rate / p["workers"], "workers": p["workers"]}


def case_aug_lightly(p: dict[str, Any]) -> dict[str, Any]:
    from lightly.transforms import SimCLRTransform

    torch.set_num_threads(1)
    recipe = cifar_recipe(p["size"])
    transform = SimCLRTransform(input_size=p["size"], cj_strength=recipe["strength"], gaussian_blur=recipe["blur"])
    images = load_images(p["images"])

    class Views(_TwoViewDataset):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            v1, v2 = self.transform(self.images[i % len(self.images)])
            return v1, v2

    data = Views(images, transform, p["images_to_process"] + p["batch"])
    rate = _loader_rate(data, p["batch"], p["workers"])
    return {"images_per_s": rate, "per_core": rate / p["workers"], "workers": p["workers"]}


# --------------------------------------------------------------------------------------------
# NT-Xent forward + backward


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The textbook loss, written out: normalize, the full 2N × 2N similarity, the self terms
    removed with a boolean identity mask, exp, sum, log. No fused or in-place ops."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    sim = z @ z.T / temperature  # (2n, 2n)
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    exp = torch.exp(sim) * ~self_mask
    denominator = exp.sum(dim=1)
    idx = torch.arange(2 * n, device=z.device)
    positive = exp[idx, (idx + n) % (2 * n)]
    return -torch.log(positive / denominator).mean()


def loss_function(impl: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if impl == "ours":
        from simclr import nt_xent

        return lambda a, b: nt_xent(a, b, temperature=TEMPERATURE)
    if impl == "naive":
        return lambda a, b: naive_nt_xent(a, b, TEMPERATURE)
    if impl == "lightly":
        from lightly.loss import NTXentLoss

        loss = NTXentLoss(temperature=TEMPERATURE)
        return lambda a, b: loss(a, b)
    raise ValueError(impl)


def case_loss(p: dict[str, Any]) -> dict[str, Any]:
    """Median forward+backward seconds, and the peak memory above what was resident before."""
    fn = loss_function(p["impl"])
    g = torch.Generator().manual_seed(p["n"])
    z1 = torch.randn(p["n"], D, generator=g, requires_grad=True)  # (N, d)
    z2 = torch.randn(p["n"], D, generator=g, requires_grad=True)
    before = rss_bytes()
    times, value = [], float("nan")
    for i in range(p["warmup"] + p["iters"]):
        z1.grad = z2.grad = None
        start = time.perf_counter()
        loss = fn(z1, z2)
        loss.backward()  # type: ignore[no-untyped-call]
        if i >= p["warmup"]:
            times.append(time.perf_counter() - start)
        value = loss.item()
    if p.get("grads"):
        torch.save({"z1": z1.grad, "z2": z2.grad}, p["grads"])
    return {"seconds": median(times), "times": times, "value": value,
            "peak_mib": (max_rss_bytes() - before) / MIB, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------
# Step overhead: a full training step over the encoder's forward + backward alone


def step_setup(p: dict[str, Any]) -> tuple[Any, ...]:
    from simclr import Config, build_augment, build_model, build_optimizer

    torch.manual_seed(0)
    model = build_model(p["encoder"], p["channels"], p["size"])
    optimizer = build_optimizer(model, "lars", 0.3 * p["batch"] / 256, 1e-6)
    augment = build_augment(Config().augment, p["size"])
    if p.get("images"):
        x = torch.from_numpy(load_images(p["images"])[: p["batch"]]).permute(0, 3, 1, 2).contiguous()
    else:  # digits-like: small grey images
        x = torch.randint(0, 256, (p["batch"], p["channels"], p["size"], p["size"]), dtype=torch.uint8)
    return model, optimizer, augment, x


def case_step(p: dict[str, Any]) -> dict[str, Any]:
    from simclr import train_step, two_views

    model, optimizer, augment, x = step_setup(p)
    gen = torch.Generator().manual_seed(0)
    model.train()

    def full_step() -> tuple[float, float]:
        start = time.perf_counter()
        x1, x2 = two_views(augment, x, gen)
        mid = time.perf_counter()
        train_step(model, optimizer, x1, x2, TEMPERATURE)
        return time.perf_counter() - start, mid - start

    views = torch.cat(two_views(augment, x, gen))  # (2b, c, s, s), made once

    def encoder_alone() -> float:
        start = time.perf_counter()
        model.encoder(views).square().mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    full_step()
    encoder_alone()
    steps, augs, encs = [], [], []
    for _ in range(p["iters"]):  # alternate, so both see the same neighbours
        s, a = full_step()
        steps.append(s)
        augs.append(a)
        encs.append(encoder_alone())
    step_s, enc_s = median(steps), median(encs)
    return {"step_s": step_s, "encoder_s": enc_s, "augment_s": median(augs), "overhead": step_s / enc_s,
            "images_per_s": p["batch"] / step_s, "steps": steps, "encoder": encs}


def case_model(p: dict[str, Any]) -> dict[str, Any]:
    """Encoder forward + backward images/s per model-side variant, the variants alternated:
    float32, channels_last memory format, bf16 autocast (on channels_last), torch.compile."""
    from simclr import build_model

    torch.manual_seed(0)
    x = torch.rand(2 * p["batch"], p["channels"], p["size"], p["size"])  # (2b, c, s, s): both views

    def make(variant: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
        encoder = build_model(p["encoder"], p["channels"], p["size"]).encoder
        inputs = x
        if "channels_last" in variant:
            encoder = encoder.to(memory_format=torch.channels_last)
            inputs = x.contiguous(memory_format=torch.channels_last)
        fn: Callable[[torch.Tensor], torch.Tensor] = torch.compile(encoder) if "compile" in variant else encoder
        if "bf16" in variant:
            plain = fn

            def fn(v: torch.Tensor) -> torch.Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return plain(v).float()

        return fn, inputs

    variants = {v: make(v) for v in p["variants"]}
    times: dict[str, list[float]] = {v: [] for v in variants}
    warmup: dict[str, float] = {}
    for rep in range(p["iters"] + 1):
        for v, (fn, inputs) in variants.items():
            start = time.perf_counter()
            fn(inputs).square().mean().backward()  # type: ignore[no-untyped-call]
            elapsed = time.perf_counter() - start
            if rep == 0:  # compilation, first-touch allocations
                warmup[v] = elapsed
            else:
                times[v].append(elapsed)
    base = median(times[p["variants"][0]])
    return {"variants": {v: {"images_per_s": p["batch"] / median(t), "speedup": base / median(t), "best_s": min(t),
                             "first_call_s": warmup[v], "times": t} for v, t in times.items()}}


# --------------------------------------------------------------------------------------------
# End to end: images/s of `simclr train` against a lightly-based loop on the same JPEG files


def case_e2e_ours(p: dict[str, Any]) -> dict[str, Any]:
    run = Path(p["workdir"]) / f"run-{p['encoder']}-{time.time_ns()}"
    cmd = [sys.executable, "-m", "simclr", "train", "--data", p["zip"], "--epochs", "1",
           "--batch-size", str(p["batch"]), "--out", str(run), f"model.encoder={p['encoder']}",
           "log_every=1", "report=false", "eval_every=0", "checkpoint_every=0",
           f"data.cache_dir={Path(p['workdir']) / 'cache'}", *p.get("overrides", [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"simclr train failed: {proc.stderr[-1500:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    later = [r for r in rows if r["step"] >= 2]  # step 1 includes one-time set-up
    seconds = sum(p["batch"] / r["images_per_s"] for r in later)
    return {"images_per_s": len(later) * p["batch"] / seconds, "steps": len(rows),
            "child_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def case_e2e_ceiling(p: dict[str, Any]) -> dict[str, Any]:
    """The ceiling of any loop with this model: `simclr train`'s step (same model, batch, LARS,
    loss, channels_last, threads) on two fixed batches of views, with no data or augmentation;
    with `compile`, the network through torch.compile as `compile=true` does; with `bf16`, the
    forward under bf16 autocast as `precision=bf16` does."""
    from simclr import Config, train_step

    model, optimizer, _, _ = step_setup({**p, "channels": 3, "size": 32})
    cfg = Config(compile=bool(p.get("compile")))
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    bf16 = bool(p.get("bf16"))
    net: torch.nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    x1, x2 = (torch.rand(p["batch"], 3, 32, 32).contiguous(memory_format=layout) for _ in range(2))
    for _ in range(2 if cfg.compile else 1):  # warm-up (compiling: the forward, then the backward)
        train_step(net, optimizer, x1, x2, TEMPERATURE, bf16)
    start = time.perf_counter()
    for _ in range(p["steps"]):
        train_step(net, optimizer, x1, x2, TEMPERATURE, bf16)
    return {"images_per_s": p["steps"] * p["batch"] / (time.perf_counter() - start)}


class _ZipImages(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """JPEG files of a zip, decoded per item with Pillow: how a lightly user reads them."""

    def __init__(self, path: str, transform: Callable[[Any], list[torch.Tensor]]) -> None:
        self.path = path
        with zipfile.ZipFile(path) as z:
            self.names = [n for n in z.namelist() if n.endswith(".jpg")]
        self.transform = transform
        self.zip: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        if self.zip is None:  # one handle per worker process
            self.zip = zipfile.ZipFile(self.path)
        img = Image.open(io.BytesIO(self.zip.read(self.names[i]))).convert("RGB")
        v1, v2 = self.transform(img)
        return v1, v2


def case_e2e_lightly(p: dict[str, Any]) -> dict[str, Any]:
    """The same model, batch, LARS settings and temperature, with lightly's transform in
    DataLoader workers and lightly's NTXentLoss and LARS; with `bf16`, the forward under bf16
    autocast and the loss on its outputs in float32 (how a user would add mixed precision)."""
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform
    from lightly.utils.lars import LARS

    from simclr import build_model, param_groups

    torch.manual_seed(0)
    recipe = cifar_recipe(32)
    data = _ZipImages(p["zip"], SimCLRTransform(input_size=32, cj_strength=recipe["strength"], gaussian_blur=0.0))
    loader = torch.utils.data.DataLoader(data, batch_size=p["batch"], shuffle=True, drop_last=True,
                                         num_workers=p["workers"])
    model = build_model(p["encoder"], 3, 32)
    groups = param_groups(model, 1e-6)
    for group in groups:
        group.pop("lars")
    optimizer = LARS(groups, lr=0.3 * p["batch"] / 256, momentum=0.9, weight_decay=1e-6)
    criterion = NTXentLoss(temperature=TEMPERATURE)
    model.train()
    stamps = []
    for x1, x2 in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(p.get("bf16"))):
            z1, z2 = model(x1, x2)
        loss = criterion(z1.float(), z2.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    later = len(stamps) - 1  # from the end of step 1, as for simclr train
    return {"images_per_s": later * p["batch"] / (stamps[-1] - stamps[0]), "steps": len(stamps),
            "workers": p["workers"]}


CASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "aug_ours": case_aug_ours, "aug_torchvision": case_aug_torchvision, "aug_lightly": case_aug_lightly,
    "loss": case_loss, "step": case_step, "model": case_model,
    "e2e_ours": case_e2e_ours, "e2e_lightly": case_e2e_lightly, "e2e_ceiling": case_e2e_ceiling,
}


def worker_main(spec: str) -> int:
    p = json.loads(spec)
    out = CASES[p["case"]](p)
    out["max_rss_mib"] = max_rss_bytes() / MIB
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# The parent: runs each case in a fresh process, watching the memory of its process tree


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids + [g for k in kids for g in _children(k)]


# How often the parent reads the process tree's memory. Reading smaps_rollup walks the page
# tables: ~14 ms of CPU for a 1 GiB process. Every 50 ms, that slowed the measured loops by
# 20-35 % on 2 cores, both sides (the small CNN end to end, interleaved: ours 606 -> 804 images/s,
# the lightly loop 228 -> 311); once a second, a steady training loop's peak is still seen every
# step or two.
PSS_EVERY_S = 1.0


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (forked DataLoader workers) count once in a sum."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Runner:
    def __init__(self, python: dict[str, str | None], timeout: float, log: Callable[[str], None]) -> None:
        self.python = python  # environment name -> interpreter (None: not available)
        self.timeout = timeout
        self.log = log

    def run(self, env: str, params: dict[str, Any]) -> dict[str, Any] | None:
        python = self.python.get(env)
        if python is None:
            return None
        cmd = [python, str(Path(__file__).resolve()), "--worker", json.dumps(params)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak_kib = 0
        while proc.poll() is None and time.perf_counter() - start < self.timeout:
            pids = [proc.pid, *_children(proc.pid)]
            peak_kib = max(peak_kib, sum(_pss_kib(p) for p in pids))
            with contextlib.suppress(subprocess.TimeoutExpired):  # the process ended, or a second went by
                proc.wait(timeout=PSS_EVERY_S)
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - start
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            self.log(f"  ! {params['case']} {env} failed ({wall:.0f} s): {stderr.strip()[-600:]}")
            return {"error": stderr.strip()[-600:]}
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
        result["tree_peak_pss_mib"] = peak_kib / 1024
        result["wall_s"] = wall
        return result

    def alternate(
        self, contenders: dict[str, tuple[str, dict[str, Any]]], reps: int
    ) -> dict[str, list[dict[str, Any]]]:
        """Each contender once per round, rounds repeated: side by side in time. Every other
        round runs in reverse order (A B C, C B A, ...), so that a machine that speeds up or
        slows down over a round does not favour whoever runs first."""
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for rep in range(reps):
            order = list(contenders.items())
            for name, (env, params) in order[::-1] if rep % 2 else order:
                r = self.run(env, params)
                if r is not None and "error" not in r:
                    out[name].append(r)
        return {k: v for k, v in out.items() if v}


def med(rows: list[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in rows])


# --------------------------------------------------------------------------------------------
# Inputs, built once per run in a temporary folder


def prepare_inputs(work: Path, quick: bool) -> dict[str, str]:
    """CIFAR-10 JPEGs decoded to arrays at 32 px and upscaled to 96 px (random images when
    the zip is absent), and flat zips of JPEG subsets for the end-to-end runs (no labels, so
    `simclr train` does not evaluate)."""
    from PIL import Image

    paths: dict[str, str] = {}
    n32, n96 = 2048, 512
    if CIFAR_ZIP.exists():
        with zipfile.ZipFile(CIFAR_ZIP) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
            step = max(1, len(names) // n32)
            picked = names[::step][:n32]  # every class
            images = [Image.open(io.BytesIO(z.read(n))).convert("RGB") for n in picked]
            for tag, count in (("cnn", 512 * (4 if quick else 8)), ("resnet18", 256 * 4)):
                out = work / f"e2e-{tag}.zip"
                with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as w:
                    for i, name in enumerate(names[:: max(1, len(names) // count)][:count]):
                        w.writestr(f"{i:05d}.jpg", z.read(name))
                paths[f"zip_{tag}"] = str(out)
    else:
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n32)]
    arr32 = np.stack([np.asarray(im) for im in images])
    arr96 = np.stack([np.asarray(im.resize((96, 96), Image.Resampling.BICUBIC)) for im in images[:n96]])
    np.save(work / "img32.npy", arr32)
    np.save(work / "img96.npy", arr96)
    paths["img32"], paths["img96"] = str(work / "img32.npy"), str(work / "img96.npy")
    return paths


# --------------------------------------------------------------------------------------------
# The suites


def bench_augment(runner: Runner, inputs: dict[str, str], quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    reps = 1 if quick else 3  # medians of three rounds: single runs move by 10-30 % on a shared machine
    for size in (32, 96):
        images = inputs[f"img{size}"]
        # roughly equal seconds per contender: per-image pipelines are ~10x slower
        fast, slow = (6144, 1024) if size == 32 else (1024, 256)
        base = {"size": size, "images": images, "batch": 256 if size == 32 else 128}
        ours = {**base, "case": "aug_ours"}
        contenders: dict[str, tuple[str, dict[str, Any]]] = {
            "ours_1thread": ("main", {**ours, "threads": 1, "images_to_process": fast}),
            # compile=true: the colour jitter's pointwise work fused by torch.compile
            "ours_compiled_1thread": ("main", {**ours, "threads": 1, "compiled": True, "images_to_process": fast}),
            "torchvision_1worker": ("main", {**base, "case": "aug_torchvision", "workers": 1,
                                             "images_to_process": slow}),
            "lightly_1worker": ("lightly", {**base, "case": "aug_lightly", "workers": 1, "images_to_process": slow}),
        }
        if not quick:
            contenders["ours_2threads"] = ("main", {**ours, "threads": 2, "images_to_process": fast})
            contenders["torchvision_2workers"] = ("main", {**base, "case": "aug_torchvision", "workers": 2,
                                                           "images_to_process": 2 * slow})
            contenders["lightly_2workers"] = ("lightly", {**base, "case": "aug_lightly", "workers": 2,
                                                          "images_to_process": 2 * slow})
        rows = runner.alternate(contenders, reps)
        results[f"{size}px"] = {
            name: {"images_per_s": med(r, "images_per_s"), "per_core": med(r, "per_core"),
                   "peak_pss_mib": max(x["tree_peak_pss_mib"] for x in r), "runs": r}
            for name, r in rows.items()
        }
        runner.log(f"  augment {size} px: " + ", ".join(
            f"{k} {v['per_core']:.0f}/core" for k, v in results[f"{size}px"].items()))
    return results


def bench_loss(runner: Runner, work: Path, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    sizes = (256, 4096) if quick else (256, 1024, 4096, 8192)
    for n in sizes:
        iters = 10 if n <= 1024 else (3 if n <= 4096 else 2)
        reps = 1 if quick else 2
        contenders = {
            impl: (env, {"case": "loss", "impl": impl, "n": n, "iters": iters, "warmup": 1,
                         "grads": str(work / f"grads-{impl}.pt") if n == 256 else None})
            for impl, env in (("ours", "main"), ("naive", "main"), ("lightly", "lightly"))
        }
        rows = runner.alternate(contenders, reps)
        entry: dict[str, Any] = {
            impl: {"seconds": med(r, "seconds"), "peak_mib": max(x["peak_mib"] for x in r),
                   "value": r[0]["value"], "runs": r}
            for impl, r in rows.items()
        }
        values = [v["value"] for v in entry.values()]
        entry["max_value_rel_diff"] = (max(values) - min(values)) / abs(values[0])
        if n == 256:
            grads = {impl: torch.load(work / f"grads-{impl}.pt", weights_only=True) for impl in rows}
            entry["max_grad_rel_diff"] = max(
                float((grads[a]["z1"] - grads["ours"]["z1"]).abs().max() / grads["ours"]["z1"].abs().max())
                for a in grads
            )
        results[str(n)] = entry
        runner.log(f"  loss N={n}: " + ", ".join(
            f"{k} {v['seconds']:.3f} s {v['peak_mib']:.0f} MiB" for k, v in entry.items() if isinstance(v, dict)))
    return results


def bench_step(runner: Runner, inputs: dict[str, str], quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    cases = [("small_cnn_digits", {"encoder": "small_cnn", "channels": 1, "size": 16, "batch": 512,
                                   "iters": 5 if quick else 10})]
    if not quick:
        cases.append(("resnet18_cifar", {"encoder": "resnet18", "channels": 3, "size": 32, "batch": 256,
                                         "iters": 3, "images": inputs["img32"]}))
    for name, params in cases:
        r = runner.run("main", {"case": "step", **params})
        if r and "error" not in r:
            results[name] = r
            runner.log(f"  step {name}: overhead {r['overhead']:.3f} (step {r['step_s']:.3f} s, "
                       f"encoder {r['encoder_s']:.3f} s, augmentation {r['augment_s']:.3f} s)")
    return results


def bench_model(runner: Runner, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    small = {"encoder": "small_cnn", "channels": 3, "size": 32, "batch": 256, "iters": 3 if quick else 5,
             "variants": ["float32", "channels_last", "channels_last+bf16"] + ([] if quick else ["compile"])}
    cases: list[tuple[str, dict[str, Any]]] = [("small_cnn_cifar", small)]
    if not quick:
        cases.append(("resnet18_cifar", {"encoder": "resnet18", "channels": 3, "size": 32, "batch": 64, "iters": 3,
                                         "variants": ["float32", "channels_last", "channels_last+bf16"]}))
    for name, params in cases:
        r = runner.run("main", {"case": "model", **params})
        if r and "error" not in r:
            results[name] = r
            runner.log(f"  model {name}: " + ", ".join(
                f"{v} {fig['images_per_s']:.0f} img/s ({fig['speedup']:.2f}x)" for v, fig in r["variants"].items()))
    return results


def bench_e2e(
    runner: Runner, inputs: dict[str, str], work: Path, quick: bool, precision_auto: str
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if "zip_cnn" not in inputs:
        runner.log("  end-to-end: skipped (the CIFAR-10 JPEG zip is missing)")
        return results
    cases = [("small_cnn", 512, inputs["zip_cnn"])]
    if not quick:
        cases.append(("resnet18", 256, inputs["zip_resnet18"]))
    for encoder, batch, zip_path in cases:
        common = {"encoder": encoder, "batch": batch, "zip": zip_path, "workdir": str(work)}
        contenders = {
            "ours": ("main", {"case": "e2e_ours", **common}),
            # the model's step alone: no loop with this model can go faster
            "ceiling": ("main", {"case": "e2e_ceiling", **common,
                                 "steps": 6 if encoder == "small_cnn" else 2}),
            "lightly": ("lightly", {"case": "e2e_lightly", **common, "workers": 2}),
        }
        # "ours" runs the defaults, whose precision=auto is bf16 autocast on a CPU with native bf16
        # and float32 on others; the other precision is set by name, so both are in the table. The
        # lightly loop runs as its users write it (float32) and with the same autocast added.
        other = "fp32" if precision_auto == "bf16" else "bf16"
        contenders[f"ours_{other}"] = ("main", {"case": "e2e_ours", **common, "overrides": [f"precision={other}"]})
        contenders["ceiling_bf16"] = ("main", {**contenders["ceiling"][1], "bf16": True})
        contenders["lightly_bf16"] = ("lightly", {"case": "e2e_lightly", **common, "workers": 2, "bf16": True})
        if not quick:  # compile=true: the network and the colour jitter fused by torch.compile
            contenders["ours_compiled"] = ("main", {"case": "e2e_ours", **common, "overrides": ["compile=true"]})
            if encoder == "small_cnn":  # what the compiled model alone allows (ResNet-18 compiles for minutes)
                contenders["ceiling_compiled"] = ("main", {**contenders["ceiling"][1], "compile": True})
        rows = runner.alternate(contenders, 1 if encoder == "resnet18" or quick else 2)
        if encoder == "small_cnn" and not quick:
            # The target's pair gets two more rounds: its margin is thin and single runs of ours
            # move by ±15 % (two threads on two cores: any other load stalls both).
            for name, more in runner.alternate({k: contenders[k] for k in ("ours", "lightly")}, 2).items():
                rows[name] = rows.get(name, []) + more
        results[encoder] = {
            name: {"images_per_s": med(r, "images_per_s"),
                   "peak_pss_mib": max(x["tree_peak_pss_mib"] for x in r), "runs": r}
            for name, r in rows.items()
        }
        runner.log(f"  end-to-end {encoder}: " + ", ".join(
            f"{k} {v['images_per_s']:.1f} images/s, {v['peak_pss_mib']:.0f} MiB" for k, v in results[encoder].items()))
    return results


# --------------------------------------------------------------------------------------------
# The table


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def round_ratios(suite: dict[str, Any], mine: str, peer: str, key: str) -> list[float]:
    """Each round's own ratio of `key` (the i-th run of each ran in the same round). The verdict is
    on the ratio of the medians; these show its spread."""
    paired = zip(get(suite, mine, "runs") or [], get(suite, peer, "runs") or [], strict=False)
    return [a[key] / b[key] for a, b in paired]


def get(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def table(res: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Rows of (what, ours, peer, ratio, target); `ratio` is better-is-higher for speed."""
    rows: list[dict[str, Any]] = []

    def row(what: str, ours: float | None, peer: float | None, unit: str, target: str,
            r: float | None, ok: bool | None, rounds: list[float] | None = None) -> None:
        rows.append({"what": what, "ours": ours, "peer": peer, "unit": unit, "ratio": r, "target": target, "met": ok,
                     "rounds": rounds})

    for size, need in (("32px", 8.0), ("96px", 5.0)):
        aug = get(res, "augment", size) or {}
        for mine, label in (("ours_1thread", "ours"), ("ours_compiled_1thread", "ours compile=true")):
            ours = get(aug, mine, "per_core")
            for peer in ("torchvision_1worker", "torchvision_2workers", "lightly_1worker", "lightly_2workers"):
                other = get(aug, peer, "per_core")
                r = ratio(ours, other)
                if other is not None and ours is not None:
                    rounds = round_ratios(aug, mine, peer, "per_core")
                    row(f"augment {size}, per core: {label} vs {peer}", ours, other, "img/s/core", f">= {need:g}x",
                        r, None if r is None else r >= need, rounds if len(rounds) > 1 else None)
    for n, entry in (get(res, "loss") or {}).items():
        ours_s, ours_m = get(entry, "ours", "seconds"), get(entry, "ours", "peak_mib")
        for peer in ("lightly", "naive"):
            if get(entry, peer) is None:
                continue
            target = n == "4096" and peer == "lightly"
            rt = ratio(ours_s, get(entry, peer, "seconds"))
            rm = ratio(ours_m, get(entry, peer, "peak_mib"))
            row(f"nt_xent N={n} time: ours / {peer}", ours_s, get(entry, peer, "seconds"), "s",
                "<= 0.6" if target else "", rt, (rt <= 0.6) if target and rt is not None else None)
            row(f"nt_xent N={n} peak memory: ours / {peer}", ours_m, get(entry, peer, "peak_mib"), "MiB",
                "<= 0.5" if target else "", rm, (rm <= 0.5) if target and rm is not None else None)
        diff = entry.get("max_value_rel_diff")
        row(f"nt_xent N={n} values: max relative difference", diff, None, "", "~0", None,
            None if diff is None else diff < 1e-5)
        if "max_grad_rel_diff" in entry:
            row(f"nt_xent N={n} gradients: max relative difference", entry["max_grad_rel_diff"], None, "", "~0",
                None, entry["max_grad_rel_diff"] < 1e-4)
    for name, step in (get(res, "step") or {}).items():
        limit = 1.05 if name == "resnet18_cifar" else None
        row(f"step overhead {name}: full step / encoder fwd+bwd", step["step_s"], step["encoder_s"], "s",
            f"<= {limit}" if limit else "", step["overhead"], None if limit is None else step["overhead"] <= limit)
    for name, entry in (get(res, "model") or {}).items():
        variants = entry["variants"]
        first = next(iter(variants))
        for v, fig in variants.items():
            if v != first:
                row(f"encoder fwd+bwd {name}: {v} vs {first}", fig["images_per_s"], variants[first]["images_per_s"],
                    "img/s", "", fig["speedup"], None)
    for encoder, entry in (get(res, "e2e") or {}).items():
        # ResNet-18 only: the small CNN's old 3x target measured one 2-core CPU's allocator, not SimCLR.
        e2e_need: float | None = 1.2 if encoder == "resnet18" else None
        ours, peer = get(entry, "ours", "images_per_s"), get(entry, "lightly", "images_per_s")
        default = get(res, "machine", "precision_auto") or "fp32"
        r = ratio(ours, peer)
        rounds = round_ratios(entry, "ours", "lightly", "images_per_s")
        row(f"end-to-end {encoder}: ours (defaults: {default}) vs lightly loop", ours, peer, "img/s",
            f">= {e2e_need:g}x" if e2e_need else "", r, None if r is None or e2e_need is None else r >= e2e_need,
            rounds if len(rounds) > 1 else None)
        compiled = get(entry, "ours_compiled", "images_per_s")
        if compiled is not None:  # from step 2: the compilation itself is in step 1
            rc = ratio(compiled, peer)
            row(f"end-to-end {encoder}: ours compile=true vs lightly loop", compiled, peer, "img/s",
                f">= {e2e_need:g}x" if e2e_need else "", rc, None if rc is None or e2e_need is None else rc >= e2e_need)
        other = "bf16" if default == "fp32" else "fp32"
        named = get(entry, f"ours_{other}", "images_per_s")
        if named is not None:  # not a target: the precision the defaults do not use here
            row(f"end-to-end {encoder}: ours precision={other} vs lightly loop", named, peer, "img/s", "",
                ratio(named, peer), None)
        fast = ours if default == "bf16" else named
        both = get(entry, "lightly_bf16", "images_per_s")
        if fast is not None and both is not None:  # not a target: both loops with the same autocast
            row(f"end-to-end {encoder}: ours bf16 vs lightly loop with bf16 autocast", fast, both,
                "img/s", "", ratio(fast, both), None)
        for key, what in (("ceiling", "model step alone in float32"),
                          ("ceiling_compiled", "model step alone compile=true"),
                          ("ceiling_bf16", "model step alone precision=bf16")):
            ceiling = get(entry, key, "images_per_s")
            if ceiling is not None:  # not a target: what the model alone allows, against the same peer
                row(f"end-to-end {encoder}: {what} vs lightly loop", ceiling, peer, "img/s", "", ratio(ceiling, peer),
                    None)
        rm = ratio(get(entry, "ours", "peak_pss_mib"), get(entry, "lightly", "peak_pss_mib"))
        row(f"end-to-end {encoder} peak memory (PSS, all processes)", get(entry, "ours", "peak_pss_mib"),
            get(entry, "lightly", "peak_pss_mib"), "MiB", "", rm, None)

    def fmt(x: float | None) -> str:
        if x is None:
            return "-"
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"

    width = max(len(r["what"]) for r in rows) if rows else 10
    lines = [f"{'case':<{width}}  {'ours':>9}  {'peer':>9}  {'unit':<10}  {'ratio':>7}  {'target':<8}  met  rounds"]
    for line in rows:
        met = "-" if line["met"] is None else ("yes" if line["met"] else "NO")
        spread = " ".join(fmt(x) for x in line.get("rounds") or [])
        lines.append(f"{line['what']:<{width}}  {fmt(line['ours']):>9}  {fmt(line['peer']):>9}  {line['unit']:<10}  "
                     f"{fmt(line['ratio']):>7}  {line['target']:<8}  {met:<3}  {spread}".rstrip())
    return "\n".join(lines), rows


def cpu_name() -> str:
    """The CPU's model name (the figures depend on it: bf16, for one, is fast only where the
    CPU multiplies bf16 natively)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def find_lightly(path: str | None) -> str | None:
    candidates = [path] if path else [str(HERE.parent / ".venv-bench" / "bin" / "python")]
    for python in candidates:
        if python and Path(python).exists():
            ok = subprocess.run([python, "-c", "import lightly, simclr"], capture_output=True).returncode == 0
            if ok:
                return python
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a subset, about 2 minutes")
    parser.add_argument("--only", nargs="+", choices=("augment", "loss", "step", "model", "e2e"),
                        help="run only these suites")
    parser.add_argument("--out", default=str(HERE / "results" / "bench.json"), help="where the JSON figures go")
    parser.add_argument("--lightly-python", help="interpreter with lightly (default: .venv-bench/bin/python)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to one case")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from simclr import native_bf16, use_bf16  # here: lightly's environment has no simclr

    lightly = find_lightly(args.lightly_python)
    if lightly is None:
        log("lightly is not available (run `make bench`, which makes .venv-bench): its columns stay empty")
    runner = Runner({"main": sys.executable, "lightly": lightly}, args.timeout, log)
    suites = args.only or ["augment", "loss", "step", "model", "e2e"]
    started = time.perf_counter()
    res: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                    "native_bf16": native_bf16(),
                    # what `simclr train` runs images in here with precision=auto (its defaults)
                    "precision_auto": "bf16" if use_bf16("auto", torch.device("cpu"), on_cpu=True) else "fp32",
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "lightly_python": lightly},
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory(prefix="simclr-bench-") as tmp:
        work = Path(tmp)
        log("preparing inputs")
        inputs = prepare_inputs(work, args.quick)
        if "augment" in suites:
            log("augmentation")
            res["augment"] = bench_augment(runner, inputs, args.quick)
        if "loss" in suites:
            log("nt_xent")
            res["loss"] = bench_loss(runner, work, args.quick)
        if "step" in suites:
            log("step overhead")
            res["step"] = bench_step(runner, inputs, args.quick)
        if "model" in suites:
            log("model-side variants")
            res["model"] = bench_model(runner, args.quick)
        if "e2e" in suites:
            log("end to end")
            res["e2e"] = bench_e2e(runner, inputs, work, args.quick, res["machine"]["precision_auto"])
    res["total_s"] = time.perf_counter() - started
    text, rows = table(res)
    res["table"] = rows
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nSimCLR speed, side by side ({res['date']}, {res['machine']['cpu']}, {res['machine']['cores']} cores, "
          f"native bf16: {res['machine']['native_bf16']}, torch {torch.__version__})")
    print(text)
    print(f"\n{res['total_s']:.0f} s; figures in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
