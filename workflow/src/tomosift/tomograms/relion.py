"""RELION 5 particle tables: the STAR files tomosift reads and writes for tomograms.

Every particles table tomosift writes (the truth of a simulated tomogram, picks, subsets)
carries, per particle:

- ``rlnTomoName``: the tomogram's name;
- ``rlnCoordinateX/Y/Z``: the position in voxels of the tomogram (x = MRC column, y = row,
  z = section; voxel i covers [i - 0.5, i + 0.5], as RELION 4 and IMOD count);
- ``rlnCenteredCoordinateX/Y/ZAngst``: the RELION 5 position, in Å from the tomogram's centre,
  ``(coordinate - size / 2) * voxel size``;
- ``rlnAngleRot/Tilt/Psi``: RELION's ZYZ Euler angles, degrees, when known;
- ``rlnClassNumber`` (1-based), when known;
- ``rlnOpticsGroup``: 1 (the one optics group of the optics block).

A tomosift STAR file has an optics block (one optics group, the voxel size of the images and
``rlnImageDimensionality`` 3) and a particles block; a ``tomosift_classes`` block, when present,
names the class numbers. RELION reads the blocks it knows by name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tomosift.errors import TomosiftError
from tomosift.io import ANGSTROM_PER_NM, relion_optics, write_star

COORDINATE_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
CENTERED_COLUMNS = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                    "rlnCenteredCoordinateZAngst")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
CLASSES_BLOCK = "tomosift_classes"


def centered_angstrom(coordinates_voxels: np.ndarray, tomogram_size_xyz: Sequence[int],
                      voxel_size_nm: float) -> np.ndarray:
    """(N, 3) RELION 5 centred coordinates in Å of (N, 3) x, y, z voxel coordinates."""
    centre = np.asarray(tomogram_size_xyz, dtype=np.float64) / 2
    return (np.asarray(coordinates_voxels, dtype=np.float64) - centre) * (
        voxel_size_nm * ANGSTROM_PER_NM)


def particle_table(tomo_names: str | Sequence[str], coordinates_voxels: np.ndarray,
                   tomogram_size_xyz: Sequence[int], voxel_size_nm: float,
                   angles_deg: np.ndarray | None = None,
                   class_numbers: Sequence[int] | None = None,
                   extra: dict | None = None) -> pd.DataFrame:
    """A RELION 5 particles table (see the module docstring).

    Args:
        tomo_names: one name for all particles, or (N,) names.
        coordinates_voxels: (N, 3) x, y, z in voxels of the tomogram.
        tomogram_size_xyz: the tomogram's size (x, y, z) in voxels.
        voxel_size_nm: the tomogram's voxel edge.
        angles_deg: (N, 3) rot, tilt, psi, or None.
        class_numbers: (N,) 1-based classes, or None.
        extra: further columns (name -> (N,) values), appended in order (after
            ``rlnOpticsGroup``, which is 1 for every row).
    """
    coordinates = np.asarray(coordinates_voxels, dtype=np.float64).reshape(-1, 3)
    n = len(coordinates)
    names = [tomo_names] * n if isinstance(tomo_names, str) else list(tomo_names)
    columns: dict = {"rlnTomoName": names}
    centred = centered_angstrom(coordinates, tomogram_size_xyz, voxel_size_nm)
    pairs = zip(COORDINATE_COLUMNS, CENTERED_COLUMNS, strict=True)
    for axis, (plain, centred_name) in enumerate(pairs):
        columns[plain] = coordinates[:, axis]
        columns[centred_name] = centred[:, axis]
    if angles_deg is not None:
        angles = np.asarray(angles_deg, dtype=np.float64).reshape(n, 3)
        for axis, name in enumerate(ANGLE_COLUMNS):
            columns[name] = angles[:, axis]
    if class_numbers is not None:
        columns["rlnClassNumber"] = np.asarray(class_numbers, dtype=np.int64)
    columns["rlnOpticsGroup"] = np.ones(n, dtype=np.int64)  # RELION needs it with optics
    columns.update(extra or {})
    return pd.DataFrame(columns)


#: Dataset attributes that become RELION optics columns of the STAR files written from it.
OPTICS_ATTRIBUTES = {"voltage_kv": "rlnVoltage", "cs_mm": "rlnSphericalAberration",
                     "amplitude_contrast": "rlnAmplitudeContrast",
                     "tilt_series_pixel_size_a": "rlnTomoTiltSeriesPixelSize"}


def optics_columns_of(attrs: dict) -> dict:
    """The RELION optics columns (name -> value) a dataset's attributes give: the microscope,
    and for RELION 5 imports the tilt series' pixel size, which ``relion_tomo_subtomo`` needs
    to extract a subset again."""
    return {column: float(attrs[name]) for name, column in OPTICS_ATTRIBUTES.items()
            if name in attrs and np.isfinite(float(attrs[name]))}


def write_particles_star(path: str | os.PathLike, particles: pd.DataFrame,
                         voxel_size_nm: float, box_voxels: int,
                         class_names: Sequence[str] | None = None,
                         optics_columns: dict | None = None) -> None:
    """Write optics + particles (+ class names) blocks atomically.

    ``voxel_size_nm`` and ``box_voxels`` describe the images the table points at (for picks
    without images: the tomogram's voxel size and the box that extraction will cut);
    ``optics_columns``: further optics-block columns (name -> value, e.g. ``rlnVoltage``).
    """
    optics = relion_optics(voxel_size_nm, box_voxels)
    for name, value in (optics_columns or {}).items():
        optics[name] = [value]
    blocks = {"optics": optics, "particles": particles}
    if class_names:
        blocks[CLASSES_BLOCK] = pd.DataFrame({"rlnClassNumber": np.arange(1, len(class_names) + 1),
                                              "tomosiftClassName": list(class_names)})
    write_star(path, blocks)


def read_particles_star(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame | None,
                                                          list[str]]:
    """The particles table, the optics table (or None) and the class names (or []) of a
    RELION STAR file; raises a one-line error naming the file when it has no particles."""
    import starfile

    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as error:
        raise TomosiftError(f"{path}: not a readable STAR file ({error})") from error
    tables = {name: table for name, table in blocks.items() if isinstance(table, pd.DataFrame)}
    particles = tables.get("particles")
    if particles is None:
        candidates = [t for name, t in tables.items() if name not in ("optics", CLASSES_BLOCK)]
        particles = candidates[0] if candidates else None
    if particles is None or particles.empty:
        raise TomosiftError(f"{path}: no particles in the file (an empty pick list?)")
    names: list[str] = []
    if CLASSES_BLOCK in tables:
        names = [str(n) for n in tables[CLASSES_BLOCK]["tomosiftClassName"]]
    return particles.reset_index(drop=True), tables.get("optics"), names


def coordinates_of(particles: pd.DataFrame, path: str | os.PathLike,
                   tomogram_size_xyz: Sequence[int] | None = None,
                   voxel_size_nm: float | None = None) -> np.ndarray:
    """(N, 3) x, y, z voxel coordinates of a particles table: ``rlnCoordinateX/Y/Z``, or the
    RELION 5 centred coordinates converted with the tomogram's size and voxel size."""
    if all(c in particles.columns for c in COORDINATE_COLUMNS):
        return particles[list(COORDINATE_COLUMNS)].to_numpy(dtype=np.float64)
    if all(c in particles.columns for c in CENTERED_COLUMNS):
        if tomogram_size_xyz is None or voxel_size_nm is None:
            raise TomosiftError(f"{path}: only centred coordinates (Å); the tomogram's size and "
                                "voxel size are needed to place them")
        centre = np.asarray(tomogram_size_xyz, dtype=np.float64) / 2
        angstrom = particles[list(CENTERED_COLUMNS)].to_numpy(dtype=np.float64)
        return angstrom / (voxel_size_nm * ANGSTROM_PER_NM) + centre
    raise TomosiftError(f"{path}: no coordinates (needs rlnCoordinateX/Y/Z or "
                        "rlnCenteredCoordinateX/Y/ZAngst)")


def class_labels(class_numbers: np.ndarray, class_names: Sequence[str],
                 path) -> tuple[np.ndarray, list[str]]:
    """(N,) 0-based labels and the class names of 1-based RELION class numbers: the names of
    the STAR's ``tomosift_classes`` block (label = number - 1), else the numbers that occur,
    as strings, in increasing order."""
    numbers = np.asarray(class_numbers)
    if not np.all(np.isfinite(numbers.astype(np.float64))):
        raise TomosiftError(f"{path}: rlnClassNumber holds missing values")
    numbers = numbers.astype(np.int64)
    if class_names:
        if numbers.min() < 1 or numbers.max() > len(class_names):
            raise TomosiftError(f"{path}: rlnClassNumber {int(numbers.max())} outside the "
                                f"{len(class_names)} classes of its tomosift_classes block")
        return numbers - 1, list(class_names)
    values = sorted(set(numbers.tolist()))
    return np.searchsorted(values, numbers).astype(np.int64), [str(v) for v in values]
