"""Text quality benchmark: AG News (test split, 7,600 texts, 4 topics) and SMS Spam (5,574, 13% spam).

Protocol: SimCLR pretrains on every text of the set without labels (`data.pretrain_on=all`);
the labelled texts are split 50/50 (stratified, seeded); probes are fit on the first half and
scored on the second. Baseline: TF-IDF (word 1-2-grams) + logistic regression on the same
labels. Few-label rows use 10 labels per class, averaged over 5 draws of those labels.
SMS Spam also reports F1 of the spam class.

    python benchmarks/quality_text.py [--budget-s 600] [--only ag_news]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from simclr import Run, load_config
from simclr.evaluate import balanced_subset, extract_features  # the evaluation suite's own helpers
from simclr.text import tfidf_lr  # the text modality's baseline
from simclr.training import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CASES = {
    "ag_news": [f"data.source={SHARED / 'ag_news_test' / 'test.csv'}"],
    "sms_spam": [f"data.source={SHARED / 'sms_spam' / 'SMSSpamCollection'}", "data.modality=text"],
}
SETTINGS = ["text.encoder=transformer", "text.width=128", "text.layers=1", "text.max_length=64", "batch_size=128",
            "optim.name=adamw", "optim.lr=0.001", "optim.lr_scaling=none", "optim.weight_decay=0.01",
            "temperature=0.2", "data.pretrain_on=all", "eval_finetune=false", "report=false", "eval_every=0",
            "eval_few_shot=10", "threads=1", "device=cpu", "log_every=20"]
SHOTS, DRAWS = 10, 5


def probe(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray) -> np.ndarray:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    return clf.fit(xtr, ytr).predict(xte)  # type: ignore[no-any-return]


def scores(y: np.ndarray, predicted: np.ndarray, binary: bool) -> dict[str, float]:
    out = {"acc": float((predicted == y).mean())}
    if binary:
        out["f1"] = float(f1_score(y, predicted, pos_label=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    parser.add_argument("--out", default="runs/quality_text")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, dict[str, object]] = {}
    for name in args.only or sorted(CASES):
        source = CASES[name][0].split("=", 1)[1]
        if not Path(source).exists():
            print(f"{name}: skipped, {source} is absent")
            continue
        out = Path(args.out) / name
        cfg = load_config(None, [*SETTINGS, *CASES[name], *args.overrides, f"epochs={args.epochs}", f"out={out}"])
        start = time.perf_counter()
        _, evaluation = train(cfg)
        wall = time.perf_counter() - start
        assert evaluation is not None
        run = Run.open(out)
        encoder = run.encoder
        tr, te = run.datasets()
        assert te is not None and tr.labels is not None and te.labels is not None
        ytr, yte = tr.labels.numpy(), te.labels.numpy()
        binary = len(np.unique(ytr)) == 2
        htr, hte = extract_features(encoder, tr.inputs).numpy(), extract_features(encoder, te.inputs).numpy()
        row: dict[str, object] = {"epochs": args.epochs, "wall_s": round(wall), "suite": evaluation}
        row["simclr_full"] = scores(yte, probe(htr, ytr, hte), binary)
        row["tfidf_full"] = scores(yte, tfidf_lr(tr.texts, ytr, te.texts, yte)[1], binary)
        few: dict[str, list[dict[str, float]]] = {"simclr": [], "tfidf": []}
        for draw in range(DRAWS):
            idx = balanced_subset(ytr, SHOTS, draw)
            few["simclr"].append(scores(yte, probe(htr[idx], ytr[idx], hte), binary))
            few["tfidf"].append(scores(yte, tfidf_lr([tr.texts[i] for i in idx], ytr[idx], te.texts, yte)[1], binary))
        for who, runs in few.items():
            row[f"{who}_{SHOTS}shot"] = {m: float(np.mean([r[m] for r in runs])) for m in runs[0]}
        results[name] = row
        print(json.dumps({k: v for k, v in row.items() if k != "suite"}), flush=True)
    Path("benchmarks/results/quality_text.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n| set | metric | SimCLR {SHOTS}/class | TF-IDF+LR {SHOTS}/class | SimCLR all labels "
          "| TF-IDF+LR all labels |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        for m in r["simclr_full"]:  # type: ignore[attr-defined]
            keys = (f"simclr_{SHOTS}shot", f"tfidf_{SHOTS}shot", "simclr_full", "tfidf_full")
            cells = [r[k][m] for k in keys]  # type: ignore[index]
            print(f"| {name} | {m} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
