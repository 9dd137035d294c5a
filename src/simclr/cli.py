"""The `simclr` command line: `simclr train [--config FILE] [flags] [key=value ...]`."""

from __future__ import annotations

import argparse
import logging
import sys

from simclr.errors import UserError

log = logging.getLogger("simclr")


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
    train.add_argument("--out", help="run directory (default runs/<data>-<time>)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. temperature=0.2 model.encoder=resnet18")
    return parser


def cmd_train(args: argparse.Namespace) -> None:
    from simclr.config import load_config
    from simclr.train import format_table, train

    flags = {"data.source": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
             "seed": args.seed, "out": args.out}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(args.config, overrides)
    out, results = train(cfg)
    log.info("encoder weights: %s", out / "encoder.safetensors")
    if results is None:
        log.info("no labels in the data: evaluation needs a labelled set")
    else:
        log.info("held-out evaluation (%s):\n%s", out / "eval.json", format_table(results))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        {"train": cmd_train}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
