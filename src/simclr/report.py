"""report.html for a run: config, evaluation table, training curves, an embedding map and a
gallery of augmented view pairs, so a user sees what SimCLR (Chen et al. 2020,
arXiv:2002.05709) learned and what its augmentations (section 3) do to their data.

Self-contained: every figure is a PNG written beside the page and also inlined (base64), so
report.html opens offline on its own. Each part is drawn from what exists; a missing
eval.json, metrics file, encoder, data or label set leaves that part out with a line saying so.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from simclr.augment import ImageAugment
from simclr.evaluate import extract_features, load_eval
from simclr.metrics import run_verdict

log = logging.getLogger("simclr")

FIGURES = ("curves.png", "embedding_map.png", "augmentations.png")

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; } .muted { color: #777; }
.verdict { background: #fff4e5; border-left: 4px solid #e8a33d; padding: 0.5em 1em; }
"""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; unreadable lines (say, a last line cut by a crash) are skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _save(fig: Figure, path: Path) -> str:
    """Write the figure as a PNG beside the report; return it as an inline <img>."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def _series(rows: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    points = [(float(r[x]), float(r[y])) for r in rows if isinstance(r.get(x), int | float) and
              isinstance(r.get(y), int | float)]
    return [p[0] for p in points], [p[1] for p in points]


def curves_figure(rows: list[dict[str, Any]]) -> Figure | None:
    """Loss and learning rate against the step, and kNN accuracy against the epoch when logged."""
    panels = [(x, y) for x, y in (("step", "loss"), ("step", "lr"), ("epoch", "knn")) if _series(rows, x, y)[0]]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.2), layout="constrained")
    titles = {"loss": "NT-Xent loss", "lr": "learning rate", "knn": "kNN accuracy (held out)"}
    for ax, (x, y) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        xs, ys = _series(rows, x, y)
        ax.plot(xs, ys, marker="o" if y == "knn" else None, markersize=3)
        ax.set_xlabel(x)
        ax.set_title(titles[y])
        ax.grid(alpha=0.3)
    return fig


def embedding_map_figure(
    h: np.ndarray, labels: np.ndarray | None, classes: list[str] | None, seed: int
) -> Figure:
    """A 2-D t-SNE of the representations h, one colour per label (none without labels)."""
    from sklearn.manifold import TSNE

    n = len(h)
    xy = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(h)
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, color="#4a6fa5", alpha=0.7, linewidths=0)
    else:
        values = np.unique(labels)
        if len(values) <= 20:  # distinct qualitative colours
            palette = matplotlib.colormaps["tab10" if len(values) <= 10 else "tab20"]
            colours = [palette(i) for i in range(len(values))]
        else:
            colours = list(matplotlib.colormaps["turbo"](np.linspace(0, 1, len(values))))
        for c, colour in zip(values, colours, strict=True):
            name = classes[c] if classes is not None and 0 <= c < len(classes) else str(c)
            at = labels == c
            ax.scatter(xy[at, 0], xy[at, 1], s=6, color=colour, label=name, alpha=0.8, linewidths=0)
        if len(values) <= 20:
            ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of h, {n} inputs")
    return fig


def _show(ax: Any, image: torch.Tensor) -> None:
    """One (C, H, W) image in [0, 1] on an axis, grey for one channel."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def gallery_figure(
    images: torch.Tensor, augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor], seed: int
) -> Figure:
    """Each column: an input x above its two independently augmented views t(x) and t'(x)."""
    gen = torch.Generator().manual_seed(seed)
    x1, x2 = augment(images, gen), augment(images, gen)  # (n, c, s, s) each
    n = len(images)
    fig = Figure(figsize=(1.3 * n, 4.2), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    for row, (title, batch) in enumerate((("input x", images.float() / 255), ("view t(x)", x1), ("view t'(x)", x2))):
        for i in range(n):
            _show(axes[row][i], batch[i].clamp(0, 1))
        axes[row][0].set_ylabel(title, fontsize=9)
    return fig


def _table(results: dict[str, dict[str, float]]) -> str:
    metrics = list(dict.fromkeys(m for row in results.values() for m in row))
    head = "<tr><th>encoder</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in metrics) + "</tr>"
    body = []
    for name, row in results.items():
        cells = "".join(
            f"<td>{100 * row[m]:.1f}</td>" if m in row and np.isfinite(row[m]) else "<td>–</td>" for m in metrics
        )
        body.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def build_report(
    run_dir: Path, encoder: nn.Module | None = None, data: Any | None = None,
    augment: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor] | None = None,
    device: torch.device | str = "cpu", seed: int = 0, max_points: int = 2000, gallery_size: int = 8,
    gallery: Callable[[Any, Any, int], Figure] | None = None,
) -> Path:
    """Write RUN_DIR/report.html (and its PNGs beside it) and return its path.

    From the run directory: config.yaml, eval.json and metrics.jsonl, each optional. With an
    `encoder` and `data`: a t-SNE map of h for up to `max_points` inputs (a seeded sample),
    coloured by label when `data` has labels. With `data`: `gallery_size` inputs next to two
    views from `augment` (the run's augmentation; the paper's defaults if None), drawn by
    `gallery(data_subset, augment, seed)` (the modality's picture: images, plotted series, text
    spans; image tiles if None). The encoder's weights, buffers and mode are not changed.
    """
    run_dir = Path(run_dir)
    for name in FIGURES:  # a rebuild never shows a stale figure
        (run_dir / name).unlink(missing_ok=True)
    parts = [f"<h1>SimCLR run <code>{html.escape(run_dir.resolve().name)}</code></h1>",
             f'<p class="muted">Generated {datetime.now():%Y-%m-%d %H:%M} from {html.escape(str(run_dir))}</p>']

    parts.append("<h2>Evaluation</h2>")
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        results, notes = load_eval(eval_path)
        line = run_verdict(results, run_dir)
        if line:  # at the top: a baseline beat SimCLR
            parts.insert(2, f"<p class='verdict'>{html.escape(line)}</p>")
        parts.append("<p>Top-1 test accuracy (%), final checkpoint; – where a metric does not apply.</p>")
        parts.append(_table(results))
        parts += [f"<p class='muted'>Note: {html.escape(n)}</p>" for n in notes]
    else:
        parts.append("<p class='muted'>No eval.json: run <code>simclr eval RUN_DIR</code> with labelled data.</p>")

    parts.append("<h2>Training curves</h2>")
    metrics_path = run_dir / "metrics.jsonl"
    fig = curves_figure(read_metrics(metrics_path)) if metrics_path.is_file() else None
    parts.append(_save(fig, run_dir / "curves.png") if fig else "<p class='muted'>No metrics.jsonl rows.</p>")

    parts.append("<h2>Embedding map</h2>")
    if encoder is not None and data is not None and len(data) >= 5:
        rows = torch.as_tensor(_sample(len(data), max_points, seed))
        h = extract_features(encoder, data.inputs[rows], device=device).numpy()
        labels = data.labels[rows].numpy() if data.labels is not None else None
        classes = data.classes
        parts.append(_save(embedding_map_figure(h, labels, classes, seed), run_dir / "embedding_map.png"))
        if labels is None:
            parts.append("<p class='muted'>The data has no labels, so the points are not coloured.</p>")
    else:
        parts.append("<p class='muted'>Needs the encoder and at least 5 inputs.</p>")

    parts.append("<h2>Augmented view pairs</h2>")
    if data is not None and len(data) > 0:
        which = "the run's augmentation" if augment is not None else "the paper's default augmentation"
        augment = augment or ImageAugment(size=data.image_size)
        pick = torch.as_tensor(_sample(len(data), gallery_size, seed + 1))
        parts.append(f"<p>Two independent random views of each input, from {which}.</p>")
        shown = data.subset(pick)
        figure = gallery(shown, augment, seed) if gallery else gallery_figure(shown.inputs, augment, seed)
        parts.append(_save(figure, run_dir / "augmentations.png"))
    else:
        parts.append("<p class='muted'>Needs the data.</p>")

    parts.append("<h2>Config</h2>")
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        parts.append(f"<pre>{html.escape(config_path.read_text())}</pre>")
    else:
        parts.append("<p class='muted'>No config.yaml.</p>")

    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>SimCLR report: "
            f"{html.escape(run_dir.resolve().name)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    log.info("wrote %s", out)
    return out
