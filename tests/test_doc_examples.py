"""Every Python example of docs/ runs, with a small workspace prepared for it: a folder of
images (`photos/`) and a trained ResNet-18 run (`runs/mine`), and tiny settings substituted
for the long ones (`epochs=50` becomes one epoch), so no example can rot unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import simclr

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
EXAMPLES = [(f"{page.name}:{text[:m.start()].count(chr(10)) + 1}", m.group(1))
            for page in sorted((ROOT / "docs").glob("*.md")) for text in [page.read_text()]
            for m in BLOCK.finditer(text)]
TINY = 'epochs=1, batch_size=64, eval_finetune=False, report=False, device="cpu", threads=1'


def digit_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    images = np.kron((d.images[:n] * 16).clip(0, 255), np.ones((2, 2))).astype(np.uint8)  # 16 px
    return images, d.target[:n]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/<label>/*.png, and runs/mine: a ResNet-18 (CIFAR stem) on 3-channel images, as the
    torchvision example loads it."""
    work = tmp_path_factory.mktemp("examples")
    images, labels = digit_images(200)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = work / "photos" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    rgb = np.repeat(images[:, :, :, None], 3, axis=3)  # (N, H, W, 3)
    run = simclr.train(data=rgb, labels=labels, out=work / "runs" / "mine", model={"encoder": "resnet18"},
                       epochs=1, batch_size=64, eval_finetune=False, report=False, device="cpu", threads=1)
    run.export("torchvision")
    return work


def test_docs_have_python_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_a_documented_python_example_runs(where: str, code: str, workspace: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.sub(r"epochs=\d+", TINY, code)
    monkeypatch.chdir(workspace)
    namespace = {"images": digit_images(10)[0], "__name__": "example"}
    exec(compile(code, where, "exec"), namespace)  # as a user would paste it: any error fails the test
