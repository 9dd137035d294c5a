"""End to end through the command line: one epoch on digits, and bad input giving one error line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_DEVICE
from safetensors.torch import load_file
from sklearn.neighbors import KNeighborsClassifier

from simclr.config import Config, load_config
from simclr.device import native_bf16
from simclr.evaluate import extract_features, seeded
from simclr.experiment import load_datasets
from simclr.modality import get
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
                       "report=false", "log_every=1"),
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
    assert [row["step"] for row in rows] == list(range(1, 15))  # log_every=1: all 14 steps
    for row in rows:
        assert {"step", "epoch", "loss", "lr", "images_per_s"} <= set(row)
        assert row["epoch"] == 1 and row["lr"] > 0 and row["images_per_s"] > 0
    losses = [row["loss"] for row in rows]
    # A network at init barely tells a view's positive from the 254 negatives: the first loss is
    # near chance, ln(2N - 1) = ln 255 = 5.54 (5.48-5.52 measured over seeds 0-2, 2026-12-06);
    # a loss summed over both directions (11) or with the self-similarity left in (6.0) is not.
    assert abs(losses[0] - math.log(255)) < 0.15
    # ...and it learns within the epoch: the last four steps' mean is 0.11-0.13 below the first
    # four's (seeds 0-2), where one step's loss wanders by about 0.04.
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses


def test_tensorboard_events(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


def test_checkpoint_loads_without_pickled_code(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "config"} <= set(state)
    assert state["config"]["epochs"] == 1
    model = build_model(Config().model.encoder, in_channels=1, image_size=16)
    model.load_state_dict(state["model"], strict=True)


def test_encoder_safetensors_loads_strictly(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = run
    weights = load_file(str(out / "encoder.safetensors"))
    encoder = build_encoder(Config().model.encoder, in_channels=1, image_size=16)
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
        assert {"linear", "knn", "few_shot_5"} <= set(results[name])
    # kNN against scikit-learn's on the same features (the run's own split, k = 200, votes
    # exp(cosine / 0.1)): the trained encoder's (encoder.safetensors), the seeded random one's
    # and the pixels'.
    cfg = load_config(out / "config.yaml")
    train, test = load_datasets(cfg, get("image"))
    assert train.labels is not None and test is not None and test.labels is not None
    trained = build_encoder(cfg.model.encoder, in_channels=1, image_size=16)
    trained.load_state_dict(load_file(str(out / "encoder.safetensors")), strict=True)
    random_init = seeded(lambda: build_encoder(cfg.model.encoder, in_channels=1, image_size=16), cfg.seed)
    features = {name: (extract_features(f, train.inputs), extract_features(f, test.inputs))
                for name, f in (("simclr", trained), ("random_init", random_init))}
    features["raw_pixels"] = (train.inputs.flatten(1).float() / 255, test.inputs.flatten(1).float() / 255)
    for name, (xtr, xte) in features.items():
        knn = KNeighborsClassifier(200, metric="cosine", algorithm="brute", weights=lambda d: np.exp((1 - d) / 0.1))
        expected = knn.fit(xtr.numpy(), train.labels.numpy()).score(xte.numpy(), test.labels.numpy())
        # within one test image: a tie at the 200th neighbour may break either way
        assert results[name]["knn"] == pytest.approx(expected, abs=1.01 / len(test.labels)), name
    assert results["raw_pixels"]["linear"] > 0.8  # digits are easy from pixels: a sanity floor
    assert "few_shot_5" in proc.stderr + proc.stdout  # the table is printed


@pytest.mark.parametrize(("change", "key"), [(["model.encoder=resnet18"], "model.encoder"),
                                            (["--data", "mnist"], "data.source")])
def test_resume_refuses_another_model_or_data_source(
    run: tuple[Path, subprocess.CompletedProcess[str]], change: list[str], key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README: a different data.* or model.* setting is refused on resume (the saved config is
    compared key by key), before anything is written."""
    from simclr.cli import main

    out, _ = run
    checkpoint = (out / "checkpoint.pt").stat().st_mtime_ns
    assert main(["train", "--resume", str(out), *change]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and key in err, err
    assert (out / "checkpoint.pt").stat().st_mtime_ns == checkpoint


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
