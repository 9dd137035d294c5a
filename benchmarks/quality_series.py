"""Time-series quality benchmark: the seven UCR/UEA sets in ../shared/datasets/ucr_uea_ts.

Protocol (the transductive one of the SSL time-series literature): pretrain SimCLR on TRAIN+TEST
without labels (`data.pretrain_on=all`), fit the probes on TRAIN labels only, score on TEST.
Baseline: 1-nearest-neighbour with Euclidean distance on the raw series, fit on TRAIN (the
archive's reference classifier). Each set gets a CPU budget: a few real training steps are timed
and the number of epochs is what fits (so the learning-rate schedule runs to its end).

    python benchmarks/quality_series.py [--budget-s 150] [--only Libras ...] [--encoder gru --encoder lstm]

`--encoder` (repeatable; default fcn) runs each set with that `series.encoder`: fcn, fcn_s4,
resnet1d, gru, lstm or transformer, at the encoder's default size. Prints a Markdown table (a row per set
and encoder) and writes benchmarks/results/quality_series.json (FCN alone, keyed by set) or, for
other encoders, quality_series_<encoders>.json keyed "<set>/<encoder>".
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from simclr import build_model, build_optimizer, load_config, train_step, two_views
from simclr.experiment import input_shape_of, load_datasets  # the run's own splits, as `simclr train` loads them
from simclr.modality import get
from simclr.schedule import optimizer_settings
from simclr.series.encoders import ENCODERS
from simclr.training import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ucr_uea_ts"
SETS = ("PenDigits", "UWaveGestureLibrary", "Epilepsy", "RacketSports", "Libras", "SwedishLeaf", "TwoLeadECG")
# Short runs at small batches: square-root LR scaling (SimCLR appendix B.1), temperature 0.2
# for small batches (SIMCLR.md), kNN with k=5 (k=200 exceeds several of these training sets).
SETTINGS = ["batch_size=64", "optim.lr_scaling=sqrt", "optim.lr=0.075", "temperature=0.2",
            "data.pretrain_on=all", "eval_knn_k=5", "eval_finetune=false", "report=false", "eval_every=0",
            "threads=1", "device=cpu", "log_every=50"]


def seconds_per_step(overrides: list[str], steps: int = 4) -> tuple[float, int]:
    """Measured time of one training step (after a warm-up) and the steps in one epoch."""
    cfg = load_config(None, overrides)
    torch.set_num_threads(1)
    modality = get("series")
    train_data, test_data = load_datasets(cfg, modality)
    shape = input_shape_of(train_data)
    model = build_model(modality.build_encoder(cfg, shape, train_data))
    optim = optimizer_settings(cfg.optim, modality.optimizer)  # auto resolved, as training does
    optimizer = build_optimizer(model, optim.name, 0.1, optim.weight_decay)
    augment = modality.build_augment(cfg, shape)
    x = train_data.inputs[: cfg.batch_size]
    train_step(model, optimizer, *two_views(augment, x), cfg.temperature)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, *two_views(augment, x), cfg.temperature)
    n = len(train_data) + (len(test_data) if test_data is not None else 0)
    return (time.perf_counter() - start) / steps, n // cfg.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget-s", type=float, default=150.0, help="pretraining CPU seconds per set")
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--only", action="append", help="a set name (repeatable); default: the seven shared sets")
    parser.add_argument("--root", default=str(SHARED),
                        help="folder of <Name>/<Name>_TRAIN.ts + _TEST.ts, e.g. the data folder of the aeon wheel")
    parser.add_argument("--encoder", action="append", choices=sorted(ENCODERS),
                        help="series.encoder (repeatable); default: fcn")
    parser.add_argument("--results", default=None,
                        help="default: benchmarks/results/quality_series.json for fcn alone, else "
                             "quality_series_<encoders>.json")
    parser.add_argument("--out", default="runs/quality_series")
    parser.add_argument("overrides", nargs="*", help="extra key=value settings for every set")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    encoders = list(dict.fromkeys(args.encoder or ["fcn"]))
    fcn_only = encoders == ["fcn"]
    results_path = args.results or (
        "benchmarks/results/quality_series.json" if fcn_only
        else f"benchmarks/results/quality_series_{'_'.join(encoders)}.json")
    results: dict[str, dict[str, object]] = {}
    for name in args.only or SETS:
        folder = Path(args.root) / name
        if not folder.is_dir():
            print(f"{name}: skipped, {folder} is absent")
            continue
        for encoder in encoders:
            key = name if fcn_only else f"{name}/{encoder}"
            overrides = [*SETTINGS, f"series.encoder={encoder}", *args.overrides, f"data.source={folder}"]
            step_s, steps_per_epoch = seconds_per_step(overrides)
            epochs = max(5, min(args.max_epochs, int(args.budget_s / (step_s * steps_per_epoch))))
            out = Path(args.out) / (name if encoder == "fcn" else f"{name}-{encoder}")
            cfg = load_config(None, [*overrides, f"epochs={epochs}", f"out={out}"])
            print(f"{key}: {step_s:.3f} s/step × {steps_per_epoch} steps/epoch → {epochs} epochs", flush=True)
            start = time.perf_counter()
            _, evaluation = train(cfg)
            assert evaluation is not None
            results[key] = {"encoder": encoder, "epochs": epochs, "wall_s": round(time.perf_counter() - start),
                            "simclr": evaluation["simclr"], "random_init": evaluation["random_init"],
                            "raw_series": evaluation["raw_series"]}
            r = results[key]
            print(f"{key}: linear {evaluation['simclr']['linear']:.4f} kNN {evaluation['simclr']['knn']:.4f} "
                  f"1-NN ED {evaluation['raw_series']['nn1_euclidean']:.4f} ({r['wall_s']} s)", flush=True)
    Path(results_path).write_text(json.dumps(results, indent=2) + "\n")
    print("\n| set | encoder | epochs | wall | SimCLR linear | SimCLR kNN (k=5) | random-init linear "
          "| random-init kNN | 1-NN ED (raw) | beats 1-NN |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    wins = 0
    for key, r in results.items():
        s, rnd, raw = r["simclr"], r["random_init"], r["raw_series"]
        assert isinstance(s, dict) and isinstance(rnd, dict) and isinstance(raw, dict)
        best = max(s["linear"], s["knn"])
        win = best > raw["nn1_euclidean"]
        wins += win
        print(f"| {key.split('/')[0]} | {r['encoder']} | {r['epochs']} | {r['wall_s']} s | {s['linear']:.4f} | "
              f"{s['knn']:.4f} | {rnd['linear']:.4f} | {rnd['knn']:.4f} | {raw['nn1_euclidean']:.4f} | "
              f"{'yes' if win else 'no'} |")
    print(f"\nSimCLR (linear or kNN) beats 1-NN Euclidean on {wins} of {len(results)} runs.")


if __name__ == "__main__":
    main()
