"""End to end through the command line: one epoch on digits, and bad input giving one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEST_DEVICE
from safetensors.torch import load_file

from simclr.config import load_config
from simclr.device import native_bf16
from simclr.model import build_encoder, build_model

TIMEOUT = 300  # seconds; the 1-epoch run takes ~10 s on 2 cores


def simclr_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "simclr", *args]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    work = tmp_path_factory.mktemp("cli")
    out = work / "run"
    proc = subprocess.run(
        simclr_command("train", "--epochs", "1", "--out", str(out), TEST_DEVICE, "eval_finetune=false",
                       "report=false"),
        cwd=work, env=environment(), capture_output=True, text=True, timeout=TIMEOUT,
    )
    return out, proc


def test_train_succeeds(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "encoder.safetensors", "eval.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]  # atomic writes left nothing behind


def test_the_log_names_the_precision_auto_chose(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, proc = run  # digits are images: bf16 on CUDA and on CPUs that compute it natively
    bf16 = TEST_DEVICE != "device=cpu" or native_bf16()
    assert f"precision {'bf16 autocast' if bf16 else 'float32'}" in proc.stderr
    assert "(precision=auto)" in proc.stderr


def test_resolved_config_saved(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    cfg = load_config(out / "config.yaml")
    assert cfg.epochs == 1 and cfg.out == str(out) and cfg.data.source == "digits"
    # what the defaults left to the data, chosen: 1,797 digits pretrain (both halves), 1797 / 8 → 128
    assert (cfg.batch_size, cfg.data.pretrain_on, cfg.optim.name, cfg.optim.lr_scaling) == (128, "all", "lars", "sqrt")
    assert (out / "config.yaml").read_text().startswith("# schedule: 14 steps = 1 epochs × 14 at global batch 128")


def test_metrics_lines(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        assert {"step", "epoch", "loss", "lr", "images_per_s"} <= set(row)
        assert row["epoch"] == 1 and row["step"] >= 1
        assert 0 < row["loss"] < 10 and row["lr"] > 0 and row["images_per_s"] > 0
    steps = [row["step"] for row in rows]
    assert steps == sorted(steps)


def test_tensorboard_events(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


def test_checkpoint_loads_without_pickled_code(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "config"} <= set(state)
    assert state["config"]["epochs"] == 1
    model = build_model("small_cnn", in_channels=1, image_size=16)
    model.load_state_dict(state["model"], strict=True)


def test_encoder_safetensors_loads_strictly(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    weights = load_file(str(out / "encoder.safetensors"))
    encoder = build_encoder("small_cnn", in_channels=1, image_size=16)
    encoder.load_state_dict(weights, strict=True)
    # It is the trained encoder, not a fresh one: it matches the checkpoint's encoder part.
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    for key, value in weights.items():
        assert torch.equal(value, state["model"][f"encoder.{key}"])


def test_eval_json(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = run
    results = json.loads((out / "eval.json").read_text())
    assert {"simclr", "random_init", "raw_pixels"} <= set(results)
    for name in ("simclr", "random_init", "raw_pixels"):
        row = results[name]
        assert {"linear", "knn", "few_shot_5"} <= set(row)
        assert all(0 <= row[m] <= 1 for m in ("linear", "knn", "few_shot_5"))
    assert results["raw_pixels"]["linear"] > 0.8  # digits are easy from pixels: a sanity floor
    assert "few_shot_5" in proc.stderr + proc.stdout  # the table is printed


def test_console_script_installed() -> None:
    script = Path(sys.executable).parent / "simclr"
    assert script.is_file() and os.access(script, os.X_OK)
    assert "simclr.cli" in script.read_text()


# Bad input: exit code 2 and one line `error: ...` naming the problem. Each case is the
# argument list after `simclr train` and a word the message must contain.
BAD_INPUT = {
    "temperature": (["temperature=0"], "temperature"),
    "batch_size": (["--batch-size", "1"], "batch_size"),
    "encoder": (["model.encoder=foo"], "foo"),
    "unknown_key": (["foo=1"], "foo"),
    "data_path": (["--data", "/nonexistent/path"], "/nonexistent/path"),
    "out_not_writable": (["--out", "{tmp}/a_file/run"], "a_file"),
    "unknown_flag": (["--frobnicate"], "--frobnicate"),
    "wrong_type": (["epochs=abc"], "epochs"),
    "missing_config": (["--config", "{tmp}/missing.yaml"], "missing.yaml"),
    "malformed_config": (["--config", "{tmp}/broken.yaml"], "broken.yaml"),
}
# Interpreter start-up costs seconds, so these go through a real process (all at once); the
# rest call the same `main` in this process.
IN_SUBPROCESS = ("temperature", "out_not_writable")


def bad_argv(case: str, tmp: Path) -> list[str]:
    argv = [a.format(tmp=tmp) for a in BAD_INPUT[case][0]]
    return argv if "--out" in argv else [*argv, "--out", str(tmp / f"run-{case}")]


@pytest.fixture(scope="module")
def bad_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "a_file").write_text("a regular file, not a directory\n")
    (tmp / "broken.yaml").write_text("epochs: [1\n")
    return tmp


@pytest.fixture(scope="module")
def bad_runs(bad_tmp: Path) -> dict[str, tuple[int, str]]:
    procs = {
        case: subprocess.Popen(
            simclr_command("train", *bad_argv(case, bad_tmp)), cwd=bad_tmp, env=environment(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for case in IN_SUBPROCESS
    }
    results = {}
    for case, p in procs.items():
        _, stderr = p.communicate(timeout=TIMEOUT)
        results[case] = (p.returncode, stderr)
    return results


def check_error(code: int, stderr: str, word: str) -> None:
    assert "Traceback" not in stderr, stderr[-2000:]
    assert code == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert word in lines[0]


@pytest.mark.parametrize("case", IN_SUBPROCESS)
def test_bad_input_in_a_process(case: str, bad_runs: dict[str, tuple[int, str]]) -> None:
    check_error(*bad_runs[case], BAD_INPUT[case][1])


@pytest.mark.parametrize("case", sorted(set(BAD_INPUT) - set(IN_SUBPROCESS)))
def test_bad_input(
    case: str, bad_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from simclr.cli import main

    monkeypatch.chdir(bad_tmp)
    code = main(["train", *bad_argv(case, bad_tmp)])
    check_error(code, capsys.readouterr().err, BAD_INPUT[case][1])


def test_bad_data_path_leaves_no_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Input is checked before anything is written: a typo in --data must not leave an empty
    # runs/<name>-<time>/ behind.
    from simclr.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "/nonexistent/path"]) == 2
    assert "/nonexistent/path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
