"""The ``synthcp`` command line: one entry point, subcommands registered lazily.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``; the
module is only imported when its subcommand runs (so ``synthcp --help`` stays fast and a broken optional
piece never hides the others).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from synthcp3d import __version__
from synthcp3d.errors import SynthCPInputError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("synthcp3d.data.cli", "make synthetic data sets in the real data sets' folder layouts, or check a folder"),
    "run": ("synthcp3d.study_cli", "run every stage of a study bundle in order, skipping up-to-date stages"),
    "alarm": ("synthcp3d.alarm.cli", "predict tumour Dice and flag CT volumes whose segmentation needs checking"),
    "export": ("synthcp3d.export.cli", "export a trained pancreas run as a self-contained MONAI inference bundle"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthcp", description="SynthCP: synthesize then compare (MONAI extension).")
    parser.add_argument("--version", action="version", version=f"synthcp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    module_name, help_text = SUBCOMMANDS[args.command]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"synthcp {args.command}", description=help_text)
    module.add_arguments(sub_parser)
    sub_args = sub_parser.parse_args(rest)
    try:
        return int(module.main(sub_args) or 0)
    except SynthCPInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
