"""The structure verbs: ``density`` (a density map of a model or map) and ``resolve`` (where a
PDB ID is found or downloaded to)."""

from __future__ import annotations

import time
from pathlib import Path

from tomosift.cli.common import add_grid_options, add_source_options, resolve_source


def add_commands(commands) -> None:
    """Add the structure subcommands to the ``tomosift`` parser's subparsers."""
    density = commands.add_parser("density", help="density map of a PDB/mmCIF model or MRC map")
    density.add_argument("input", help="PDB ID, PDB/mmCIF file (.gz too) or MRC map")
    density.add_argument("--out", required=True, type=Path, help="output MRC file")
    add_grid_options(density)
    density.add_argument("--resolution-nm", type=float, default=0.92)
    density.add_argument("--method", choices=("gaussian", "electron"), default="gaussian")
    density.add_argument("--assembly", choices=("first", "none"), default="first")
    add_source_options(density)
    density.set_defaults(handler=_density)

    resolve = commands.add_parser("resolve", help="where a PDB ID is found (or downloaded to)")
    resolve.add_argument("source")
    add_source_options(resolve)
    resolve.set_defaults(handler=_resolve)


def _density(args) -> None:
    from tomosift.density import DensitySettings, make_density
    from tomosift.io import write_mrc

    settings = DensitySettings(
        box_voxels=args.box, voxel_size_nm=args.voxel_size_nm, resolution_nm=args.resolution_nm,
        method=args.method, assembly=args.assembly,
    )
    path = resolve_source(args)
    started = time.perf_counter()
    volume, row = make_density(path, settings, name=Path(args.out).stem, source=args.input)
    seconds = time.perf_counter() - started
    write_mrc(args.out, volume, settings.voxel_size_nm)
    mass = f"{row.mass_kda:.1f} kDa, {row.atoms} atoms, " if row.mass_kda is not None else ""
    print(f"{args.out}: {row.description}; {mass}Rg {row.radius_of_gyration_nm:.2f} nm, "
          f"extent {row.max_extent_nm:.1f} nm, {seconds:.2f} s")


def _resolve(args) -> None:
    print(resolve_source(args))
