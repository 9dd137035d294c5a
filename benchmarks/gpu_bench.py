"""CUDA checks and figures, run by benchmarks/gpu.sh on an NVIDIA machine (2-3 minutes).

1. CUDA against CPU: nt_xent values and gradients (float32 and bfloat16 inputs) against a
   float64 CPU reference; augmentation output statistics on CUDA against CPU; compile=true
   augmentation against eager on CUDA (same seed, same views); a bf16-autocast training loss
   against float32.
2. Step overhead: the full training step (`simclr.train_step` on views from `build_augment`:
   augmentation on the device, both views, loss, LARS) against the encoder's forward + backward
   alone, for ResNet-18 at 32 px (float32 batch 256, bf16 batch 512), the small CNN and ResNet-50
   at 224 px (bf16 batch 128); each eager and, as `compile=true` runs it, compiled
   (torch.compile on the network, `ImageAugment(compiled=True)`; the encoder alone compiled too).
3. Augmentation images/s (ours on the GPU), nt_xent forward+backward time and peak memory
   against the naive version (and lightly when importable).

The most wanted parts run first. `--budget-s`: the seconds the script should end within; a part
that would not fit (by a rough estimate for the compiled cases, else once the budget is spent)
is written as skipped. The JSON is rewritten around every part, so a run stopped by an outer
time limit keeps what it measured (the part it was in reads "unfinished").

    python benchmarks/gpu_bench.py [--out FILE] [--budget-s S] [--smoke]
    # --smoke: tiny sizes on the CPU, small CNNs in place of the ResNets, torch.compile off
    # (the compiled variants run eagerly): checks that this script runs, measures nothing
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import TEMPERATURE, median, naive_nt_xent

from simclr import Config, ImageAugment, build_augment, build_model, build_optimizer, nt_xent, train_step, two_views


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int = 2) -> float:
    """Median seconds of `fn` over `iters` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return median(times)


# --------------------------------------------------------------------------------------------
# Checks: CUDA against CPU


def check_loss(device: torch.device, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, n, 128, generator=g, dtype=torch.float64)
    for tau in (0.1, 0.5):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        ref = nt_xent(a, b, temperature=tau)
        ref.backward()  # type: ignore[no-untyped-call]
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
            c = z1.to(device, dtype).requires_grad_()
            d = z2.to(device, dtype).requires_grad_()
            loss = nt_xent(c, d, temperature=tau)
            loss.backward()  # type: ignore[no-untyped-call]
            assert a.grad is not None and c.grad is not None
            value_err = abs(loss.item() - ref.item()) / ref.item()
            grad_err = float((c.grad.double().cpu() - a.grad).abs().max() / a.grad.abs().max())
            key = f"tau{tau}_{str(dtype).removeprefix('torch.')}"
            out[key] = {"value_rel_err": value_err, "grad_rel_err": grad_err,
                        "ok": value_err < tol and grad_err < 10 * tol}
    return out


def view_stats(x: torch.Tensor) -> dict[str, float]:
    """Statistics that the recipe fixes: channel means and spread, share of grey views."""
    x = x.double().cpu()
    grey = (x.amax(1) - x.amin(1)).flatten(1).amax(1) < 1e-6  # all channels equal everywhere
    return {"mean": float(x.mean()), "std": float(x.std()), "grey_fraction": float(grey.float().mean()),
            **{f"mean_c{c}": float(x[:, c].mean()) for c in range(x.shape[1])}}


