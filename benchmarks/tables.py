"""Write the documentation's tables from the committed results files.

    .venv/bin/python benchmarks/tables.py           # rewrite the tables in README.md and docs/
    .venv/bin/python benchmarks/tables.py --check   # exit 1 if a table differs from its results file

Each table sits between `<!-- table:NAME -->` and `<!-- end:NAME -->` in a Markdown file; NAME
picks the results file and how it is rendered (TABLES). A figure in the docs is thus always one
of a committed results file's, and `--check` (run by the test suite) keeps them in step.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def number(x: float | None, unit: str = "") -> str:
    if x is None:
        return "–"
    text = f"{x:.3g}" if unit == "s" or abs(x) < 10 else f"{x:,.0f}"
    return f"{text} {unit}".strip() if unit in ("s", "MiB") else text


def speed_rows(res: dict[str, Any], headline: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = res["table"]
    if headline:  # the rows with a target, and the end-to-end ones
        rows = [r for r in rows if r["target"] or r["what"].startswith("end-to-end")]
    return rows


def speed_table(res: dict[str, Any], headline: bool = False) -> str:
    m = res["machine"]
    lines = [
        f"`make bench` of {res['date'][:16].replace('T', ' ')} UTC on {m['cpu']} ({m['cores']} cores, native bf16: "
        f"{'yes' if m['native_bf16'] else 'no'}, `precision=auto` → {m['precision_auto']}), torch {m['torch']}"
        f"{', --quick' if res.get('quick') else ''}: `benchmarks/results/bench.json`.",
        "",
        "| case | ours | peer | ratio | target | rounds |",
        "|---|---|---|---|---|---|",
    ]
    for r in speed_rows(res, headline):
        unit = r["unit"] if r["unit"] in ("s", "MiB") else ""
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        target = r["target"].replace(">=", "≥").replace("<=", "≤")
        if r["met"] is not None:
            target += " (met)" if r["met"] else " (**missed**)"
        rounds = ", ".join(f"{x:.2f}" for x in r.get("rounds") or [])
        lines.append(f"| {r['what']} | {number(r['ours'], unit)} | {number(r['peer'], unit)} | {ratio} | {target} "
                     f"| {rounds} |")
    return "\n".join(lines)


def cpu_tuning_table(res: dict[str, Any]) -> str:
    """benchmarks/results/cpu_tuning.json: each contender's images/s, ratio to the plain
    allocator (median of the rounds' ratios) and peak RSS, per workload."""
    med = res["medians"]
    workloads = list(med)
    head = " | ".join(f"{w} images/s | × plain | peak RSS MiB" for w in workloads)
    lines = [f"| contender | {head} |", "|---|" + "---|---|---|" * len(workloads)]
    contenders = list(dict.fromkeys(c for w in workloads for c in med[w]))
    for c in contenders:
        cells = []
        for w in workloads:
            m = med[w].get(c)
            cells += ([f"{m['images_per_s']:,.1f}" if m["images_per_s"] < 100 else f"{m['images_per_s']:,.0f}",
                       f"{m['speed_vs_plain']:.2f}", f"{m['peak_rss_mib']:,.0f}"] if m else ["not run", "", ""])
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_table(res: dict[str, Any]) -> str:
    """An eval.json (encoder -> metric -> accuracy) as the README's table."""
    rows = {name: row for name, row in res.items() if isinstance(row, dict)}
    metrics = list(dict.fromkeys(m for row in rows.values() for m in row))
    lines = ["| encoder | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, row in rows.items():
        cells = ["–" if row.get(m) is None else f"{row[m]:.4f}" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(res: dict[str, Any]) -> str:
    s, r, c = res["streamed"], res["in_ram"], res["convert"]
    lines = [
        f"`python benchmarks/memory.py` of {res['date']}, torch {res['torch']}, {res['cpu_count']} CPU cores, "
        f"no GPU: {res['images']:,} generated 96 px images ({res['cache_gib']:.2f} GiB decoded), one epoch, "
        f"`{s['command'].split(' --data ')[1].split(' data.cache_dir')[0].split(' ', 1)[1]}`; "
        "`benchmarks/results/memory.json`.",
        "",
        "| run | peak anonymous memory | images/s | wall |",
        "|---|---|---|---|",
        f"| first load: conversion into the cache | {number(c['peak_anon_mib'], 'MiB')} | – "
        f"| {number(c['wall_s'], 's')} |",
        f"| streamed from the cache (`data.device_resident=false`) | {number(s['peak_anon_mib'], 'MiB')} "
        f"| {number(s['images_per_s'])} | {number(s['wall_s'], 's')} |",
        f"| the set in RAM (`data.device_resident=true`) | {number(r['peak_anon_mib'], 'MiB')} "
        f"| {number(r['images_per_s'])} | {number(r['wall_s'], 's')} |",
        "",
        f"Streamed, the decoded set is {res['cache_over_streamed_peak']:.1f}× the process's peak anonymous memory, "
        f"at {res['streamed_speed_vs_in_ram']:.2f}× the speed with the set in RAM.",
    ]
    return "\n".join(lines)


def defaults_verdict(name: str, case: dict[str, Any]) -> str:
    """Issue 29's bar for the row: images of 1,000 (digits too) must beat random init by 5 points
    on kNN and the 5-label probe, with a linear probe at least random init's and within a point
    of raw pixels'; images of 5,000 must beat raw pixels on all three; series must beat 1-NN
    Euclidean with the linear probe, text TF-IDF + logistic regression with the same 5 labels."""
    r = case["results"]
    ours, rand, base = r["simclr"], r["random_init"], r[case["baseline"]]
    if case["baseline"] == "raw_pixels" and not name.endswith("-5k"):
        missed = [f"{m} +{100 * (ours[m] - rand[m]):.1f} over random" for m in ("knn", "few_shot_5")
                  if ours[m] < rand[m] + 0.05]
        if ours["linear"] < rand["linear"] or ours["linear"] < base["linear"] - 0.01:
            missed.append("linear")
    elif case["baseline"] == "raw_pixels":
        missed = [m for m in ("linear", "knn", "few_shot_5") if ours[m] <= base[m]]
    elif "nn1_euclidean" in base:  # series: the archive's reference classifier, on all labels
        missed = [] if ours["linear"] > base["nn1_euclidean"] else ["linear vs 1-NN"]
    else:  # text: TF-IDF + logistic regression with the same few labels
        missed = [] if ours["few_shot_5"] > base["few_shot_5"] else ["5-label vs TF-IDF"]
    return "met" if not missed else "**missed**: " + ", ".join(missed)


def defaults_table(res: dict[str, Any]) -> str:
    """benchmarks/defaults.py: each set with no flags, SimCLR / random init / the baseline."""
    lines = [
        f"`python benchmarks/defaults.py` on {res['machine']['cpu']} ({res['machine']['cores']} cores), no flags "
        "but `--data` and `--out`; `benchmarks/results/defaults.json`. Each cell: SimCLR / random init / raw "
        "inputs (raw pixels, raw series, TF-IDF); 5-label: the mean of 5 draws of 5 labels per class.",
        "",
        "| set | date | schedule | training | linear | kNN | 5-label | 1-NN raw | bar |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, case in res["cases"].items():
        if "error" in case:
            lines.append(f"| {name} | {case['date'][:10]} | – | – | error: {case['error']} | | | | **missed** |")
            continue
        r, base = case["results"], case["baseline"]
        cells = [" / ".join(f"{r[k][m]:.3f}" for k in ("simclr", "random_init", base)) for m in
                 ("linear", "knn", "few_shot_5")]
        nn1 = r[base].get("nn1_euclidean")
        sched = (case.get("schedule") or "").removeprefix("schedule: ").split(" (")[0]
        lines.append(f"| {name} | {case['date'][:10]} | {sched} | {number(case['train_s'], 's')} | "
                     + " | ".join(cells) + f" | {'–' if nn1 is None else f'{nn1:.3f}'} | "
                     f"{defaults_verdict(name, case)} |")
    return "\n".join(lines)


def series_encoders_table(res: dict[str, Any]) -> str:
    """benchmarks/quality_series.py --encoder E ...: each set and encoder at the same CPU budget as
    the FCN table, against random init and 1-NN on the raw series."""
    encoders = list(dict.fromkeys(key.split("/")[1] for key in res))
    lines = [
        f"`python benchmarks/quality_series.py {' '.join(f'--encoder {e}' for e in encoders)}`: "
        f"`benchmarks/results/quality_series_{'_'.join(encoders)}.json`.",
        "",
        "| set | encoder | epochs | wall | SimCLR linear | SimCLR kNN | random-init linear | random-init kNN "
        "| 1-NN ED (raw) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in res.items():
        name, encoder = key.split("/")
        s, r = row["simclr"], row["random_init"]
        nn1 = row["raw_series"]["nn1_euclidean"]
        lines.append(f"| {name} | {encoder} | {row['epochs']} | {row['wall_s']:.0f} s | {s['linear']:.4f} "
                     f"| {s['knn']:.4f} | {r['linear']:.4f} | {r['knn']:.4f} | {nn1:.4f} |")
    return "\n".join(lines)


def missing(x: Any) -> bool:
    return x is None or x != x  # null, or NaN (some results files hold NaN)


def best_bold(values: list[Any], fmt: Callable[[float], str]) -> list[str]:
    """Each value formatted ("–" if missing), the largest in bold (with every one that ties with
    it once formatted): for the tables that mark the best cell of a row or a column."""
    cells = ["–" if missing(v) else fmt(v) for v in values]
    present = [float(v) for v in values if not missing(v)]
    top = fmt(max(present)) if present else None
    return [f"**{c}**" if c == top else c for c in cells]


def columns(cells: list[list[str]]) -> list[list[str]]:
    """Transpose: a list of columns' cells as a list of rows' cells."""
    return [list(row) for row in zip(*cells, strict=True)]


def four(x: float) -> str:
    return f"{x:.4f}"


def three(x: float) -> str:
    return f"{x:.3f}"


QUALITY_METRICS = ("linear", "knn", "few_shot_5", "linear_1pct", "linear_10pct", "finetune_1pct", "finetune_10pct")
# The sets of benchmarks/quality.py: their name in the docs and training images (the data's size,
# not a measurement), for the steps = epochs × whole batches per epoch.
QUALITY_SETS = {"mnist": ("MNIST", 60_000), "cifar10": ("CIFAR-10 subset", 20_000)}


def quality_table(res: dict[str, Any]) -> str:
    """benchmarks/quality.py: each image set's SimCLR / random-init / raw-pixel rows, the best of
    the three in bold per metric, the metrics that are measured for some row (finetune_* only when
    the script ran with fine-tuning)."""
    sets = [s for s in QUALITY_SETS if s in res] + [s for s in res if s not in QUALITY_SETS]
    encoders = ("simclr", "random_init", "raw_pixels")
    metrics = [m for m in QUALITY_METRICS if any(not missing(res[s][e].get(m)) for s in sets for e in encoders)]
    lines = [
        "`make bench-quality` (`python benchmarks/quality.py`): `benchmarks/results/quality.json`.",
        "",
        "| set | epochs (steps) | encoder | " + " | ".join("kNN" if m == "knn" else m for m in metrics) + " |",
        "|---|" + "---|" * (2 + len(metrics)),
    ]
    for s in sets:
        r = res[s]
        label, images = QUALITY_SETS.get(s, (s, None))
        steps = f" ({r['epochs'] * (images // r['batch_size']):,})" if images else ""
        cols = [best_bold([r[e].get(m) for e in encoders], four) for m in metrics]
        for i, (e, cells) in enumerate(zip(encoders, columns(cols), strict=True)):
            head = f"| {label} | {r['epochs']}{steps} |" if i == 0 else "| | |"
            lines.append(f"{head} {'**simclr**' if e == 'simclr' else e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def probe_table(res: dict[str, Any]) -> str:
    """benchmarks/probe.py: the torch linear probe against scikit-learn's on the same features."""
    (n, d), grid = res["train"], ", ".join(f"{c:g}" for c in res["grid"])
    sk, ours = res["scikit-learn"], res["ours"]
    return "\n".join([
        f"`python benchmarks/probe.py` on {res['features']} ({n:,} training rows of {d}, {res['test'][0]:,} test "
        f"rows), {res['threads']} threads, C ∈ {{{grid}}}: `benchmarks/results/probe.json`.",
        "",
        "| probe | seconds | test accuracy |",
        "|---|---|---|",
        f"| scikit-learn `LogisticRegression` | {sk['seconds']:.1f} | {sk['accuracy']:.4f} |",
        f"| ours (`simclr/probe.py`, torch L-BFGS) | {ours['seconds']:.1f} ({sk['seconds'] / ours['seconds']:.2f}× "
        f"faster) | {ours['accuracy']:.4f} |",
    ])


# The archive's set shapes (channels × length, train / test cases), not measurements.
SERIES_SETS = {"PenDigits": "2 × 8 | 7494 / 3498", "UWaveGestureLibrary": "3 × 315 | 120 / 320",
               "Epilepsy": "3 × 206 | 137 / 138", "RacketSports": "6 × 30 | 151 / 152",
               "Libras": "2 × 45 | 180 / 180", "SwedishLeaf": "1 × 128 | 500 / 625", "TwoLeadECG": "1 × 82 | 23 / 1139"}


def series_table(res: dict[str, Any], command: str, file: str, shapes: bool) -> str:
    """benchmarks/quality_series.py with the FCN: per set, SimCLR's linear probe and kNN, the
    random-init FCN's linear probe and 1-NN Euclidean on the raw series; the better of SimCLR's
    linear probe and 1-NN in bold."""
    head = "| set | C × T | train / test | epochs | wall |" if shapes else "| set | epochs |"
    knn = "SimCLR kNN" if shapes else "SimCLR kNN (k=5)"
    lines = [f"`{command}`: `benchmarks/results/{file}`.", "",
             f"{head} SimCLR linear | {knn} | random-init FCN linear | **1-NN ED (raw)** |",
             "|---|" + "---|" * (head.count("|") - 2 + 4)]
    for name, row in res.items():
        s, r = row["simclr"], row["random_init"]
        ours, nn1 = best_bold([s["linear"], row["raw_series"]["nn1_euclidean"]], four)
        meta = f"| {name} | {SERIES_SETS.get(name, '– | –')} | {row['epochs']} | {row['wall_s']:.0f} s |" if shapes \
            else f"| {name} | {row['epochs']} |"
        lines.append(f"{meta} {ours} | {s['knn']:.4f} | {r['linear']:.4f} | {nn1} |")
    return "\n".join(lines)


TEXT_SETS = {"ag_news": "AG News", "sms_spam": "SMS Spam"}
TEXT_METRICS = {"acc": "accuracy", "f1": "F1 of spam"}


def text_table(res: dict[str, Any]) -> str:
    """benchmarks/quality_text.py: SimCLR features against TF-IDF + LR with a few labels per class
    and with all labels, the better of the two in bold at each budget."""
    few = next(k.removeprefix("simclr_") for r in res.values() for k in r if k.endswith("shot"))
    shots = few.removesuffix("shot")
    lines = [
        "`python benchmarks/quality_text.py`: `benchmarks/results/quality_text.json`.",
        "",
        f"| set | metric | SimCLR linear, {shots}/class | TF-IDF + LR, {shots}/class | SimCLR linear, all labels "
        "| TF-IDF + LR, all labels |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        for metric, label in TEXT_METRICS.items():
            if not all(metric in r[k] for k in (f"simclr_{few}", f"tfidf_{few}", "simclr_full", "tfidf_full")):
                continue
            cells = [*best_bold([r[f"simclr_{few}"][metric], r[f"tfidf_{few}"][metric]], four),
                     *best_bold([r["simclr_full"][metric], r["tfidf_full"][metric]], four)]
            lines.append(f"| {TEXT_SETS.get(name, name)} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


V2_DEFAULTS = {"dataset": "digits", "pool": 1000, "test": 797, "epochs": 30, "distill_epochs": 30}


def v2_table(res: dict[str, Any]) -> str:
    """benchmarks/v2.py: fine-tuning on 1 % / 10 % of the labels from h and from the head's first
    layer, for each head, the self-distilled student, and the supervised baseline; the best of
    each column in bold."""
    settings = res["settings"]
    flags = "".join(f" --{k.replace('_', '-')} {settings[k]}" for k, v in V2_DEFAULTS.items() if settings.get(k) != v)
    layers = {"h": "h", "head1": "head layer 1"}
    sup = res["v1"]["supervised"]
    rows = [("none (supervised from scratch, same labels and budget) | – | no",
             [sup["finetune_1pct"], sup["finetune_10pct"]])]
    for version, head in (("v1", "v1 (2 layers)"), ("v2", "v2 (3 layers, BN)")):
        r = res[version]
        for i, (layer, text) in enumerate(layers.items()):
            keys = ("finetune_1pct", "finetune_10pct") if layer == "h" else (f"finetune_{layer}_1pct",
                                                                               f"finetune_{layer}_10pct")
            rows.append((f"{head if i == 0 else version} | {text} | no", [r["simclr"][k] for k in keys]))
        teacher = next(n.split("fine-tuned from ")[1].split(";")[0] for n in r["distill-1pct"]["notes"]
                       if "fine-tuned from" in n)
        rows.append((f"{version} | {layers.get(teacher, teacher)} (teacher) | self-distilled student",
                     [r[f"distill-{p}"]["student"][f"classifier_{p}"] for p in ("1pct", "10pct")]))
    cols = [best_bold([row[1][i] for row in rows], lambda x: f"{100 * x:.1f}") for i in range(2)]
    lines = [f"`python benchmarks/v2.py{flags}`: `benchmarks/results/v2_{settings['dataset']}.json`.", "",
             "| pretraining head | fine-tuned from | distilled | 1 % labels | 10 % labels |",
             "|---|---|---|---|---|"]
    lines += [f"| {text} | {a} | {b} |" for (text, _), (a, b) in zip(rows, columns(cols), strict=True)]
    return "\n".join(lines)


def paired_table(res: dict[str, Any], case: str, command: str) -> str:
    """benchmarks/quality_paired.py, one case: zero-shot, retrieval both ways and the first side's
    linear probe and kNN for the paired encoders, both at random init, and the raw inputs; the best
    of each metric in bold."""
    r = res[case]
    raw = next(k for k in r if k.startswith("raw_"))
    first = "image" if raw == "raw_pixels" else "series"
    a, b = first[0], "t"  # retrieval keys: i2t_r1, t2i_r5, s2t_r10, ...
    rows = {f"paired ({r['epochs']} epochs)": r["paired"], "random_init (both encoders)": r["random_init"],
            raw: r[raw]}
    metrics = ["zero_shot", *(f"{a}2{b}_r{k}" for k in (1, 5, 10)), *(f"{b}2{a}_r{k}" for k in (1, 5, 10)),
               "linear", "knn"]
    cols = columns([best_bold([row.get(m) for row in rows.values()], three) for m in metrics])
    lines = [
        f"`python benchmarks/quality_paired.py {command}`: `benchmarks/results/quality_paired.json`.",
        "",
        f"| encoder | zero-shot | {first}→text R@1 / R@5 / R@10 | text→{first} R@1 / R@5 / R@10 | {first} linear "
        f"| {first} kNN |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in zip(rows, cols, strict=True):
        recall = [" / ".join(c[1:4]), " / ".join(c[4:7])]
        recall = ["–" if x == "– / – / –" else x for x in recall]
        lines.append(f"| {name} | {c[0]} | {recall[0]} | {recall[1]} | {c[7]} | {c[8]} |")
    return "\n".join(lines)


def moving_mnist_table(res: dict[str, Any]) -> str:
    """benchmarks/moving_mnist.py: the held-out clips' top-1 for the SimCLR encoder, the same
    network at random init and raw pixels of the central clip; the best of each metric in bold."""
    r = res["results"]
    names = {"simclr": f"simclr ({res['epochs']} epochs)", "random_init": "random_init (same network)",
             "raw_pixels": "raw_pixels (central clip, 16 px)"}
    metrics = [m for m in QUALITY_METRICS if any(not missing(r[e].get(m)) for e in names)]
    cols = columns([best_bold([r[e].get(m) for e in names], three) for m in metrics])
    lines = [f"`{res['command']}`: `benchmarks/results/moving_mnist.json`.", "",
             "| encoder | " + " | ".join("kNN" if m == "knn" else m for m in metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    lines += [f"| {label} | " + " | ".join(c) + " |" for label, c in zip(names.values(), cols, strict=True)]
    return "\n".join(lines)


def encoders_table(res: dict[str, Any]) -> str:
    """benchmarks/encoders.py: size, activation memory and CPU time of the registered encoders."""
    m = res["machine"]
    lines = [
        f"`python benchmarks/encoders.py` of {res['date'][:10]}, torch {res['torch']}, {m['threads']} threads on "
        f"{m['cores']} cores (1-minute load {m['load_1min']:.1f}): `benchmarks/results/encoders.json`.",
        "",
        "| encoder | params (M) | h size | activations kept for backward, per image, 32 px (CIFAR stem) "
        "| 224 px (ImageNet stem) | CPU ms / image, fwd+bwd, 32 px |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(f"| `{r['encoder']}` | {r['params_m']:.1f} | {r['h_size']} | {r['activations_mib_32']:.2f} MiB "
                     f"| {r['activations_mib_224']:.0f} MiB | {r['cpu_ms_per_image_32']:.1f} |")
    return "\n".join(lines)


TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "speed": ("bench.json", lambda r: speed_table(r)),
    "speed-headline": ("bench.json", lambda r: speed_table(r, headline=True)),
    "cpu-tuning": ("cpu_tuning.json", cpu_tuning_table),
    "demo": ("demo.json", eval_table),
    "memory": ("memory.json", memory_table),
    "defaults": ("defaults.json", defaults_table),
    "series-encoders": ("quality_series_gru_lstm.json", series_encoders_table),
    "series-pooling": ("quality_series_fcn_fcn_s4.json", series_encoders_table),
    "encoders": ("encoders.json", encoders_table),
    "quality": ("quality.json", quality_table),
    "probe": ("probe.json", probe_table),
    "series": ("quality_series.json", lambda r: series_table(
        r, "python benchmarks/quality_series.py", "quality_series.json", shapes=True)),
    "series-aeon": ("quality_series_aeon.json", lambda r: series_table(
        r, "python benchmarks/quality_series.py --root .../aeon/datasets/data"
        + "".join(f" --only {name}" for name in r)
        + " --budget-s 60 --results benchmarks/results/quality_series_aeon.json",
        "quality_series_aeon.json", shapes=False)),
    "text": ("quality_text.json", text_table),
    "v2-mnist": ("v2_mnist.json", v2_table),
    "v2-digits": ("v2_digits.json", v2_table),
    "paired-cifar10": ("quality_paired.json", lambda r: paired_table(r, "cifar10", "--budget-min 10")),
    "paired-pendigits": ("quality_paired.json", lambda r: paired_table(r, "pendigits", "--case pendigits --epochs 30")),
    "moving-mnist": ("moving_mnist.json", moving_mnist_table),
}
BLOCK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- end:\2 -->)", re.S)


def render(name: str) -> str:
    if name not in TABLES:
        raise SystemExit(f"unknown table {name!r} (known: {', '.join(TABLES)})")
    file, make = TABLES[name]
    return make(json.loads((RESULTS / file).read_text())) + "\n"


def update(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="report tables that differ from their results")
    args = parser.parse_args()
    stale = []
    for path in DOCS:
        text = path.read_text()
        new = update(text)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("tables differ from benchmarks/results/ in: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
              + "; run: python benchmarks/tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
