"""``synthcp export --bundle RUN_DIR --out DIR [--force]``: see :func:`synthcp3d.export.export_bundle`."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthcp3d.export import SCHEMA_PATH, export_bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, metavar="RUN_DIR",
                        help="a finished pancreas run folder (synthcp run pancreas --out RUN_DIR)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="the new bundle folder")
    parser.add_argument("--force", action="store_true", help="replace DIR when it exists and is not empty")


def main(args: argparse.Namespace) -> int:
    out = export_bundle(args.bundle, args.out, force=args.force)
    print(f"exported {args.bundle} -> {out} (metadata verified against {SCHEMA_PATH.name}; every network loads "
          "from the bundle alone)")
    print(f"run it: python -m monai.bundle run --config_file {out}/configs/inference.yaml "
          "--dataset_dir INPUT_DIR --output_dir OUT")
    return 0
