"""The `sima2` command line: `sima2 --version`, `sima2 convert SRC DST`, and the training subcommands."""

from __future__ import annotations

import argparse
import json
import sys

import sima2


def _convert(args: argparse.Namespace) -> int:
    from sima2.interop.convert import convert_checkpoint

    out = convert_checkpoint(
        args.src,
        args.dst,
        dtype=args.dtype,
        revision=args.revision,
        allow_pickle=args.allow_pickle,
    )
    print(f"wrote {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from sima2.training.pipeline import train

    out = args.out or f"runs/{args.preset}"
    report = train(args.preset, out, resume=args.resume, overrides=args.overrides, vision=args.vision,
                   planner=args.planner, text_encoder=args.text_encoder)
    print(json.dumps(report["success_rate"], indent=2))
    print(f"run folder: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sima2", description=sima2.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sima2 {sima2.__version__}")
    sub = parser.add_subparsers(dest="command")

    convert = sub.add_parser(
        "convert",
        help="load an HF checkpoint into sima2 and write it back as config.json + model.safetensors",
    )
    convert.add_argument("src", help="local folder, .safetensors/.bin file or Hub repo id")
    convert.add_argument("dst", help="output folder")
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    convert.add_argument("--revision", default=None)
    convert.add_argument(
        "--allow-pickle", action="store_true", help="allow legacy pickle (.bin/.pt) weights via torch"
    )
    convert.set_defaults(func=_convert)

    train = sub.add_parser(
        "train",
        help="demonstrations -> behaviour cloning -> PPO -> evaluation on the built-in world, offline",
    )
    train.add_argument("--preset", choices=["tiny", "cpu-small", "base"], default="cpu-small")
    train.add_argument("--out", default=None, help="run folder (default runs/<preset>)")
    train.add_argument("--resume", action="store_true", help="continue each stage from its last checkpoint")
    train.add_argument("--vision", default=None, help="pretrained vision encoder: HF name or local path")
    train.add_argument("--planner", default=None, help="pretrained causal LM planner: HF name or local path")
    train.add_argument("--text-encoder", default=None, help="pretrained BERT text encoder: HF name or local path")
    train.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.bc.batch_size=128")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"sima2 {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
