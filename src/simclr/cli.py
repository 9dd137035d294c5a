"""The `simclr` command line: train, export. Bad input ends in one `error: ...` line, exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from simclr.errors import UserError

log = logging.getLogger("simclr")



class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


# The keys each command's --help lists (all of them: `simclr config`).
TRAIN_KEYS = ["model.encoder", "temperature", "optim.name", "optim.lr", "augment.recipe", "augment.min_scale",
              "data.image_size", "data.modality", "data.pretrain_on", "device", "precision", "threads"]
EVAL_KEYS = ["eval_knn_k", "eval_few_shot", "eval_finetune", "eval_finetune_from"]


def build_parser() -> argparse.ArgumentParser:
    from simclr import __version__
    from simclr.reference import epilog

    parser = _Parser(prog="simclr", description="SimCLR contrastive self-supervised learning.")
    parser.add_argument("--version", action="version", version=f"simclr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    keyed = argparse.RawDescriptionHelpFormatter  # the epilog's lines as written

    train = sub.add_parser("train", help="pretrain an encoder (default data: scikit-learn digits)",
                           epilog=epilog(TRAIN_KEYS), formatter_class=keyed)
    train.add_argument("--config", help="a YAML file or a shipped recipe (cifar10, imagenet, series, text); "
                       "flags and key=value overrides apply on top")
    train.add_argument("--data", help="a built-in name (digits, mnist, cifar10, ...) or a path: images (folder, "
                       "zip/tar, npz), time series (.ts, a folder of _TRAIN/_TEST .ts, numeric .csv) or text "
                       "(.txt, .csv/.tsv/.jsonl with a text column), video (a folder of video files) or "
                       "image-text pairs (a .csv/.jsonl manifest with image and text columns); "
                       "data.modality=... forces the kind")
    train.add_argument("--eval-data", help="a separate labelled evaluation set (default: a held-out split of --data)")
    train.add_argument("--strict", action="store_true", help="stop at the first unreadable image, don't skip it")
    train.add_argument("--epochs", type=int, help="default: sized to the data (at least 100 epochs and 2,000 steps)")
    train.add_argument("--time", metavar="DURATION",
                       help="train for about this long, e.g. 10m or 1h30m: the epochs that fit at the step time "
                       "measured on this machine (instead of --epochs)")
    train.add_argument("--batch-size", type=int, help="the global batch; default 256, or 1/8 of a smaller set")
    train.add_argument("--seed", type=int)
    train.add_argument("--out", help="run directory (default runs/<data>-<time>); resumed if it holds a checkpoint")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. temperature=0.2 model.encoder=resnet18")

    evaluate = sub.add_parser("eval", help="evaluate a run's final encoder against baselines",
                              epilog=epilog(EVAL_KEYS), formatter_class=keyed)
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--data", help="labelled data (default: the run's own data and held-out split)")
    evaluate.add_argument("--eval-data", help="a separate labelled test set; --data (or the run's) trains the probes")
    evaluate.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning rows (faster)")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. eval_finetune_from=[h,head1]")

    embed = sub.add_parser("embed", help="write the representation h of every input to an .npz")
    embed.add_argument("run_dir", metavar="RUN_DIR")
    embed.add_argument("--data", required=True)
    embed.add_argument("--out", required=True, help="output .npz (embeddings, ids, labels)")
    embed.add_argument("--side", help="a run with two modalities (paired data): one side only, by its modality "
                       "(default: both)")

    report = sub.add_parser("report", help="rebuild RUN_DIR/report.html")
    report.add_argument("run_dir", metavar="RUN_DIR")

    distill = sub.add_parser(
        "distill", help="SimCLRv2 self-training: a fine-tuned teacher labels unlabelled data for a student"
    )
    distill.add_argument("run_dir", metavar="RUN_DIR")
    distill.add_argument("--data", required=True, help="the unlabelled images (labels, if any, are not used)")
    distill.add_argument("--student", help="the student's encoder (default: the run's own: self-training)")
    distill.add_argument("--labeled-data", help="labelled data for the teacher (default: the run's own split)")
    distill.add_argument("--eval-data", help="a separate labelled test set")
    distill.add_argument("--out", help="output directory (default RUN_DIR/distill-<student>)")
    distill.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. distill.epochs=5")

    export = sub.add_parser("export", help="write the trained encoder's weights for use elsewhere")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", choices=("torchvision", "safetensors", "onnx"), default="torchvision")
    export.add_argument("--out", help="output file (default RUN_DIR/encoder.<format ext>)")

    config = sub.add_parser("config", help="every config key with its default, type and help")
    config.add_argument("prefix", nargs="?", default="", help="only the keys that start with this, e.g. optim")
    return parser


def cmd_train(args: argparse.Namespace) -> None:
    from simclr.checkpoint import load_checkpoint
    from simclr.config import changed_keys, from_dict, load_config
    from simclr.metrics import format_table
    from simclr.run import CHECKPOINT
    from simclr.training import train

    flags = {"data.source": args.data, "data.eval_source": args.eval_data, "data.strict": args.strict or None,
             "epochs": args.epochs, "time_budget": args.time, "batch_size": args.batch_size, "seed": args.seed}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    run_dir = args.resume or args.out
    state: dict[str, Any] | None = None
    if run_dir and (Path(run_dir) / CHECKPOINT).exists():
        state = load_checkpoint(Path(run_dir) / CHECKPOINT)
        saved = from_dict(state["config"])
        if args.time:  # the run's schedule was sized when it started; a resume keeps it
            log.info("resuming: --time %s ignored, the run keeps its %d epochs", args.time, saved.epochs)
            overrides.remove(f"time_budget={args.time}")
        cfg = load_config(args.config, [*overrides, f"out={run_dir}"], base=saved)
        changed = changed_keys(saved, cfg, ("data", "model"))
        if changed:
            raise UserError(f"cannot resume {run_dir} with a different {', '.join(changed)}; use a new --out")
        log.info("resuming %s from step %d", run_dir, state["progress"]["step"])
    elif args.resume:
        raise UserError(f"no checkpoint to resume in {args.resume}")
    else:
        cfg = load_config(args.config, overrides + ([f"out={args.out}"] if args.out else []))
    out, results = train(cfg, state)
    if os.environ.get("RANK", "0") != "0":
        return
    log.info("encoder weights: %s", out / "encoder.safetensors")
    if results is None:
        log.info("no labels in the data: evaluation needs a labelled set")
    else:
        log.info("held-out evaluation (%s):\n%s", out / "eval.json", format_table(results))
        warn_if_beaten(results, out)


def warn_if_beaten(results: dict[str, dict[str, float]], run_dir: Path) -> None:
    """The last line says so when a baseline beats SimCLR (simclr.metrics.verdict)."""
    from simclr.metrics import run_verdict

    line = run_verdict(results, run_dir)
    if line:
        log.warning("%s", line)


def cmd_eval(args: argparse.Namespace) -> None:
    from simclr.card import write_model_card
    from simclr.device import resolve_device
    from simclr.metrics import format_table
    from simclr.run import Run

    run = Run.open(args.run_dir)
    cfg = run.config([f"eval_finetune={not args.no_finetune}", *args.overrides])  # e.g. eval_finetune_from=[h,head1]
    train_data, test_data = run.datasets(cfg, args.data, args.eval_data)
    results = run.modality.evaluate(run, cfg, train_data, test_data, resolve_device(cfg.device))
    log.info("evaluation (%s):\n%s", run.dir / "eval.json", format_table(results))
    if (run.dir / "config.yaml").is_file():  # the card shows the new table
        write_model_card(run.dir, run.modality.name, run.input_shape, resolve_device(cfg.device))
    warn_if_beaten(results, run.dir)


def cmd_embed(args: argparse.Namespace) -> None:
    from simclr.device import resolve_device
    from simclr.run import Run

    run = Run.open(args.run_dir)
    log.info(run.modality.embed(run, args.data, Path(args.out), args.side, resolve_device(run.cfg.device)))


def cmd_report(args: argparse.Namespace) -> None:
    from simclr.extras import require

    require("report")  # before simclr.report imports matplotlib
    from simclr.device import resolve_device
    from simclr.report import build_report
    from simclr.run import Run

    run = Run.open(args.run_dir)
    train_data, test_data = run.datasets()
    device = resolve_device(run.cfg.device)
    shown = test_data if test_data is not None else train_data
    path = build_report(run.dir, run.encoder.to(device), shown, run.modality.build_augment(run.cfg, run.input_shape),
                        device, run.cfg.seed, gallery=run.modality.gallery)
    log.info("wrote %s", path)


def cmd_distill(args: argparse.Namespace) -> None:
    import torch

    from simclr.device import resolve_device
    from simclr.distill import distill_experiment, teacher_layer
    from simclr.metrics import format_table
    from simclr.model import ENCODERS
    from simclr.run import Run

    run = Run.open(args.run_dir)
    cfg = run.config(args.overrides)
    if not run.modality.distills:
        raise UserError(f"simclr distill is for image runs; {run.dir} was trained on {run.modality.name}")
    student = args.student or cfg.model.encoder
    if student not in ENCODERS:
        raise UserError(f"unknown student encoder {student!r} (choose from {', '.join(sorted(ENCODERS))})")
    train_data, test_data = run.datasets(cfg, args.labeled_data, args.eval_data)
    if test_data is None or train_data.labels is None:
        raise UserError("distillation needs labelled data for the teacher: give --labeled-data (and --eval-data)")
    # The run's own source, split for evaluation: only its training part may serve as unlabelled
    # data, else the student would learn the teacher's answers on the test images.
    own_split = args.labeled_data is None and args.eval_data is None and cfg.data.eval_source is None
    same = args.data == cfg.data.source or Path(args.data).resolve() == Path(cfg.data.source).resolve()
    unlabeled = train_data if own_split and same else run.load(args.data, cfg)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    head = run.head if teacher_layer(cfg) != "h" else None
    out = Path(args.out) if args.out else run.dir / f"distill-{student}"
    results = distill_experiment(cfg, run.encoder.to(device), head, train_data, test_data, unlabeled.images, student,
                                 device, out)
    log.info("distillation (%s):\n%s", out / "eval.json", format_table(results))


def cmd_export(args: argparse.Namespace) -> None:
    from simclr.run import Run

    log.info("wrote %s", Run.open(args.run_dir).export(args.format, args.out))


def cmd_config(args: argparse.Namespace) -> None:
    from simclr.reference import keys, render

    found = [k for k in keys() if k.name.startswith(args.prefix)]
    if not found:
        raise UserError(f"no config key starts with {args.prefix!r}")
    print(render(found))


COMMANDS = {
    "train": cmd_train, "eval": cmd_eval, "embed": cmd_embed, "report": cmd_report, "export": cmd_export,
    "distill": cmd_distill, "config": cmd_config,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; key=value overrides may come after options that follow RUN_DIR
    (argparse alone would take them as one positional group with RUN_DIR)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    # Under torchrun only rank 0 reports progress; the others speak only of problems.
    quiet = os.environ.get("RANK", "0") != "0"
    # simclr's own lines at INFO; other libraries (the ONNX exporter's passes...) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        args = parse(argv)
        COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
