"""Finding, fetching and reading macromolecular structures.

A structure is named in the config by a PDB ID (``1bxn``), a path to a PDB/mmCIF file (``.gz``
too) or a path to an MRC density map. An ID is resolved in this order:

1. the directories listed in the config and in ``$TOMOSIFT_STRUCTURE_DIRS`` (colon-separated),
   looking for ``<id>.pdb``, ``<id>.cif``, ``<id>.ent`` (each optionally ``.gz``) or
   ``<id>.mrc``/``<id>.map``, case-insensitively;
2. a local PDB mirror (``$PDB_DIR`` or the config's ``pdb_mirror_dir``) in the layout gemmi
   understands (``structures/divided/mmCIF/bx/1bxn.cif.gz``);
3. a download from RCSB (base URL in the config) into a cache folder, written atomically.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from tomosift.errors import TomosiftError
from tomosift.io import atomic_path

MODEL_SUFFIXES = (".pdb", ".cif", ".ent", ".mmcif")
MAP_SUFFIXES = (".mrc", ".map")
STRUCTURE_DIRS_ENV = "TOMOSIFT_STRUCTURE_DIRS"
PDB_MIRROR_ENV = "PDB_DIR"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class StructureSpec:
    """One structure of the config: a unique ``name``, where it comes from, and overrides.

    ``source`` is a PDB ID or a file path; ``assembly`` (``first``/``none``) and ``method``
    (``gaussian``/``electron``) override the config-wide density settings when not None.
    """

    name: str
    source: str
    assembly: str | None = None
    method: str | None = None


class AtomicModel:
    """Atoms of one model (after building the biological assembly if asked).

    Attributes:
        structure: the gemmi structure holding exactly these atoms (one model).
        description: how the atoms were chosen (assembly, model), for logs and tables.
        coordinates_nm: (N, 3) atom positions x, y, z in nm (computed on first use).
        masses_da: (N,) atomic masses in Da, occupancy-weighted (computed on first use).
    """

    def __init__(self, structure: gemmi.Structure, description: str):
        self.structure = structure
        self.description = description
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def coordinates_nm(self) -> np.ndarray:
        return self._atom_arrays()[0]

    @property
    def masses_da(self) -> np.ndarray:
        return self._atom_arrays()[1]

    def bounding_box_size_nm(self) -> np.ndarray:
        """(3,) edge lengths of the atoms' axis-aligned bounding box (fast, no atom arrays)."""
        box = self.structure.calculate_box()
        return (np.array(box.maximum.tolist()) - np.array(box.minimum.tolist())) / 10.0

    def _atom_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = _atoms_as_arrays(self.structure[0])
        return self._arrays


def looks_like_path(source: str) -> bool:
    """True when ``source`` names a file rather than a PDB ID."""
    lowered = source.lower().removesuffix(".gz")
    return "/" in source or os.sep in source or lowered.endswith(MODEL_SUFFIXES + MAP_SUFFIXES)


def is_map_file(path: str | os.PathLike) -> bool:
    """True for MRC density maps (``.mrc``/``.map``, optionally gzipped), by suffix."""
    return str(path).lower().removesuffix(".gz").endswith(MAP_SUFFIXES)


def parse_structure_entries(entries: Sequence[str | dict]) -> list[StructureSpec]:
    """Turn the config's ``structures`` list into specs with unique names.

    An entry is a string (a PDB ID or a path; the name is the ID or the file's stem) or a
    mapping with ``source`` and optional ``name``, ``assembly`` and ``method``.
    """
    specs: list[StructureSpec] = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"source": entry}
        source = str(entry["source"])
        name = entry.get("name") or default_name(source)
        if not NAME_PATTERN.match(name):
            raise TomosiftError(
                f"config structures: name '{name}' may only hold letters, digits and _.+-"
            )
        specs.append(StructureSpec(name, source, entry.get("assembly"), entry.get("method")))
    seen: set[str] = set()
    for spec in specs:
        if spec.name.lower() in seen:
            raise TomosiftError(f"config structures: name '{spec.name}' is used twice")
        seen.add(spec.name.lower())
    return specs


def default_name(source: str) -> str:
    if not looks_like_path(source):
        return source
    name = Path(source).name
    for suffix in (".gz", *MODEL_SUFFIXES, *MAP_SUFFIXES):
        name = name.removesuffix(suffix).removesuffix(suffix.upper())
    return name


