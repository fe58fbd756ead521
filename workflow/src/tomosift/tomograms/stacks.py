"""RELION 5 / WarpTools 2D-stack particles: read them, reconstruct 3D subtomograms, write them.

RELION 5 (``relion_tomo_subtomo --stack2d``) and WarpTools (``ts_export_particles
--2d``) export each particle as a small image per tilt, flagged ``rlnTomoSubTomosAre2DStacks 1``
in the particles file's ``general`` block; the tilt geometry lives in the tomograms file that
the optimisation set names. This module reads those files, reconstructs each particle's 3D
subtomogram by direct Fourier insertion, and writes such exports (a simulator for tests and
round trips).

What is read (the layout of ``../shared/relion5_example``):

- tomograms file: ``global`` (per tomogram ``rlnTomoName``, ``rlnTomoSizeX/Y/Z``,
  ``rlnTomoHand``, ``rlnTomoTiltSeriesPixelSize``, optionally voltage, Cs, amplitude
  contrast, ``rlnTomoDefocusSlope``, ``rlnCtfBfactorPerElectronDose``) and one block per
  tomogram, one row per tilt: ``rlnTomoProjX/Y/Z/W`` (rows of the 4 x 4 projection matrix from
  tomogram to tilt-image coordinates), ``rlnDefocusU/V`` (Å, underfocus > 0, at the tomogram's
  centre), ``rlnDefocusAngle`` (degrees), ``rlnCtfScalefactor``, ``rlnMicrographPreExposure``
  (e/Å² before the tilt);
- particles file: optics (``rlnImagePixelSize``, ``rlnImageSize``,
  ``rlnCtfDataAreCtfPremultiplied``, voltage, Cs, amplitude contrast) and per particle
  ``rlnTomoName``, ``rlnImageName`` (an ``.mrcs`` stack), ``rlnTomoVisibleFrames``,
  coordinates, ``rlnAngleRot/Tilt/Psi``, ``rlnOriginX/Y/ZAngst`` and, when present,
  ``rlnTomoSubtomogramRot/Tilt/Psi``.

A stack holds either one image per tilt of the tomograms file (WarpTools) or one per visible
tilt, in tilt order (RELION 5); any other count is refused.

Conventions (RELION 5's, checked against its source: ``src/jaz/tomography/programs/
subtomo.cpp``, ``tomogram.cpp``, ``optics/damage.cpp``, ``reconstruction.h``):

- Frame and hand. The reconstructed volume is indexed [z, y, x], origin at voxel n // 2, in
  the tomogram's own frame (x, y, z of the tomogram, not rotated by the particle's angles):
  a 2D frequency (u, v) of tilt f lands at the 3D frequency ``u X_f + v Y_f``, X_f and Y_f
  the first two rows of the rotation part of ``rlnTomoProj``, as RELION's back-projection
  (``projPart = projCut * A``) places it. The hand of the volume is thus the hand of the
  projection matrices; ``rlnTomoHand`` enters, as in RELION, only through the depth
  dependence of the defocus: ``defocus += hand * slope * (Z_f . position)``, position the
  particle's centred coordinate in Å and Z_f the third row (``Tomogram::getCtf``).
- Poses. RELION's matrix A of (rot, tilt, psi) maps the particle onto the reference:
  particle = ``transform(reference, A)`` (:mod:`tomosift.discovery.rotations`). With
  subtomogram angles the particle's full matrix is ``A_sub A`` (RELION's ``getMatrix3x3``);
  the volumes are in the tomogram frame, so the dataset records the angles of ``A_sub A``.
  Averaging the imported volumes with these angles gives RELION's reference frame.
- Offsets. The particle's centre is ``coordinate - A_sub origin / pixel`` (``subtomo.cpp``,
  ``writeParticleSet``); the import re-centres each volume on it and records that position
  with the origin set to zero, as ``relion_tomo_subtomo`` does.
- Coordinates. ``rlnCenteredCoordinateX/Y/ZAngst`` (RELION 5) when present; otherwise
  ``rlnCoordinateX/Y/Z`` in pixels of ``rlnImagePixelSize`` from the tomogram's corner, as
  WarpTools writes them (its exports' z coordinates span the tomogram's thickness at that
  pixel size, not at the tilt series').
- CTF. RELION's CTF is ``c_R = scale * (sqrt(1 - A²) sin chi + A cos chi)`` =
  ``-scale * CTF`` of :mod:`tomosift.simulate.ctf` (positive at low frequency: images are
  stored inverted, particles white); astigmatic defocus ``(U + V) / 2 + (U - V) / 2 cos(2
  (phi - angle))``. Premultiplied images (``rlnCtfDataAreCtfPremultiplied 1``) already carry
  ``c_R d`` once; other images are multiplied by it on import. Either way each tilt adds
  ``c_R d x image`` to the data and ``(c_R d)²`` to the weight.
- Dose weighting. Grant & Grigorieff (2015): ``d(k) = exp(-N / (2 (0.245 k^-1.665 + 2.81)))``
  with k in 1/Å and N the tilt's pre-exposure in e/Å² (RELION's ``Damage::weightImage``; no
  200 kV factor), or ``exp(-B N k² / 4)`` when the tomogram has
  ``rlnCtfBfactorPerElectronDose`` B > 0.
- Wiener division. The volume's transform is ``D / (W + lambda_s)`` where the summed weight
  W > 0, and 0 where no tilt reached (the missing wedge); ``lambda_s`` is
  :data:`WIENER_FRACTION` times the mean of W over the observed voxels of the same frequency
  shell (a scale-free version of RELION's ``ctfCorrect3D_heuristic``, with a larger constant
  because single particles are noisy). W, resampled to the output box, is kept per particle as
  its Fourier coverage (``fourier_weights``).

Insertion grids: images are zero-padded by ``pad_factor`` (default 2) before their transform,
inserted into a padded 3D grid with trilinear weights and the central box is cropped after the
inverse transform, so interpolation errors stay small.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tomosift.errors import TomosiftError
from tomosift.grids import trilinear_corners
from tomosift.io import ANGSTROM_PER_NM, atomic_path, write_star, write_text
from tomosift.simulate.ctf import electron_wavelength_nm

#: Wiener constant as a fraction of the shell's mean summed weight (see the module docstring).
WIENER_FRACTION = 0.1
#: Grant & Grigorieff (2015) critical exposure Ne(k) = a k^b + c (k in 1/Å, Ne in e/Å²).
CRITICAL_EXPOSURE_ABC = (0.245, -1.665, 2.81)
STACK_FLAG = "rlnTomoSubTomosAre2DStacks"
PROJECTION_COLUMNS = ("rlnTomoProjX", "rlnTomoProjY", "rlnTomoProjZ", "rlnTomoProjW")
SUBTOMOGRAM_ANGLE_COLUMNS = ("rlnTomoSubtomogramRot", "rlnTomoSubtomogramTilt",
                             "rlnTomoSubtomogramPsi")
ORIGIN_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
ORTHONORMAL_TOLERANCE = 1e-2
STACK_LAYOUTS = ("all", "visible")


# -- what the files hold -----------------------------------------------------------------------

@dataclass(frozen=True)
class TiltSeries:
    """One tomogram of a RELION 5 tomograms file.

    Attributes:
        name: ``rlnTomoName``.
        projections: (T, 4, 4) projection matrices (rows ``rlnTomoProjX/Y/Z/W``).
        defocus_u_a, defocus_v_a: (T,) defocus at the tomogram's centre, Å, underfocus > 0.
        defocus_angle_deg: (T,) astigmatism angle.
        ctf_scale: (T,) ``rlnCtfScalefactor``.
        pre_exposure_e_per_a2: (T,) dose received before each tilt.
        hand: ``rlnTomoHand`` (+1 or -1).
        size_xyz: (3,) tomogram size in tilt-series pixels.
        pixel_size_a: tilt-series pixel size (``rlnTomoTiltSeriesPixelSize``).
        defocus_slope: ``rlnTomoDefocusSlope`` (1 when absent).
        bfactor_per_dose_a2: ``rlnCtfBfactorPerElectronDose`` (0: Grant & Grigorieff).
        voltage_kv, cs_mm, amplitude_contrast: optics of the tomogram, or None (then the
            particles file's).
    """

    name: str
    projections: np.ndarray
    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    defocus_angle_deg: np.ndarray
    ctf_scale: np.ndarray
    pre_exposure_e_per_a2: np.ndarray
    hand: float = -1.0
    size_xyz: tuple[int, int, int] = (0, 0, 0)
    pixel_size_a: float = 1.0
    defocus_slope: float = 1.0
    bfactor_per_dose_a2: float = 0.0
    voltage_kv: float | None = None
    cs_mm: float | None = None
    amplitude_contrast: float | None = None

    @property
    def n_tilts(self) -> int:
        return len(self.projections)

    @property
    def rotations(self) -> np.ndarray:
        """(T, 3, 3) rotation parts of the projection matrices (rows X, Y, Z)."""
        return self.projections[:, :3, :3]

    @property
    def tilt_angles_deg(self) -> np.ndarray:
        """(T,) angle between each tilt's beam direction and the tomogram's z axis."""
        return np.rad2deg(np.arccos(np.clip(np.abs(self.rotations[:, 2, 2]), 0, 1)))


@dataclass(frozen=True)
class StackOptics:
    """One optics group of a 2D-stack particles file."""

    pixel_size_a: float
    box_pixels: int
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    premultiplied: bool = True
    binning: float = 1.0
    tilt_series_pixel_size_a: float | None = None


@dataclass
class StackParticles:
    """A 2D-stack particles file resolved against its tomograms file.

    Attributes:
        path: the particles file.
        table: the particles table (one row per particle).
        optics: optics group number -> :class:`StackOptics`.
        tomograms: tomogram name -> :class:`TiltSeries`.
        visible: (N,) boolean (T_i,) arrays of ``rlnTomoVisibleFrames``.
        images: (N,) stack paths.
        centred_a: (N, 3) particle centres (origins applied), Å from the tomogram's centre.
        matrices: (N, 3, 3) each particle's full RELION matrix ``A_sub A``.
        class_names: names of ``rlnClassNumber`` (empty when unknown).
    """

    path: Path
    table: pd.DataFrame
    optics: dict[int, StackOptics]
    tomograms: dict[str, TiltSeries]
    visible: list[np.ndarray]
    images: list[Path]
    centred_a: np.ndarray
    matrices: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.table)

    def optics_of(self, index: int) -> StackOptics:
        return self.optics[int(self.table["rlnOpticsGroup"].iloc[index])
                           if "rlnOpticsGroup" in self.table.columns else min(self.optics)]

    def series_of(self, index: int) -> TiltSeries:
        return self.tomograms[str(self.table["rlnTomoName"].iloc[index])]

    @property
    def box_pixels(self) -> int:
        return next(iter(self.optics.values())).box_pixels

    @property
    def pixel_size_a(self) -> float:
        return next(iter(self.optics.values())).pixel_size_a

    def defocus_um(self) -> np.ndarray:
        """(N,) each particle's mean defocus over its visible tilts (depth included), µm."""
        values = []
        for i in range(len(self)):
            series = self.series_of(i)
            frames = np.flatnonzero(self.visible[i])
            local = particle_defocus_a(series, frames, self.centred_a[i])
            values.append(float(np.mean((local[0] + local[1]) / 2)) / 1e4 if len(frames)
                          else float("nan"))
        return np.asarray(values)


# -- reading ------------------------------------------------------------------------------------

def _read_blocks(path: Path) -> dict:
    import starfile

    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        return starfile.read(path, always_dict=True)
    except Exception as error:
        raise TomosiftError(f"{path}: not a readable STAR file ({error})") from error


def _first_value(block) -> dict:
    if isinstance(block, pd.DataFrame):
        return block.iloc[0].to_dict() if len(block) else {}
    return dict(block)


def is_optimisation_set(path: str | os.PathLike) -> bool:
    """Whether a STAR file names a tomograms file (``rlnTomoTomogramsFile``)."""
    return _star_has_label(Path(path), "_rlnTomoTomogramsFile")


def is_2d_stack_star(path: str | os.PathLike) -> bool:
    """Whether a particles STAR says ``rlnTomoSubTomosAre2DStacks 1``."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 2 and fields[0] == f"_{STACK_FLAG}":
                return fields[1] == "1"
            if fields[:1] == ["data_particles"]:
                return False
    return False


def _star_has_label(path: Path, label: str) -> bool:
    if not path.is_file() or path.suffix != ".star":
        return False
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle):
            if line.split()[:1] == [label]:
                return True
            if number > 200:
                return False
    return False


def read_optimisation_set(path: str | os.PathLike) -> tuple[Path, Path]:
    """(particles file, tomograms file) that an optimisation set names, relative to its
    folder when relative; a one-line error when either is missing."""
    path = Path(path)
    values: dict = {}
    for block in _read_blocks(path).values():
        values.update(_first_value(block))
    names = []
    for label in ("rlnTomoParticlesFile", "rlnTomoTomogramsFile"):
        value = values.get(label)
        if value is None or str(value).strip() in ("", "nan"):
            raise TomosiftError(f"{path}: no {label} in the optimisation set")
        named = Path(str(value))
        names.append(named if named.is_absolute() else path.parent / named)
    for named in names:
        if not named.is_file():
            raise TomosiftError(f"{path}: names {named}, which is not found")
    return names[0], names[1]


def _vectors(column: pd.Series, path: Path, label: str, length: int) -> np.ndarray:
    out = np.empty((len(column), length))
    for i, value in enumerate(column):
        text = str(value).strip().strip("[]")
        try:
            numbers = [float(v) for v in text.split(",")]
        except ValueError as error:
            raise TomosiftError(f"{path}: {label} row {i + 1} is not a list of numbers "
                                f"({value!r})") from error
        if len(numbers) != length:
            raise TomosiftError(f"{path}: {label} row {i + 1} has {len(numbers)} values, "
                                f"expected {length}")
        out[i] = numbers
    return out


def read_tomograms_star(path: str | os.PathLike) -> dict[str, TiltSeries]:
    """Every tomogram of a RELION 5 tomograms file, by ``rlnTomoName``."""
    path = Path(path)
    blocks = _read_blocks(path)
    table = blocks.get("global")
    if not isinstance(table, pd.DataFrame):
        if isinstance(table, dict) and table:
            table = pd.DataFrame([table])
        else:
            raise TomosiftError(f"{path}: no global block (not a RELION 5 tomograms file)")
    if "rlnTomoName" not in table.columns:
        raise TomosiftError(f"{path}: the global block has no rlnTomoName")
    out = {}
    for _, row in table.iterrows():
        name = str(row["rlnTomoName"])
        tilts = blocks.get(name)
        if isinstance(tilts, dict):
            tilts = pd.DataFrame([tilts])
        if not isinstance(tilts, pd.DataFrame) or tilts.empty:
            raise TomosiftError(f"{path}: no data_{name} block of tilts for tomogram {name}")
        missing = [c for c in (*PROJECTION_COLUMNS[:3], "rlnDefocusU")
                   if c not in tilts.columns]
        if missing:
            raise TomosiftError(f"{path}: block data_{name} lacks {', '.join(missing)}")
        t = len(tilts)
        projections = np.tile(np.eye(4), (t, 1, 1))
        for axis, label in enumerate(PROJECTION_COLUMNS):
            if label in tilts.columns:
                projections[:, axis, :] = _vectors(tilts[label], path, label, 4)
        rotations = projections[:, :3, :3]
        error = np.abs(rotations @ rotations.transpose(0, 2, 1) - np.eye(3)).max()
        if error > ORTHONORMAL_TOLERANCE:
            raise TomosiftError(f"{path}: the projection matrices of {name} are not rotations "
                                f"(rows off orthonormal by {error:.3g})")

        def column(label, default, tilts=tilts):
            if label in tilts.columns:
                return tilts[label].to_numpy(dtype=np.float64)
            return np.full(len(tilts), default, dtype=np.float64)

        def scalar(label, default=None, row=row):
            value = row.get(label, default)
            return default if value is None or pd.isna(value) else float(value)

        defocus_u = column("rlnDefocusU", 0.0)
        size = tuple(int(scalar(f"rlnTomoSize{a}", 0)) for a in "XYZ")
        out[name] = TiltSeries(
            name=name, projections=projections, defocus_u_a=defocus_u,
            defocus_v_a=column("rlnDefocusV", np.nan) if "rlnDefocusV" in tilts.columns
            else defocus_u.copy(),
            defocus_angle_deg=column("rlnDefocusAngle", 0.0),
            ctf_scale=column("rlnCtfScalefactor", 1.0),
            pre_exposure_e_per_a2=column("rlnMicrographPreExposure", 0.0),
            hand=scalar("rlnTomoHand", -1.0), size_xyz=size,
            pixel_size_a=scalar("rlnTomoTiltSeriesPixelSize", 1.0),
            defocus_slope=scalar("rlnTomoDefocusSlope", 1.0),
            bfactor_per_dose_a2=scalar("rlnCtfBfactorPerElectronDose", 0.0),
            voltage_kv=scalar("rlnVoltage"), cs_mm=scalar("rlnSphericalAberration"),
            amplitude_contrast=scalar("rlnAmplitudeContrast"))
    return out


def _stack_optics(optics: pd.DataFrame | None, path: Path) -> dict[int, StackOptics]:
    if optics is None or optics.empty:
        raise TomosiftError(f"{path}: no optics block (2D stacks need rlnImagePixelSize and "
                            "rlnImageSize)")
    for label in ("rlnImagePixelSize", "rlnImageSize"):
        if label not in optics.columns:
            raise TomosiftError(f"{path}: the optics block lacks {label}")
    groups = {}
    for i, row in optics.reset_index(drop=True).iterrows():
        def get(label, default, row=row):
            value = row.get(label, default)
            return default if value is None or pd.isna(value) else value

        number = int(get("rlnOpticsGroup", i + 1))
        groups[number] = StackOptics(
            pixel_size_a=float(row["rlnImagePixelSize"]), box_pixels=int(row["rlnImageSize"]),
            voltage_kv=float(get("rlnVoltage", 300.0)),
            cs_mm=float(get("rlnSphericalAberration", 2.7)),
            amplitude_contrast=float(get("rlnAmplitudeContrast", 0.07)),
            premultiplied=bool(int(get("rlnCtfDataAreCtfPremultiplied", 0))),
            binning=float(get("rlnTomoSubtomogramBinning", 1.0)),
            tilt_series_pixel_size_a=(float(row["rlnTomoTiltSeriesPixelSize"])
                                      if "rlnTomoTiltSeriesPixelSize" in optics.columns
                                      else None))
    first = next(iter(groups.values()))
    for group in groups.values():
        if group.box_pixels != first.box_pixels or not np.isclose(group.pixel_size_a,
                                                                  first.pixel_size_a,
                                                                  rtol=1e-3):
            raise TomosiftError(f"{path}: optics groups differ in rlnImageSize or "
                                "rlnImagePixelSize (one box and pixel size per dataset)")
    if first.box_pixels < 8 or first.box_pixels % 2:
        raise TomosiftError(f"{path}: rlnImageSize must be even and >= 8, got "
                            f"{first.box_pixels}")
    return groups


def find_tomograms_file(particles_path: str | os.PathLike) -> Path | None:
    """The tomograms file beside a particles file: an optimisation set in its folder that
    names it, ``<stem>_tomograms.star`` or ``tomograms.star``; None when there is none."""
    particles_path = Path(particles_path)
    folder = particles_path.parent
    for candidate in sorted(folder.glob("*optimisation_set*.star")):
        try:
            named_particles, tomograms = read_optimisation_set(candidate)
        except TomosiftError:
            continue
        if named_particles.resolve() == particles_path.resolve():
            return tomograms
    for candidate in (folder / f"{particles_path.stem}_tomograms.star",
                      folder / "tomograms.star"):
        if candidate.is_file():
            return candidate
    return None


def resolve_sources(source: str | os.PathLike,
                    tomograms: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(particles file, tomograms file) of an optimisation set, or of a 2D-stack particles
    file and its tomograms file (given, or found beside it by :func:`find_tomograms_file`)."""
    source = Path(source)
    if is_optimisation_set(source):
        particles, named = read_optimisation_set(source)
        return particles, Path(tomograms) if tomograms is not None else named
    if tomograms is None:
        tomograms = find_tomograms_file(source)
        if tomograms is None:
            raise TomosiftError(f"{source}: the subtomograms are 2D stacks "
                                "(rlnTomoSubTomosAre2DStacks 1) and need their tomograms file: "
                                "give the optimisation set, or --tomograms tomograms.star")
    tomograms = Path(tomograms)
    if not tomograms.is_file():
        raise TomosiftError(f"{tomograms}: tomograms file not found (needed by {source})")
    return source, tomograms


def read_stack_particles(source: str | os.PathLike,
                         tomograms: str | os.PathLike | None = None,
                         check_images: bool = True) -> StackParticles:
    """Read a 2D-stack export: an optimisation set, or a particles file and its tomograms
    file. Refuses, in one line naming the file, a missing tomograms file, a particle whose
    tomogram is not listed, visible-frame flags of the wrong length and missing stacks."""
    from tomosift.tomograms.relion import read_particles_star

    particles_path, tomograms_path = resolve_sources(source, tomograms)
    table, optics_table, class_names = read_particles_star(particles_path)
    optics = _stack_optics(optics_table, particles_path)
    series = read_tomograms_star(tomograms_path)
    for label in ("rlnTomoName", "rlnImageName"):
        if label not in table.columns:
            raise TomosiftError(f"{particles_path}: no {label} column")
    names = [str(n) for n in table["rlnTomoName"]]
    unknown = sorted(set(names) - set(series))
    if unknown:
        raise TomosiftError(f"{particles_path}: tomogram {unknown[0]} is not listed in "
                            f"{tomograms_path}")
    visible = []
    for i, name in enumerate(names):
        count = series[name].n_tilts
        if "rlnTomoVisibleFrames" in table.columns:
            flags = _vectors(table["rlnTomoVisibleFrames"].iloc[i:i + 1], particles_path,
                             "rlnTomoVisibleFrames", count)[0] > 0.5
        else:
            flags = np.ones(count, dtype=bool)
        visible.append(flags)
    images = [particles_path.parent / str(n).split("@")[-1] for n in table["rlnImageName"]]
    if check_images:
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise TomosiftError(f"{particles_path}: {len(missing)} of {len(images)} stacks "
                                f"not found, first {missing[0]}")
    n = len(table)
    a_sub = np.tile(np.eye(3), (n, 1, 1))
    if all(c in table.columns for c in SUBTOMOGRAM_ANGLE_COLUMNS):
        a_sub = np.stack([_relion_matrix(*row) for row in
                          table[list(SUBTOMOGRAM_ANGLE_COLUMNS)].to_numpy(np.float64)])
    angles = (table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)
              if all(c in table.columns for c in ("rlnAngleRot", "rlnAngleTilt",
                                                  "rlnAnglePsi"))
              else np.zeros((n, 3)))
    matrices = np.stack([a_sub[i] @ _relion_matrix(*angles[i]) for i in range(n)])
    stacks = StackParticles(particles_path, table, optics, series, visible, images,
                            np.zeros((n, 3)), matrices, class_names)
    stacks.centred_a = _particle_centres(stacks, a_sub)
    return stacks