def sources(images: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """The first n 32 px images, enlarged to `size` (uint8, nearest neighbour) for the 96 px cases."""
    x = images[:n]
    return x if size == x.shape[-1] else torch.nn.functional.interpolate(x.float(), size=size).byte()


def check_augment(device: torch.device, images: torch.Tensor, small: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size, augment in ((32, ImageAugment(32, color_jitter_strength=0.5, blur_prob=0.0)), (96, ImageAugment(96))):
        # enough views for ~1% sampling error, few enough for the CPU side to be quick
        x = sources(images, (2048 if size == 32 else 512) // (16 if small else 1), size)
        cpu = view_stats(torch.cat(two_views(augment, x, torch.Generator().manual_seed(1))))
        gpu = view_stats(torch.cat(two_views(augment, x.to(device), torch.Generator(device=device).manual_seed(1))))
        diffs = {k: abs(cpu[k] - gpu[k]) for k in cpu}
        # Different random streams: statistics agree to sampling error (~1/sqrt(views)).
        ok = all(d < 0.02 for k, d in diffs.items() if k != "grey_fraction") and diffs["grey_fraction"] < 0.03
        out[f"{size}px"] = {"cpu": cpu, "cuda": gpu, "ok": ok}
    return out


def check_compiled_augment(device: torch.device, images: torch.Tensor, small: bool = False) -> dict[str, Any]:
    """compile=true against eager on the device, same seed: the compiled jitter kernels and the
    shifted-sum blur (Triton kernels on CUDA) must give the same views (1e-5 on the CPU)."""
    out: dict[str, Any] = {}
    for size, kwargs in ((32, {"color_jitter_strength": 0.5, "blur_prob": 0.0}), (96, {})):
        x = sources(images, (256 if size == 32 else 128) // (8 if small else 1), size).to(device)
        views = [torch.cat(two_views(ImageAugment(size, compiled=c, **kwargs), x,  # type: ignore[arg-type]
                                     torch.Generator(device=device).manual_seed(2))) for c in (False, True)]
        diff = float((views[0] - views[1]).abs().max())
        out[f"{size}px"] = {"max_abs_diff": diff, "ok": diff < 1e-4}
    return out


def check_autocast(device: torch.device, encoder: str = "resnet18", n: int = 64) -> dict[str, Any]:
    """One bf16-autocast loss of a ResNet-18 against float32 on the same views."""
    torch.manual_seed(0)
    model = build_model(encoder, 3, 32).to(device)
    x1, x2 = torch.rand(2, n, 3, 32, 32, device=device)
    with torch.no_grad():
        z1, z2 = model(x1, x2)
        ref = nt_xent(z1, z2, temperature=TEMPERATURE).item()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            z1, z2 = model(x1, x2)
        low = nt_xent(z1, z2, temperature=TEMPERATURE).item()
    return {"float32": ref, "bf16_autocast": low, "rel_err": abs(low - ref) / ref, "ok": abs(low - ref) / ref < 1e-2}


# --------------------------------------------------------------------------------------------
# Figures


def bench_augment(device: torch.device, images: torch.Tensor, batch: int, iters: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for compiled in (False, True):  # compile=true: the colour jitter fused (Triton kernels on CUDA)
        for size, augment in ((32, ImageAugment(32, color_jitter_strength=0.5, blur_prob=0.0, compiled=compiled)),
                              (96, ImageAugment(96, compiled=compiled))):
            x = sources(images, batch, size).to(device)  # nearest-neighbour: whole levels, no rounding needed
            gen = torch.Generator(device=device).manual_seed(0)
            seconds = timed(lambda: two_views(augment, x, gen), device, iters, warmup=4 if compiled else 2)  # noqa: B023
            out[f"{size}px{'_compiled' if compiled else ''}"] = {"images_per_s": len(x) / seconds, "batch": len(x)}
    return out


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def bench_loss(device: torch.device, sizes: tuple[int, ...], iters: int) -> dict[str, Any]:
    impls: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "ours": lambda a, b: nt_xent(a, b, temperature=TEMPERATURE),
        "naive": lambda a, b: naive_nt_xent(a, b, TEMPERATURE),
    }
    try:
        from lightly.loss import NTXentLoss

        lightly_loss = NTXentLoss(temperature=TEMPERATURE)
        impls["lightly"] = lambda a, b: lightly_loss(a, b)
    except ImportError:
        pass
    out: dict[str, Any] = {}
    for n in sizes:
        z1, z2 = (torch.randn(n, 128, device=device).requires_grad_() for _ in range(2))
        row: dict[str, Any] = {}
        for name, fn in impls.items():
            step = _loss_step(fn, z1, z2)
            row[name] = {"seconds": timed(step, device, iters), "peak_mib": peak_memory_mib(step, device),
                         "value": step()}
        out[str(n)] = row
    return out


def _loss_step(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z1: torch.Tensor, z2: torch.Tensor
) -> Callable[[], float]:
    def step() -> float:
        z1.grad = z2.grad = None
        loss = fn(z1, z2)
        loss.backward()  # type: ignore[no-untyped-call]
        return float(loss.detach())

    return step


def bench_training(device: torch.device, encoder: str, size: int, batch: int, iters: int, bf16: bool,
                   compiled: bool = False, channels_last: bool = True, warmup: int | None = None) -> dict[str, Any]:
    """Full steps as `simclr train` takes them (`build_augment`'s views on the device, then
    `train_step`: both views through the network, loss, LARS) against the encoder's forward +
    backward alone on views of the same shape; images/s of the full step. `compiled`: the
    `compile=true` path, torch.compile on the network (and on the encoder alone for the
    reference) and the fused augmentation. `first_step_s` and `first_encoder_pass_s`: the first
    calls, compiling included."""
    torch.manual_seed(0)
    model = build_model(encoder, 3, size).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(model, "lars", 0.3 * batch / 256, 1e-6)
    augment = build_augment(Config().augment, size, compiled=compiled)  # the cifar recipe up to 64 px
    net: torch.nn.Module = torch.compile(model) if compiled else model  # type: ignore[assignment]
    encoder_net: torch.nn.Module = torch.compile(model.encoder) if compiled else model.encoder  # type: ignore[assignment]
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def full() -> None:
        x1, x2 = (v.contiguous(memory_format=fmt) for v in two_views(augment, x, gen))
        train_step(net, optimizer, x1, x2, TEMPERATURE, bf16)

    views = torch.cat(two_views(augment, x, gen)).contiguous(memory_format=fmt)

    def encoder_alone() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            h = encoder_net(views)
        h.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    start = time.perf_counter()
    full()  # compiles, with compile=true
    sync(device)
    compile_s = time.perf_counter() - start
    warmup = warmup if warmup is not None else 3 if compiled else 2  # after the first call
    step_s = timed(full, device, iters, warmup)
    start = time.perf_counter()
    encoder_alone()
    sync(device)
    encoder_compile_s = time.perf_counter() - start
    enc_s = timed(encoder_alone, device, iters, warmup)
    return {"images_per_s": batch / step_s, "step_s": step_s, "encoder_s": enc_s, "overhead": step_s / enc_s,
            "encoder": encoder, "size": size, "batch": batch, "bf16": bf16, "compiled": compiled,
            "channels_last": channels_last, "first_step_s": compile_s, "first_encoder_pass_s": encoder_compile_s}


# (name, encoder, image size, batch, bf16): the step-overhead cases, each eager (the ResNets compiled too)
TRAIN_CASES = (
    ("resnet18_32px_fp32", "resnet18", 32, 256, False),
    ("resnet18_32px_bf16", "resnet18", 32, 512, True),
    ("small_cnn_32px_fp32", "small_cnn", 32, 512, False),
    ("resnet50_224px_bf16", "resnet50", 224, 128, True),
)
# The compiled cases, most wanted first (the one with a target); compiling a ResNet's step and
# its encoder alone takes tens of seconds, so the budget may leave the last ones out.
COMPILED_FIRST = ("resnet18_32px_bf16",)
COMPILED_LATER = ("resnet18_32px_fp32", "resnet50_224px_bf16")
COMPILE_COST_S = {"resnet18": 45.0, "resnet50": 75.0}  # a guess for one case on an H100, compiling included


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    # not results/gpu.json: that file is gpu.sh's whole report (gpu_tta.py summary), of which this is a part
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "gpu-out" / "bench.json"))
    parser.add_argument("--budget-s", type=float, default=None,
                        help="end within this many seconds: parts that would not fit are written as skipped")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks that this script runs")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.smoke else "cuda")
    small = args.smoke
    started = time.perf_counter()
    res: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": "cpu (smoke test)" if small else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": small,
    }
    if small:  # compiling on 2 CPU cores takes minutes: the compiled variants run eagerly here
        import torch._dynamo as dynamo

        dynamo.config.disable = True
        res["note"] = "smoke: torch.compile disabled, small CNNs at 16 px batch 8; nothing measured"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    images = torch.randint(0, 256, (512 if small else 8192, 3, 32, 32), dtype=torch.uint8)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {msg}", flush=True)

    def write() -> None:
        res["total_s"] = time.perf_counter() - started
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")

    def section(key: str, fn: Callable[[], Any], cost_s: float = 0.0) -> None:
        """Run one part (expected to take `cost_s`); a failure is recorded and the rest still
        runs. The JSON is rewritten before and after every part, so a run stopped by its time
        limit keeps what it measured and names the part it was in."""
        elapsed = time.perf_counter() - started
        if args.budget_s is not None and elapsed + cost_s > args.budget_s:
            res[key] = {"skipped": f"time budget: {elapsed:.0f} s spent, this part needs about {cost_s:.0f} s "
                                   f"of the {args.budget_s:.0f} s"}
            log(f"{key}: skipped (time budget)")
            write()
            return
        res[key] = {"error": "unfinished: stopped by the time limit"}
        write()
        try:
            res[key] = fn()
            log(f"{key}: {json.dumps(res[key])}")
        except Exception as exc:  # the report names it; the other parts go on
            res[key] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{key} FAILED: {res[key]['error']}")
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        write()

    def train_case(name: str, compiled: bool) -> None:
        _, encoder, size, batch, bf16 = next(case for case in TRAIN_CASES if case[0] == name)
        if small:
            encoder, size, batch = "small_cnn", 16, 8
        section(f"train_{name}{'_compiled' if compiled else ''}",
                partial(bench_training, device, encoder, size, batch, 1 if small else 10, bf16, compiled,
                        warmup=0 if small else None), cost_s=COMPILE_COST_S.get(encoder, 0.0) if compiled else 0.0)

    # Checks compare against the CPU; in --smoke mode both sides are the CPU.
    section("check_loss", lambda: check_loss(device, 64 if small else 1024))
    section("check_augment", lambda: check_augment(device, images, small))
    section("check_autocast", lambda: check_autocast(device, "small_cnn" if small else "resnet18", 8 if small else 64))
    for name, *_ in TRAIN_CASES:
        train_case(name, compiled=False)
    for name in COMPILED_FIRST:
        train_case(name, compiled=True)
    section("check_compiled_augment", lambda: check_compiled_augment(device, images, small))
    section("augment", lambda: bench_augment(device, images, 16 if small else 4096, 1 if small else 20))
    section("loss", lambda: bench_loss(device, (64,) if small else (256, 1024, 4096, 8192), 1 if small else 10))
    for name in COMPILED_LATER:
        train_case(name, compiled=True)
    def measured(key: str) -> bool:  # neither failed, skipped nor unfinished
        return key in res and not {"error", "skipped"} & set(res[key])

    train = {k.removeprefix("train_"): v for k, v in res.items() if k.startswith("train_") and measured(k)}

    def ok(key: str) -> bool:
        value = res.get(key, {})
        if not measured(key):
            return False
        return all(v["ok"] for v in value.values()) if key != "check_autocast" else bool(value["ok"])

    res["checks_ok"] = all(ok(k) for k in ("check_loss", "check_augment", "check_compiled_augment", "check_autocast"))
    write()

    print(f"\nSimCLR on {res['device']} ({res['date']}), checks {'passed' if res['checks_ok'] else 'FAILED'}")
    print(f"{'case':<50} {'figure':>12}")
    for size, r in res["augment"].items() if measured("augment") else ():
        print(f"{'augment two views ' + size + ', images/s':<50} {r['images_per_s']:>12.0f}")
    for n, row in res["loss"].items() if measured("loss") else ():
        for impl, r in row.items():
            mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f} MiB"
            print(f"{f'nt_xent N={n} {impl}: ms, peak':<50} {r['seconds'] * 1e3:>12.2f} {mem:>10}")
    for name, r in train.items():
        print(f"{name + ': images/s (overhead)':<50} {r['images_per_s']:>12.0f} {r['overhead']:>10.3f}")
    print(f"{res['total_s']:.0f} s; figures in {args.out}")
    return 0 if res["checks_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
