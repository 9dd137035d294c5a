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
    """benchmarks/quality_series.py --encoder gru --encoder lstm: each set and recurrent encoder
    at the same CPU budget as the FCN table, against random init and 1-NN on the raw series."""
    lines = [
        "`python benchmarks/quality_series.py --encoder gru --encoder lstm`: "
        "`benchmarks/results/quality_series_gru_lstm.json`.",
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


TABLES: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "speed": ("bench.json", lambda r: speed_table(r)),
    "speed-headline": ("bench.json", lambda r: speed_table(r, headline=True)),
    "cpu-tuning": ("cpu_tuning.json", cpu_tuning_table),
    "demo": ("demo.json", eval_table),
    "memory": ("memory.json", memory_table),
    "defaults": ("defaults.json", defaults_table),
    "series-encoders": ("quality_series_gru_lstm.json", series_encoders_table),
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
