"""The README's front page stays short, its links resolve, and its quick start and Python example run
as written (with tiny settings appended, on the embedded digits)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Appended to each quick-start command so that it runs in seconds on a CPU.
TINY = {
    "train": ["--epochs", "1", "eval_finetune=false", "device=cpu", "threads=1", "report=false"],
    "eval": ["--no-finetune", "device=cpu", "threads=1"],
}


def fenced(text: str, after: str, language: str) -> str:
    """The first ```language block after the line `after`."""
    start = text.index(after)
    match = re.compile(rf"^```{language}\n(.*?)^```$", re.S | re.M).search(text, start)
    assert match, f"no ```{language} block after {after!r} in README.md"
    return match.group(1)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{shlex.join(command)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; the manual is docs/"


def test_readme_starts_with_the_two_setup_commands() -> None:
    head = "\n".join(README.read_text().splitlines()[:6])
    assert re.search(r"^\s+make demo\s+#", head, re.M) and re.search(r"^\s+make test\s+#", head, re.M)


def test_every_relative_link_in_readme_exists() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets
    missing = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor within the README
        path = target.split("#", 1)[0]
        if not (ROOT / path).exists():
            missing.append(target)
    assert not missing, f"README.md links to missing files: {missing}"


def test_quick_start_runs(tmp_path: Path) -> None:
    block = fenced(README.read_text(), "## Quick start", "sh")
    commands = [shlex.split(line, comments=True) for line in block.splitlines()]
    commands = [c for c in commands if c]
    assert [c[:2] for c in commands] == [["simclr", "train"], ["simclr", "eval"], ["simclr", "export"]]
    for command in commands:
        if "--data" in command:  # the placeholder folder -> the embedded digits
            command[command.index("--data") + 1] = "digits"
        run([sys.executable, "-m", "simclr", *command[1:], *TINY.get(command[1], [])], tmp_path)
    run_dir = tmp_path / commands[0][commands[0].index("--out") + 1]
    for name in ("encoder.safetensors", "eval.json", "MODEL_CARD.md", "encoder.pt"):
        assert (run_dir / name).is_file(), name


def test_python_example_runs(tmp_path: Path) -> None:
    code = fenced(README.read_text(), "## Python", "python")
    assert len(code.splitlines()) <= 10
    assert 'data="photos/"' in code and "epochs=50" in code
    # Real data in place of the placeholder folder: 600 of scikit-learn's digits as uint8 images,
    # 16 px as `make demo` has them, with their labels; one epoch, no fine-tuning, one thread.
    code = code.replace('data="photos/"', "data=images, labels=labels").replace(
        "epochs=50", 'epochs=1, eval_finetune=False, device="cpu", threads=1, report=False'
    )
    prelude = textwrap.dedent("""\
        import numpy as np
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images[:600] * (255 / 16)).round().astype(np.uint8).repeat(2, 1).repeat(2, 2)
        labels = digits.target[:600]
        """)
    epilogue = textwrap.dedent("""\
        assert h.shape[0] == len(images) and h.dtype == torch.float32, h.shape
        assert 0.0 <= results["simclr"]["linear"] <= 1.0, results
        assert (run.dir / "encoder.pt").is_file() and (run.dir / "inputs.npz").is_file()
        assert isinstance(run.encoder, torch.nn.Module)
        """)
    script = tmp_path / "example.py"
    script.write_text(prelude + code + "import torch\n" + epilogue)
    run([sys.executable, str(script)], tmp_path)