def _relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    from tomosift.discovery.rotations import relion_matrix

    return relion_matrix(rot, tilt, psi)


def _particle_centres(stacks: StackParticles, a_sub: np.ndarray) -> np.ndarray:
    """(N, 3) centres in Å from the tomogram's centre, origins applied (see the module
    docstring: Coordinates, Offsets)."""
    table = stacks.table
    centred_columns = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                       "rlnCenteredCoordinateZAngst")
    n = len(table)
    if all(c in table.columns for c in centred_columns):
        centred = table[list(centred_columns)].to_numpy(np.float64)
    elif all(c in table.columns for c in ("rlnCoordinateX", "rlnCoordinateY",
                                          "rlnCoordinateZ")):
        coordinates = table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(
            np.float64)
        centred = np.empty((n, 3))
        for i in range(n):
            series, pixel = stacks.series_of(i), stacks.optics_of(i).pixel_size_a
            centre_a = np.asarray(series.size_xyz, np.float64) * series.pixel_size_a / 2
            centred[i] = coordinates[i] * pixel - centre_a
    else:
        raise TomosiftError(f"{stacks.path}: no coordinates (needs rlnCoordinateX/Y/Z or "
                            "rlnCenteredCoordinateX/Y/ZAngst)")
    if all(c in table.columns for c in ORIGIN_COLUMNS):
        origins = table[list(ORIGIN_COLUMNS)].to_numpy(np.float64)
        centred = centred - np.einsum("nij,nj->ni", a_sub, origins)
    return centred


