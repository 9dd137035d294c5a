"""The wheel, installed as a user installs it: into a fresh virtual environment that sees only
the core dependencies (no matplotlib, TensorBoard, tokenizers, PyAV or ONNX). `simclr
--version`, `simclr config` and a short `simclr train` on the embedded digits must work there,
and asking for the report must give the one-line hint naming the extra.

The core dependencies are not downloaded: this environment's installed copies of them (and of
what they require, transitively) are linked into a folder the fresh environment reads through
a .pth file, so the test needs no network and takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ["torch", "torchvision", "numpy", "scikit-learn", "safetensors", "omegaconf", "PyYAML", "tqdm", "pillow"]
OPTIONAL = ["matplotlib", "tensorboard", "tokenizers", "av", "onnx", "onnxscript"]

packaging = pytest.importorskip("packaging.requirements")


def closure(names: list[str]) -> set[str]:
    """The installed distributions `names` need, transitively (extras and other platforms' markers skipped)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or []:
            req = packaging.Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def link_site(names: set[str], folder: Path) -> None:
    """Link each distribution's top-level files and folders (from its RECORD) into `folder`."""
    folder.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        for file in dist.files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            source = Path(str(dist.locate_file(top)))
            target = folder / top
            if source.exists() and not target.exists():
                target.symlink_to(source)


@pytest.fixture(scope="module")
def core_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((work / "dist").glob("simclr_torch-*.whl"))
    needed = closure(CORE)
    assert not needed & set(OPTIONAL), "a core dependency pulls in an optional one"
    link_site(needed, work / "core-site")
    venv.create(work / "env", with_pip=True)
    python = work / "env" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "core.pth").write_text(str(work / "core-site") + "\n")
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return work


def simclr_in(env: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(env / "env" / "bin" / "simclr"), *args], cwd=cwd, env=clean, capture_output=True,
                          text=True, timeout=300)


def test_the_wheel_works_with_the_core_dependencies_only(core_env: Path) -> None:
    python = core_env / "env" / "bin" / "python"
    for module in OPTIONAL:  # really absent
        probe = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True)
        assert probe.returncode != 0, f"{module} is importable in the core environment"
    import simclr

    version = simclr_in(core_env, "--version", cwd=core_env)
    assert version.returncode == 0 and version.stdout.strip() == f"simclr {simclr.__version__}"
    config = simclr_in(core_env, "config", cwd=core_env)
    assert config.returncode == 0 and "temperature: float = 0.2" in config.stdout
    trained = simclr_in(core_env, "train", "--epochs", "1", "--out", "run", "--config", "cifar10", "batch_size=64",
                        "model.encoder=small_cnn", "data.source=digits", "data.image_size=16", "data.channels=1",
                        "eval_finetune=false", "device=cpu", cwd=core_env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Traceback" not in trained.stderr
    assert "report.html is off: pip install 'simclr-torch[report]' adds it" in trained.stderr
    assert "TensorBoard logging is off" in trained.stderr
    assert {"encoder.safetensors", "eval.json", "MODEL_CARD.md"} <= {p.name for p in (core_env / "run").iterdir()}
    report = simclr_in(core_env, "report", "run", cwd=core_env)
    assert report.returncode == 2
    assert report.stderr.strip().splitlines() == [
        "error: report.html needs the [report] extra: pip install 'simclr-torch[report]'"]
