"""The ``tomosift`` command line: a thin layer over the package's functions.

One module per stage holds that stage's verbs (argument parsing and printing only; the work is
in the stage's package modules):

- :mod:`.structures`: ``density``, ``resolve``;
- :mod:`.simulate`: ``simulate``, ``show``, ``snr``, ``simulate-tomogram``;
- :mod:`.classify`: ``train``, ``evaluate``;
- :mod:`.tomograms`: ``pick``, ``extract``, ``import-particles``;
- :mod:`.subdivide`: ``subdivide``;
- :mod:`.discovery`: ``features``, ``cluster``, ``align``, ``average``, ``fsc``.

Shared options live in :mod:`.common`. No stage module imports this one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tomosift import __version__
from tomosift.cli import classify, discovery, simulate, structures, subdivide, tomograms
from tomosift.errors import TomosiftError

STAGES = (structures, simulate, classify, tomograms, subdivide, discovery)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except TomosiftError as exc:
        print(f"tomosift: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tomosift",
        description="Sort cryo-electron subtomograms into structurally homogeneous subsets.",
    )
    parser.add_argument("--version", action="version", version=f"tomosift {__version__}")
    commands = parser.add_subparsers(title="commands")
    for stage in STAGES:
        stage.add_commands(commands)
    return parser
