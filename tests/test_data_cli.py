"""Real-data paths through `simclr train`: bad files survived and listed, empty data refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_data import write_awkward, write_broken, write_good


def train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIMCLR_CACHE": str(out.parent / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "simclr", "train", "--data", str(data), "--out", str(out), "--epochs", "1",
         "--batch-size", "32", "report=false", "eval_finetune=false", "threads=1", *extra],
        capture_output=True, text=True, timeout=600, env=env,
    )


def test_mixed_folder_trains_and_lists_exactly_the_broken_files(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_good(folder, 100)
    awkward = write_awkward(folder)
    broken = write_broken(folder)
    result = train(folder, tmp_path / "run", "data.image_size=16")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (tmp_path / "run" / "skipped_files.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in lines) == sorted(broken)
    assert f"{len(broken)} files skipped" in result.stderr
    assert (tmp_path / "run" / "encoder.safetensors").exists()
    assert len(awkward) >= 8  # the awkward files were among those used, not skipped
    # embed names every used file by its path in the folder, and no broken one
    out = tmp_path / "h.npz"
    env = {**os.environ, "SIMCLR_CACHE": str(tmp_path / "cache")}
    embed = subprocess.run([sys.executable, "-m", "simclr", "embed", str(tmp_path / "run"), "--data", str(folder),
                            "--out", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert embed.returncode == 0, embed.stderr[-3000:]
    ids = np.load(out)["ids"].tolist()
    assert len(ids) == 100 + len(awkward) and "good_0000.jpg" in ids and not set(ids) & set(broken)


def test_strict_stops_at_a_broken_file(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_good(folder, 40)
    (folder / "zero.jpg").write_bytes(b"")
    result = train(folder, tmp_path / "run", "--strict")
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "zero.jpg" in result.stderr and "Traceback" not in result.stderr


def test_empty_folder_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = train(tmp_path / "empty", tmp_path / "run")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_fewer_images_than_one_batch_is_a_one_line_error(tmp_path: Path) -> None:
    write_good(tmp_path / "few", 10)
    result = train(tmp_path / "few", tmp_path / "run")
    assert result.returncode == 2 and "fewer than one batch" in result.stderr and "Traceback" not in result.stderr