def read_stack_images(path: Path, n_tilts: int, visible: np.ndarray,
                      box_pixels: int) -> np.ndarray:
    """(V, m, m) float32 images of the visible tilts of one particle's stack (one image per
    tilt, or one per visible tilt in tilt order)."""
    import mrcfile

    try:
        with mrcfile.open(path, permissive=True) as mrc:
            data = np.asarray(mrc.data, dtype=np.float32)
    except Exception as error:
        raise TomosiftError(f"{path}: not a readable MRC stack ({error})") from error
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[1:] != (box_pixels, box_pixels):
        raise TomosiftError(f"{path}: images of shape {data.shape[1:]}, expected "
                            f"({box_pixels}, {box_pixels}) (rlnImageSize)")
    n_visible = int(np.count_nonzero(visible))
    if len(data) == n_tilts:
        return data[visible]
    if len(data) == n_visible:
        return data
    raise TomosiftError(f"{path}: {len(data)} images, but its tomogram has {n_tilts} tilts "
                        f"({n_visible} visible)")


# -- physics ------------------------------------------------------------------------------------

def particle_defocus_a(series: TiltSeries, frames: np.ndarray,
                       centred_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(defocus U, defocus V) in Å of the given tilts at a particle's centred position:
    the central values plus RELION's depth term ``hand * slope * Z_f . position``."""
    frames = np.asarray(frames, dtype=np.int64)
    depth = series.rotations[frames, 2, :] @ np.asarray(centred_a, dtype=np.float64)
    offset = series.hand * series.defocus_slope * depth
    return series.defocus_u_a[frames] + offset, series.defocus_v_a[frames] + offset


def dose_weight(frequency_per_a: np.ndarray, pre_exposure_e_per_a2: float,
                bfactor_per_dose_a2: float = 0.0) -> np.ndarray:
    """RELION's dose weight of one tilt at frequencies k (1/Å), any shape: Grant & Grigorieff
    ``exp(-N / (2 Ne(k)))``, or ``exp(-B N k² / 4)`` for a per-dose B-factor B > 0."""
    k = np.asarray(frequency_per_a, dtype=np.float64)
    if bfactor_per_dose_a2 > 0:
        return np.exp(-bfactor_per_dose_a2 * pre_exposure_e_per_a2 * k**2 / 4)
    a, b, c = CRITICAL_EXPOSURE_ABC
    exponent = np.zeros_like(k)
    positive = k > 0  # k -> 0: infinite critical exposure, weight 1
    exponent[positive] = -0.5 * pre_exposure_e_per_a2 / (a * k[positive] ** b + c)
    return np.exp(exponent)


def _plane_frequencies(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) integer frequencies of a full (size, size) FFT plane, indexed [v, u]."""
    freq = np.fft.fftfreq(size, 1.0 / size)
    v, u = np.meshgrid(freq, freq, indexing="ij")
    return u, v


def tilt_transfer(series: TiltSeries, frames: np.ndarray, centred_a: np.ndarray,
                  optics: StackOptics, size: int) -> np.ndarray:
    """(V, size, size) float32 RELION transfer ``c_R d`` (CTF x scale x dose weight) of the
    given tilts on a full FFT plane of ``size`` pixels of ``optics.pixel_size_a``."""
    frames = np.asarray(frames, dtype=np.int64)
    u, v = _plane_frequencies(size)
    k = np.hypot(u, v) / (size * optics.pixel_size_a)  # 1/Å
    phi = np.arctan2(v, u)
    voltage = series.voltage_kv if series.voltage_kv is not None else optics.voltage_kv
    cs_mm = series.cs_mm if series.cs_mm is not None else optics.cs_mm
    amplitude = (series.amplitude_contrast if series.amplitude_contrast is not None
                 else optics.amplitude_contrast)
    wavelength_a = electron_wavelength_nm(voltage) * ANGSTROM_PER_NM
    cs_a = cs_mm * 1e7
    defocus_u, defocus_v = particle_defocus_a(series, frames, centred_a)
    out = np.empty((len(frames), size, size), dtype=np.float32)
    for i, frame in enumerate(frames):
        angle = np.deg2rad(series.defocus_angle_deg[frame])
        defocus = ((defocus_u[i] + defocus_v[i]) / 2
                   + (defocus_u[i] - defocus_v[i]) / 2 * np.cos(2 * (phi - angle)))
        chi = np.pi * wavelength_a * defocus * k**2 - 0.5 * np.pi * cs_a * wavelength_a**3 * k**4
        ctf_relion = np.sqrt(1 - amplitude**2) * np.sin(chi) + amplitude * np.cos(chi)
        out[i] = (series.ctf_scale[frame] * ctf_relion
                  * dose_weight(k, series.pre_exposure_e_per_a2[frame],
                                series.bfactor_per_dose_a2))
    return out


# -- reconstruction -----------------------------------------------------------------------------

def _pad_images(images: np.ndarray, size: int) -> np.ndarray:
    """(V, size, size) images zero-padded about their origin m // 2 -> size // 2."""
    v, m, _ = images.shape
    padded = np.zeros((v, size, size), dtype=np.float64)
    start = size // 2 - m // 2
    padded[:, start:start + m, start:start + m] = images
    return padded


def _symmetrise_plane(grid: np.ndarray, index: int, conjugate: bool) -> None:
    """Make the x = ``index`` plane of an rfftn grid Hermitian (in place)."""
    size = grid.shape[0]
    mirror = (-np.arange(size)) % size
    plane = grid[:, :, index]
    partner = plane[mirror][:, mirror]
    grid[:, :, index] = (plane + (np.conj(partner) if conjugate else partner)) / 2


def reconstruct_particle(images: np.ndarray, rotations: np.ndarray, transfer: np.ndarray,
                         premultiplied: bool, shift_voxels: Sequence[float] = (0, 0, 0),
                         pad_factor: int = 2, wiener_fraction: float = WIENER_FRACTION
                         ) -> tuple[np.ndarray, np.ndarray]:
    """One particle's 3D subtomogram from its visible tilt images (see the module docstring).

    Args:
        images: (V, m, m) images of the visible tilts, origin at pixel m // 2.
        rotations: (V, 3, 3) rotation parts of their projection matrices (rows X, Y, Z).
        transfer: (V, P, P) ``c_R d`` of each tilt on the full FFT plane of the padded size
            P = pad_factor * m (:func:`tilt_transfer`).
        premultiplied: whether the images already carry ``c_R d``.
        shift_voxels: (3,) x, y, z shift applied to the result (re-centring), voxels.
        pad_factor: zero-padding of the insertion grid.
        wiener_fraction: Wiener constant relative to the shell's mean weight.

    Returns:
        (volume (m, m, m) float32, CTF-corrected, particle white; fourier_weights
        (m, m, m // 2 + 1) float32, the summed ``(c_R d)²`` in rfftn layout, 0 unobserved).
    """
    images = np.asarray(images, dtype=np.float64)
    n_images, m = images.shape[0], images.shape[1]
    size = pad_factor * m
    if transfer.shape != (n_images, size, size):
        raise TomosiftError(f"transfer of shape {transfer.shape}, expected "
                            f"({n_images}, {size}, {size})")
    half = size // 2 + 1
    data = np.zeros(size * size * half, dtype=np.complex128)
    weight = np.zeros(size * size * half, dtype=np.float64)
    if n_images:
        spectra = np.fft.fft2(np.fft.ifftshift(_pad_images(images, size), axes=(1, 2)))
        t = np.asarray(transfer, dtype=np.float64)
        values = spectra * t if not premultiplied else spectra
        weights = t**2
        u, v = _plane_frequencies(size)
        rot = np.asarray(rotations, dtype=np.float64)
        # k = u X + v Y for every tilt: (V, size, size, 3).
        points = u[None, :, :, None] * rot[:, None, None, 0, :] + \
            v[None, :, :, None] * rot[:, None, None, 1, :]
        points = points.reshape(-1, 3)
        values = values.reshape(-1)
        weights = weights.reshape(-1)
        flip = points[:, 0] < 0  # fold onto the stored half space: F(-k) = conj F(k)
        points[flip] *= -1
        values[flip] = np.conj(values[flip])
        keep = np.all(np.abs(points) <= size / 2, axis=1)
        points, values, weights = points[keep], values[keep], weights[keep]
        for corner, corner_weight in trilinear_corners(points):
            inside = corner[:, 0] < half
            w = corner_weight[inside]
            flat = ((corner[inside, 2] % size) * size
                    + corner[inside, 1] % size) * half + corner[inside, 0]
            weight += np.bincount(flat, w * weights[inside], minlength=weight.size)
            data += np.bincount(flat, w * values[inside].real, minlength=data.size)
            data += 1j * np.bincount(flat, w * values[inside].imag, minlength=data.size)
    data = data.reshape(size, size, half)
    weight = weight.reshape(size, size, half)
    for plane in {0, half - 1}:
        _symmetrise_plane(data, plane, conjugate=True)
        _symmetrise_plane(weight, plane, conjugate=False)
    observed = weight > 0
    kz, ky, kx = (np.fft.fftfreq(size, 1.0 / size)[:, None, None],
                  np.fft.fftfreq(size, 1.0 / size)[None, :, None],
                  np.arange(half)[None, None, :])
    shell = np.rint(np.sqrt(kz**2 + ky**2 + kx**2)).astype(np.int64)
    sums = np.bincount(shell[observed], weight[observed], minlength=shell.max() + 1)
    counts = np.bincount(shell[observed], minlength=shell.max() + 1)
    wiener = wiener_fraction * sums / np.maximum(counts, 1)
    spectrum = np.where(observed, data / np.maximum(weight + wiener[shell], 1e-300), 0)
    shift = np.asarray(shift_voxels, dtype=np.float64)
    if np.any(shift != 0):
        phase = (kx * shift[0] + ky * shift[1] + kz * shift[2]) / size
        spectrum = spectrum * np.exp(-2j * np.pi * phase)
    volume = np.fft.fftshift(np.fft.irfftn(spectrum, s=(size, size, size), axes=(0, 1, 2)))
    start = size // 2 - m // 2
    volume = volume[start:start + m, start:start + m, start:start + m]
    index = (pad_factor * np.fft.fftfreq(m, 1.0 / m).astype(np.int64)) % size
    coverage = weight[np.ix_(index, index, pad_factor * np.arange(m // 2 + 1))]
    return volume.astype(np.float32), coverage.astype(np.float32)


def reconstruct_index(stacks: StackParticles, index: int, pad_factor: int = 2,
                      wiener_fraction: float = WIENER_FRACTION
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(volume, fourier_weights) of particle ``index`` of a read export."""
    series = stacks.series_of(index)
    optics = stacks.optics_of(index)
    visible = stacks.visible[index]
    images = read_stack_images(stacks.images[index], series.n_tilts, visible,
                               optics.box_pixels)
    frames = np.flatnonzero(visible)
    transfer = tilt_transfer(series, frames, stacks.centred_a[index], optics,
                             pad_factor * optics.box_pixels)
    table = stacks.table
    shift = np.zeros(3)
    if all(c in table.columns for c in ORIGIN_COLUMNS):  # re-centre: +A_sub origin / pixel
        a_sub = np.eye(3)
        if all(c in table.columns for c in SUBTOMOGRAM_ANGLE_COLUMNS):
            a_sub = _relion_matrix(*table[list(SUBTOMOGRAM_ANGLE_COLUMNS)].iloc[index])
        origin = table[list(ORIGIN_COLUMNS)].iloc[index].to_numpy(np.float64)
        shift = a_sub @ origin / optics.pixel_size_a
    return reconstruct_particle(images, series.rotations[frames], transfer,
                                optics.premultiplied, shift, pad_factor, wiener_fraction)


def iter_reconstructed(stacks: StackParticles, pad_factor: int = 2,
                       wiener_fraction: float = WIENER_FRACTION
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(volume, fourier_weights) of every particle in file order, one in memory at a time."""
    for index in range(len(stacks)):
        yield reconstruct_index(stacks, index, pad_factor, wiener_fraction)


# -- the dataset --------------------------------------------------------------------------------

def stack_records(stacks: StackParticles):
    """The :class:`~tomosift.tomograms.records.ParticleRecords` of a read export: positions in
    pixels of ``rlnImagePixelSize`` (origins applied), angles of ``A_sub A``."""
    from tomosift.discovery.rotations import relion_angles
    from tomosift.tomograms.records import ParticleRecords, tomo_names

    n = len(stacks)
    pixel = stacks.pixel_size_a
    sizes = np.zeros((n, 3), dtype=np.int64)
    for i in range(n):
        series = stacks.series_of(i)
        sizes[i] = np.rint(np.asarray(series.size_xyz) * series.pixel_size_a / pixel)
    coordinates = stacks.centred_a / pixel + sizes / 2
    angles = np.array([relion_angles(m) for m in stacks.matrices]) if n else np.zeros((0, 3))
    return ParticleRecords(tomo_names(stacks.table), coordinates, sizes, angles,
                           [str(p) for p in stacks.images], pixel / ANGSTROM_PER_NM,
                           stacks.centred_a.copy())


def import_stack_particles(source, out_path, tomograms=None, polarity: str = "white",
                           labels: bool = True, test_fraction: float = 0.5, seed: int = 1,
                           dtype: str = "float32", progress: bool = True,
                           pad_factor: int = 2, wiener_fraction: float = WIENER_FRACTION):
    """Reconstruct a 2D-stack export into a dataset file, streaming (nothing is written when
    any particle fails). Returns :class:`tomosift.tomograms.imports.ImportSummary`.

    The dataset holds the CTF-corrected volumes (attribute ``ctf_corrected`` True), their
    ``fourier_weights`` and ``particles/defocus_um``; ``tilt_max_deg`` is the largest tilt of
    the tomograms' projection matrices.
    """
    from tomosift.tomograms.imports import ImportSummary
    from tomosift.tomograms.records import (
        check_options,
        common_attrs,
        stratified_split,
        write_particle_dataset,
    )
    from tomosift.tomograms.relion import class_labels

    stacks = read_stack_particles(source, tomograms)
    n, box = len(stacks), stacks.box_pixels
    tilt_max = float(max(np.max(s.tilt_angles_deg) for s in stacks.tomograms.values()))
    tilt_max = min(max(round(tilt_max, 1), 0.1), 90.0)
    check_options(tilt_max, polarity, test_fraction, dtype)
    class_labels_, names = np.full(n, -1, dtype=np.int64), []
    if labels and "rlnClassNumber" in stacks.table.columns:
        class_labels_, names = class_labels(stacks.table["rlnClassNumber"].to_numpy(),
                                            stacks.class_names, stacks.path)
    labels_known = bool(names)
    voxel_nm = stacks.pixel_size_a / ANGSTROM_PER_NM
    attrs = {"voxel_size_nm": voxel_nm, "box_voxels": int(box), "n_particles": n,
             **common_attrs(source, tilt_max, polarity, labels_known, test_fraction, seed,
                            dtype),
             "ctf_corrected": True, "stacks_2d": True,
             "wiener_fraction": float(wiener_fraction)}
    group = stacks.optics_of(0)
    first = next(iter(stacks.tomograms.values()))
    attrs.update({"voltage_kv": group.voltage_kv, "cs_mm": group.cs_mm,
                  "amplitude_contrast": group.amplitude_contrast,
                  "tilt_series_pixel_size_a": float(group.tilt_series_pixel_size_a
                                                    or first.pixel_size_a)})
    split = (stratified_split(class_labels_, test_fraction, seed) if labels_known
             else np.full(n, b"test", dtype="S5"))
    write_particle_dataset(out_path, iter_reconstructed(stacks, pad_factor, wiener_fraction),
                           n, box, class_labels_, names, stack_records(stacks), split, attrs,
                           dtype, progress, fourier_weights=True,
                           particle_extras={"defocus_um": stacks.defocus_um()})
    return ImportSummary(n, box, voxel_nm, labels_known, len(names))


# -- writing an export (a simulator) ------------------------------------------------------------

def project_particle(spectrum: np.ndarray, box: int, rotations: np.ndarray,
                     matrix: np.ndarray, centre_voxels: Sequence[float]) -> np.ndarray:
    """(T, box, box) noise-free projections (full FFT planes, before any transfer) of a map
    placed in the tomogram frame as ``transform(map, matrix, centre)``.

    Args:
        spectrum: the map's :func:`tomosift.simulate.tomography.padded_spectrum`.
        box: the image box (the map's box).
        rotations: (T, 3, 3) rotation parts of the projection matrices.
        matrix: (3, 3) the particle's RELION matrix (``A_sub A``).
        centre_voxels: (3,) the particle's centre relative to the box centre, x, y, z.

    Returns:
        (T, box, box) complex128 2D transforms (unshifted layout, origin at index 0).
    """
    from tomosift.simulate.tomography import sample_spectrum

    u, v = _plane_frequencies(box)
    scale = spectrum.shape[0] / box
    centre = np.asarray(centre_voxels, dtype=np.float64)
    out = np.empty((len(rotations), box, box), dtype=np.complex128)
    for i, rot in enumerate(np.asarray(rotations, dtype=np.float64)):
        k = u.reshape(-1, 1) * rot[0] + v.reshape(-1, 1) * rot[1]
        values = sample_spectrum(spectrum, (k @ matrix) * scale).astype(np.complex128)
        values *= np.exp(-2j * np.pi * (k @ centre) / box)
        out[i] = values.reshape(box, box)
    return out


@dataclass
class ExportParticle:
    """One particle of a simulated export: which map, where and how it is seen.

    ``centred_a``: the coordinate (Å from the tomogram's centre) that the stack is centred
    on; ``origin_a``: rlnOriginX/Y/ZAngst (the particle sits at centred_a - origin_a);
    ``angles_deg``: rlnAngleRot/Tilt/Psi; ``visible``: (T,) flags (None = all).
    """

    tomo_name: str
    map_index: int
    centred_a: tuple[float, float, float]
    angles_deg: tuple[float, float, float]
    origin_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    visible: np.ndarray | None = None
    class_number: int | None = None


def write_stack_export(out_dir: str | os.PathLike, name: str, maps: Sequence[np.ndarray],
                       tomograms: dict[str, TiltSeries], particles: Sequence[ExportParticle],
                       optics: StackOptics, stack_layout: str = "all",
                       noise_sigma: float = 0.0, seed: int = 1) -> Path:
    """Project maps through real or simulated tilt geometry and write a RELION 5 2D-stack
    export: ``<name>.star`` (particles), ``<name>_tomograms.star``,
    ``<name>_optimisation_set.star`` and ``<name>/<tomo>/<tomo>_<k>.mrcs``. Returns the
    optimisation set's path.

    Each tilt image is the projection of the particle (white, dose-damaged by ``d``) as
    RELION stores it: multiplied by ``c_R d`` once more when ``optics.premultiplied``
    (then ``c_R² d² F``), else ``c_R d F``; white noise of ``noise_sigma`` is added to the
    recorded image before premultiplication. Invisible tilts hold zeros.
    ``stack_layout``: ``all`` (one image per tilt, WarpTools) or ``visible`` (RELION 5).
    """
    import mrcfile

    from tomosift.simulate.tomography import padded_spectrum

    if stack_layout not in STACK_LAYOUTS:
        raise TomosiftError(f"stack_layout must be one of {STACK_LAYOUTS}, not {stack_layout!r}")
    out_dir = Path(out_dir)
    box = optics.box_pixels
    spectra = [padded_spectrum(np.asarray(m, dtype=np.float64)) for m in maps]
    for m in maps:
        if m.shape != (box, box, box):
            raise TomosiftError(f"maps must be ({box}, {box}, {box}) (rlnImageSize), got "
                                f"{m.shape}")
    rng = np.random.default_rng(seed)
    rows = []
    for number, particle in enumerate(particles, start=1):
        series = tomograms[particle.tomo_name]
        visible = (np.ones(series.n_tilts, dtype=bool) if particle.visible is None
                   else np.asarray(particle.visible, dtype=bool))
        matrix = _relion_matrix(*particle.angles_deg)
        centre = -np.asarray(particle.origin_a, dtype=np.float64) / optics.pixel_size_a
        position = np.asarray(particle.centred_a, dtype=np.float64) - np.asarray(
            particle.origin_a, dtype=np.float64)
        frames = np.arange(series.n_tilts)
        transfer = tilt_transfer(series, frames, position, optics, box).astype(np.float64)
        planes = project_particle(spectra[particle.map_index], box, series.rotations, matrix,
                                  centre)
        recorded = np.fft.ifft2(planes * transfer).real  # c_R d F: inverted, damaged
        if noise_sigma > 0:
            recorded = recorded + rng.normal(0.0, noise_sigma, recorded.shape)
        if optics.premultiplied:
            recorded = np.fft.ifft2(np.fft.fft2(recorded) * transfer).real
        images = np.fft.fftshift(recorded, axes=(1, 2)).astype(np.float32)
        images[~visible] = 0
        if stack_layout == "visible":
            images = images[visible]
        stem = particle.tomo_name.removesuffix(".tomostar")
        relative = Path(name) / stem / f"{stem}_{number:06d}.mrcs"
        with atomic_path(out_dir / relative) as tmp:
            with mrcfile.new(tmp, overwrite=True) as mrc:
                mrc.set_data(images)
                mrc.set_image_stack()
                mrc.voxel_size = optics.pixel_size_a
        row = {"rlnTomoName": particle.tomo_name, "rlnTomoParticleId": number,
               "rlnCenteredCoordinateXAngst": particle.centred_a[0],
               "rlnCenteredCoordinateYAngst": particle.centred_a[1],
               "rlnCenteredCoordinateZAngst": particle.centred_a[2],
               "rlnAngleRot": particle.angles_deg[0], "rlnAngleTilt": particle.angles_deg[1],
               "rlnAnglePsi": particle.angles_deg[2],
               "rlnTomoParticleName": f"{stem}/{number}", "rlnOpticsGroup": 1,
               "rlnImageName": str(relative),
               "rlnOriginXAngst": particle.origin_a[0], "rlnOriginYAngst": particle.origin_a[1],
               "rlnOriginZAngst": particle.origin_a[2],
               "rlnTomoVisibleFrames": "[" + ",".join(str(int(f)) for f in visible) + "]"}
        if particle.class_number is not None:
            row["rlnClassNumber"] = int(particle.class_number)
        rows.append(row)
    optics_table = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnSphericalAberration": [optics.cs_mm], "rlnVoltage": [optics.voltage_kv],
        "rlnTomoTiltSeriesPixelSize": [optics.tilt_series_pixel_size_a or optics.pixel_size_a],
        "rlnCtfDataAreCtfPremultiplied": [int(optics.premultiplied)],
        "rlnImageDimensionality": [2], "rlnTomoSubtomogramBinning": [optics.binning],
        "rlnImagePixelSize": [optics.pixel_size_a], "rlnImageSize": [box],
        "rlnAmplitudeContrast": [optics.amplitude_contrast]})
    particles_path = out_dir / f"{name}.star"
    tomograms_path = out_dir / f"{name}_tomograms.star"
    write_star(particles_path, {"general": {STACK_FLAG: 1}, "optics": optics_table,
                                "particles": pd.DataFrame(rows)})
    write_tomograms_star(tomograms_path, tomograms, optics)
    optimisation = out_dir / f"{name}_optimisation_set.star"
    write_text(optimisation, f"\ndata_\n\n_rlnTomoParticlesFile   {particles_path.name}\n"
               f"_rlnTomoTomogramsFile   {tomograms_path.name}\n")
    return optimisation


def _vector_text(values: np.ndarray) -> str:
    return "[" + ",".join(f"{float(v):.9g}" for v in values) + "]"


def write_tomograms_star(path: str | os.PathLike, tomograms: dict[str, TiltSeries],
                         optics: StackOptics) -> None:
    """A RELION 5 tomograms file (``global`` + one block of tilts per tomogram)."""
    rows = []
    blocks: dict = {}
    for name, series in tomograms.items():
        rows.append({"rlnTomoName": name, "rlnTomoTiltSeriesName": "simulated.mrc",
                     "rlnTomoFrameCount": series.n_tilts,
                     "rlnTomoSizeX": series.size_xyz[0], "rlnTomoSizeY": series.size_xyz[1],
                     "rlnTomoSizeZ": series.size_xyz[2], "rlnTomoHand": series.hand,
                     "rlnOpticsGroupName": "opticsGroup1",
                     "rlnTomoTiltSeriesPixelSize": series.pixel_size_a,
                     "rlnVoltage": series.voltage_kv or optics.voltage_kv,
                     "rlnSphericalAberration": series.cs_mm or optics.cs_mm,
                     "rlnAmplitudeContrast": (series.amplitude_contrast
                                              if series.amplitude_contrast is not None
                                              else optics.amplitude_contrast)})
        columns = {label: [_vector_text(m[axis]) for m in series.projections]
                   for axis, label in enumerate(PROJECTION_COLUMNS)}
        columns.update({"rlnDefocusU": series.defocus_u_a, "rlnDefocusV": series.defocus_v_a,
                        "rlnDefocusAngle": series.defocus_angle_deg,
                        "rlnCtfScalefactor": series.ctf_scale,
                        "rlnMicrographPreExposure": series.pre_exposure_e_per_a2})
        blocks[name] = pd.DataFrame(columns)
    write_star(path, {"global": pd.DataFrame(rows), **blocks})


def simulated_tilt_series(name: str, tilt_angles_deg: Sequence[float], defocus_a: float,
                          dose_per_tilt_e_per_a2: float, size_xyz: Sequence[int],
                          pixel_size_a: float, hand: float = -1.0,
                          axis_angle_deg: float = 0.0) -> TiltSeries:
    """A single-axis tilt series: tilt about the y axis, images rotated by ``axis_angle_deg``
    in plane (as a real tilt axis is), dose-symmetric order from the smallest tilt."""
    angles = np.asarray(tilt_angles_deg, dtype=np.float64)
    c, s = np.cos(np.deg2rad(axis_angle_deg)), np.sin(np.deg2rad(axis_angle_deg))
    in_plane = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    projections = np.tile(np.eye(4), (len(angles), 1, 1))
    for i, angle in enumerate(np.deg2rad(angles)):
        ca, sa = np.cos(angle), np.sin(angle)
        tilt = np.array([[ca, 0.0, sa], [0.0, 1.0, 0.0], [-sa, 0.0, ca]])
        projections[i, :3, :3] = in_plane @ tilt.T  # rows: detector axes in tomogram frame
    order = np.argsort(np.abs(angles), kind="stable")
    pre = np.empty(len(angles))
    pre[order] = np.arange(len(angles)) * dose_per_tilt_e_per_a2
    t = len(angles)
    return TiltSeries(name, projections, np.full(t, float(defocus_a)),
                      np.full(t, float(defocus_a)), np.zeros(t), np.ones(t), pre, float(hand),
                      tuple(int(v) for v in size_xyz), float(pixel_size_a))