def search_dirs(config_dirs: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Directories searched for structure files: the config's, then ``$TOMOSIFT_STRUCTURE_DIRS``."""
    dirs = [Path(d) for d in config_dirs]
    env = os.environ.get(STRUCTURE_DIRS_ENV, "")
    dirs += [Path(d) for d in env.split(":") if d.strip()]
    return dirs


def pdb_mirror_dir(config_dir: str | os.PathLike | None = None) -> Path | None:
    """The local PDB mirror: the config's ``pdb_mirror_dir``, else ``$PDB_DIR``, else None."""
    value = config_dir or os.environ.get(PDB_MIRROR_ENV)
    return Path(value) if value else None


def find_in_dirs(pdb_id: str, dirs: Iterable[Path]) -> Path | None:
    """Find ``<id>.{pdb,cif,ent,mmcif}[.gz]`` or ``<id>.{mrc,map}`` in ``dirs``, ignoring case."""
    wanted = pdb_id.lower()
    for directory in dirs:
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            name = path.name.lower().removesuffix(".gz")
            stem, dot, suffix = name.rpartition(".")
            if dot and stem == wanted and f".{suffix}" in MODEL_SUFFIXES + MAP_SUFFIXES:
                if path.is_file():
                    return path
    return None


def find_in_mirror(pdb_id: str, mirror: Path | None) -> Path | None:
    """Find an entry in a local PDB mirror (gemmi's layout); mmCIF first, then PDB format."""
    if mirror is None or not re.fullmatch(r"[0-9][A-Za-z0-9]{3}", pdb_id):
        return None
    code = pdb_id.lower()
    candidates = [
        mirror / "structures" / "divided" / "mmCIF" / code[1:3] / f"{code}.cif.gz",
        mirror / "structures" / "divided" / "pdb" / code[1:3] / f"pdb{code}.ent.gz",
    ]
    return next((c for c in candidates if c.is_file()), None)


def find_local_structure(
    source: str, dirs: Sequence[Path], mirror: Path | None, cache_dir: Path | None = None
) -> Path | None:
    """The local file for ``source`` (a path, or an ID in ``dirs``, the mirror or the cache)."""
    if looks_like_path(source):
        path = Path(source)
        if not path.is_file():
            raise TomosiftError(f"{source}: file not found")
        return path
    found = find_in_dirs(source, dirs) or find_in_mirror(source, mirror)
    if found is None and cache_dir is not None:
        found = find_in_dirs(source, [cache_dir])
    return found


def download_structure(
    pdb_id: str, base_url: str, cache_dir: Path, timeout_s: float = 60.0
) -> Path:
    """Download an entry as mmCIF (``<base_url>/<ID>.cif.gz``) into ``cache_dir/<id>.cif.gz``.

    The file is written under a temporary name, checked to be complete gzip, and renamed, so
    the cache never holds a partial download.

    Raises:
        TomosiftError: when the file could not be fetched (offline, unknown ID, ...).
    """
    url = f"{base_url.rstrip('/')}/{pdb_id.upper()}.cif.gz"
    target = cache_dir / f"{pdb_id.lower()}.cif.gz"
    try:
        with atomic_path(target) as tmp:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
            _check_gzip(tmp)
    except (urllib.error.URLError, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        else:
            reason = getattr(exc, "reason", None) or exc
        raise TomosiftError(f"download of {url} failed ({reason})") from exc
    return target


def _check_gzip(path: Path) -> None:
    with gzip.open(path, "rb") as handle:
        while handle.read(1 << 20):
            pass


def resolve_structure(
    source: str,
    dirs: Sequence[Path],
    mirror: Path | None,
    download_url: str | None,
    cache_dir: Path,
    timeout_s: float = 60.0,
) -> Path:
    """Resolve a config ``source`` to a local file, downloading into ``cache_dir`` if needed.

    ``download_url=None`` means offline. The error for an ID found nowhere names the ID and
    every place searched.
    """
    found = find_local_structure(source, dirs, mirror, cache_dir)
    if found is not None:
        return found
    places = [f"dirs [{', '.join(str(d) for d in dirs) or 'none'}]"]
    places.append(f"PDB mirror {mirror if mirror else '(none: $PDB_DIR unset)'}")
    places.append(f"cache {cache_dir}")
    if download_url is None:
        places.append("download (offline)")
        raise TomosiftError(f"structure '{source}' not found; searched {'; '.join(places)}")
    try:
        return download_structure(source, download_url, cache_dir, timeout_s)
    except TomosiftError as exc:
        raise TomosiftError(
            f"structure '{source}' not found; searched {'; '.join(places)}; {exc}"
        ) from exc


def read_atomic_model(path: str | os.PathLike, assembly: str = "first") -> AtomicModel:
    """Read a PDB/mmCIF file (``.gz`` too) into atom positions and masses.

    Args:
        path: the structure file.
        assembly: ``first`` builds the first biological assembly when the file defines one
            (the asymmetric unit otherwise); ``none`` keeps the deposited coordinates.

    Multi-model files (NMR ensembles, trajectories) keep their first model: the models are
    alternative conformations of one particle, not parts of a complex. Hydrogens are kept if
    present; waters are dropped (the solvent is part of the background). Alternative
    conformations keep the first conformer's occupancy weighting.

    Raises:
        TomosiftError: unreadable or truncated file, or no atoms.
    """
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    check_pdb_not_truncated(path)
    try:
        structure = gemmi.read_structure(str(path), merge_chain_parts=True)
    except Exception as exc:  # gemmi raises RuntimeError/ValueError/IndexError
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TomosiftError(f"{path}: not a readable PDB/mmCIF structure ({message})") from exc
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise TomosiftError(f"{path}: the structure holds no atoms")
    n_models = len(structure)
    structure.setup_entities()
    description = "asymmetric unit"
    model = structure[0]
    if assembly == "first" and len(structure.assemblies) > 0:
        first = structure.assemblies[0]
        try:
            model = gemmi.make_assembly(first, model, gemmi.HowToNameCopiedChain.AddNumber)
        except RuntimeError as exc:
            raise TomosiftError(
                f"{path}: cannot build assembly {first.name} ({exc}); try 'assembly: none'"
            ) from exc
        description = f"assembly {first.name}"
    elif assembly not in ("first", "none"):
        raise TomosiftError(f"{path}: assembly must be 'first' or 'none', got '{assembly}'")
    if n_models > 1:
        description += f", model 1 of {n_models}"
    single = gemmi.Structure()
    single.name = structure.name
    single.cell = gemmi.UnitCell()
    single.add_model(model)
    single.setup_entities()
    single.remove_waters()
    single.remove_alternative_conformations()
    if single[0].count_atom_sites() == 0:
        raise TomosiftError(f"{path}: the structure holds no atoms")
    return AtomicModel(single, description)


def _atoms_as_arrays(model: gemmi.Model) -> tuple[np.ndarray, np.ndarray]:
    coords: list[tuple[float, float, float]] = []
    masses: list[float] = []
    for chain in model:
        for residue in chain:
            for atom in residue:
                coords.append((atom.pos.x, atom.pos.y, atom.pos.z))
                masses.append(atom.element.weight * atom.occ)
    coordinates_nm = np.asarray(coords, dtype=np.float64).reshape(-1, 3) / 10.0
    return coordinates_nm, np.asarray(masses, dtype=np.float64)


def check_pdb_not_truncated(path: str | os.PathLike) -> None:
    """Reject a PDB-format file whose last atom record is cut short (a truncated copy).

    gemmi accepts a file cut cleanly after a complete record; a record cut inside its
    coordinate columns is caught here (or by gemmi itself for very short lines).
    """
    path = Path(path)
    lowered = path.name.lower().removesuffix(".gz")
    if not lowered.endswith((".pdb", ".ent")):
        return
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", errors="replace") as handle:
            last, previous = "", ""
            for line in handle:
                if line.strip():
                    previous, last = last, line.rstrip()
    except (OSError, EOFError) as exc:
        raise TomosiftError(f"{path}: not a readable PDB file ({exc})") from exc
    is_atom = last.startswith(("ATOM", "HETATM")) and previous.startswith(("ATOM", "HETATM"))
    if is_atom and len(last) < 66 <= len(previous):
        raise TomosiftError(f"{path}: the file ends inside an atom record (truncated?)")
