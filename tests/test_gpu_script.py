"""benchmarks/gpu.sh, the one script a GPU session runs, in its --smoke mode: every stage on the
CPU at tiny sizes on small generated zips, and the gpu.json a real run would write."""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
CLASSES = ("airplane", "automobile", "bird", "cat")


def cifar_like_zip(path: Path, split: str, per_class: int) -> None:
    """`<split>/<class>/NNNN.<ext>` 32 px images, JPEG and PNG, a colour per class plus noise."""
    rng = random.Random(split)
    with zipfile.ZipFile(path, "w") as z:
        for c, name in enumerate(CLASSES):
            for i in range(per_class):
                base = (60 * c, 200 - 50 * c, 30 + 40 * c)
                pixels = bytes(max(0, min(255, base[k % 3] + rng.randint(-40, 40))) for k in range(32 * 32 * 3))
                fmt, ext = ("PNG", "png") if i % 4 == 0 else ("JPEG", "jpg")
                buf = io.BytesIO()
                Image.frombytes("RGB", (32, 32), pixels).save(buf, fmt)
                z.writestr(f"{split}/{name}/{i:04d}.{ext}", buf.getvalue())


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # the inner pytest is its own run
    env["PYTHON"] = sys.executable
    return env


def numbers(value: Any, where: str = "") -> list[tuple[str, float]]:
    """Every number in a JSON value, with its path."""
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in numbers(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in numbers(v, f"{where}[{i}]")]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [(where, float(value))]
    return []


def finite(record: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(record.get(key), (int, float)) and math.isfinite(record[key]), (key, record)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    data = tmp_path_factory.mktemp("gpu-data")
    cifar_like_zip(data / "cifar10-train-jpeg.zip", "train", 30)  # the smoke run takes the first 24 per class
    cifar_like_zip(data / "cifar10-test-jpeg.zip", "test", 8)
    out = tmp_path_factory.mktemp("gpu-out")
    proc = subprocess.run(["bash", str(SCRIPT), "--smoke", "--out", str(out), str(data)], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=300)
    result = json.loads((out / "gpu.json").read_text()) if (out / "gpu.json").is_file() else {}
    return proc, result


def test_smoke_run_succeeds(smoke: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    proc, res = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert res["smoke"] is True and res["card"] and res["torch"] and res["date"]
    for stage in ("bench", "tta", "suite"):
        assert res["stages"][stage]["rc"] == 0, res["stages"]


def test_every_number_is_finite(smoke: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, res = smoke
    found = numbers(res)
    assert found
    assert all(math.isfinite(v) for _, v in found), [n for n in found if not math.isfinite(n[1])]


def test_checks_and_overhead(smoke: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, res = smoke
    assert res["checks"]["ok"] is True
    for check in ("check_loss", "check_augment", "check_compiled_augment", "check_autocast"):
        assert "error" not in res["checks"][check] and "skipped" not in res["checks"][check]
    for case in ("resnet18_32px_fp32", "resnet18_32px_bf16", "resnet50_224px_bf16"):
        for mode in ("eager", "compiled"):
            finite(res["overhead"][case][mode], "step_s", "encoder_s", "overhead", "images_per_s")
        assert res["overhead"][case]["compiled"]["compiled"] is True
    for size in ("32px", "96px", "32px_compiled", "96px_compiled"):
        finite(res["figures"]["augment"][size], "images_per_s")


def test_time_to_accuracy(smoke: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, res = smoke
    tta = res["tta"]
    assert len(tta["curve"]) >= 1
    for point in tta["curve"]:
        finite(point, "elapsed_s", "knn", "epoch")
        assert 0 <= point["knn"] <= 1
    finite(tta, "linear", "train_s", "final_knn", "wall_s")
    assert tta["settings"]["epochs"] == tta["trained_epochs"] == tta["epochs"]["chosen"]
    assert tta["eval"]["simclr"]["linear"] == tta["linear"]


def test_suite_and_no_claimed_target(smoke: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, res = smoke
    suite = res["suite"]
    assert suite["finished"] and suite["passed"] > 0 and suite["failed"] == suite["error"] == 0
    targets = res["targets"]
    assert targets["claimed"] is False
    assert targets["overhead"]["met_eager"] is None and targets["knn"]["met"] is None


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine would run the real thing")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "out"), str(tmp_path)], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "no NVIDIA GPU" in proc.stdout


def test_bad_option_exits_2() -> None:
    proc = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--frobnicate" in proc.stderr and "usage:" in proc.stderr
