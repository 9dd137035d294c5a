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

CHECKPOINT = "checkpoint.pt"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="simclr", description="SimCLR contrastive self-supervised learning.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="pretrain an encoder (default data: scikit-learn digits)")
    train.add_argument("--config", help="a YAML recipe; flags and key=value overrides apply on top")
    train.add_argument("--data", help="a built-in name (digits) or a path (.npy/.npz)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--out", help="run directory (default runs/<data>-<time>); resumed if it holds a checkpoint")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. temperature=0.2 model.encoder=resnet18")

    export = sub.add_parser("export", help="write the trained encoder's weights for use elsewhere")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", choices=("torchvision", "safetensors", "onnx"), default="torchvision")
    export.add_argument("--out", help="output file (default RUN_DIR/encoder.<format ext>)")
    return parser


def cmd_train(args: argparse.Namespace) -> None:
    from simclr.checkpoint import load_checkpoint
    from simclr.config import changed_keys, from_dict, load_config
    from simclr.metrics import format_table
    from simclr.train import train

    flags = {"data.source": args.data, "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    run_dir = args.resume or args.out
    state: dict[str, Any] | None = None
    if run_dir and (Path(run_dir) / CHECKPOINT).exists():
        state = load_checkpoint(Path(run_dir) / CHECKPOINT)
        saved = from_dict(state["config"])
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


def cmd_export(args: argparse.Namespace) -> None:
    from simclr.export import export_encoder

    path = export_encoder(Path(args.run_dir), args.format, Path(args.out) if args.out else None)
    log.info("wrote %s", path)


def main(argv: list[str] | None = None) -> int:
    # Under torchrun only rank 0 reports progress; the others speak only of problems.
    quiet = os.environ.get("RANK", "0") != "0"
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        {"train": cmd_train, "export": cmd_export}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
