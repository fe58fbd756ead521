"""Options and argument helpers that several stages' verbs share."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from tomosift.errors import TomosiftError


def add_grid_options(parser: argparse.ArgumentParser) -> None:
    """--voxel-size-nm and --box."""
    parser.add_argument("--voxel-size-nm", type=float, default=0.92)
    parser.add_argument("--box", type=int, default=40, help="box edge in voxels")


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """Where structures are looked up or downloaded."""
    parser.add_argument("--structure-dir", action="append", default=[],
                        help="folder searched for <id>.pdb/.cif/.mrc (repeatable)")
    parser.add_argument("--download-url", default="https://files.rcsb.org/download")
    parser.add_argument("--cache-dir", type=Path, default=Path("resources/structures"))
    parser.add_argument("--offline", action="store_true")


def resolve_source(args) -> Path:
    """The structure file of ``args.input`` (or ``args.source``), found or downloaded."""
    from tomosift.structures import pdb_mirror_dir, resolve_structure, search_dirs

    return resolve_structure(
        args.input if hasattr(args, "input") else args.source,
        search_dirs(args.structure_dir),
        pdb_mirror_dir(),
        None if args.offline else args.download_url,
        args.cache_dir,
    )


def structure_files(entries: Sequence[str]) -> list[Path]:
    """Structure files of a list of files and folders (a folder: every structure in it)."""
    from tomosift.io import listed_files
    from tomosift.structures import MAP_SUFFIXES, MODEL_SUFFIXES

    files = listed_files(entries, lambda p: p.name.lower().removesuffix(".gz").endswith(
        MODEL_SUFFIXES + MAP_SUFFIXES), "PDB/mmCIF/MRC files")
    if not files:
        raise TomosiftError("--structures: the structure list is empty")
    return files
