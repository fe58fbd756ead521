"""Density maps on the simulation grid, from atomic models or from other maps.

Conventions used throughout tomosift:

* volumes are numpy arrays indexed ``[z, y, x]`` (MRC sections, rows, columns);
* the origin of a box of ``n`` voxels is voxel ``n // 2`` on every axis (the FFT convention),
  so a particle "centred in the box" has its centre of mass there;
* voxel sizes are in nm (MRC headers store Å and are converted on reading and writing).

Atomic models become maps in one of two ways:

* ``gaussian`` (default, like Situs PDB2VOL): every atom is a 3D Gaussian weighted by its mass,
  with standard deviation ``sigma = resolution / 2`` (Situs's convention: the resolution is
  twice the kernel's sigma). The map is in Da/nm³, so its integral is the complex's mass.
* ``electron``: gemmi's electron-scattering calculator (``DensityCalculatorE``), blurred to the
  same resolution (B = 8π²σ²); units are gemmi's (electrostatic potential).

Both are computed on a grid ``oversample`` times finer than the output and brought to the
output grid by Fourier cropping, which removes the frequencies the coarse grid cannot hold
instead of aliasing them.

Maps (MRC) arrive on unrelated intensity scales. They are put on the atomic models' Da/nm³
scale by their plateau: the 90th percentile of the voxels above 10% of the peak is set to
:data:`PLATEAU_DENSITY_DA_PER_NM3`, the value this statistic has in Gaussian maps of atomic
models. Calibration: the 15 atomic models of ``../shared/structures``, made into maps at
1 nm voxels and 2 nm resolution and read back as maps, have a plateau of 595 ± 33 Da/nm³
(coefficient of variation 5.6%), so a map's integral estimates its mass to about 6%. The scale
matters where contrast is physical (the detector-noise model, the solvent), not for the
paper's SNR-calibrated noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import gemmi
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from tomosift.errors import TomosiftError
from tomosift.grids import trilinear_corners
from tomosift.io import read_mrc
from tomosift.structures import AtomicModel, is_map_file, read_atomic_model

DENSITY_METHODS = ("gaussian", "electron")
#: Plateau density (Da/nm³) of protein in tomosift's maps (see the module docstring).
PLATEAU_DENSITY_DA_PER_NM3 = 600.0


def plateau_density(volume: np.ndarray) -> float:
    """The 90th percentile of the voxels above 10% of a map's peak (its interior level)."""
    inside = volume[volume > 0.1 * volume.max()]
    if inside.size == 0:
        raise TomosiftError("the map holds no density above 10% of its peak")
    return float(np.percentile(inside, 90))


@dataclass(frozen=True)
class DensitySettings:
    """How maps are made: output grid, resolution and method."""

    box_voxels: int = 40
    voxel_size_nm: float = 0.92
    resolution_nm: float = 0.92
    method: str = "gaussian"
    assembly: str = "first"
    oversample: int = 3

    def __post_init__(self) -> None:
        if self.method not in DENSITY_METHODS:
            raise TomosiftError(f"density method must be one of {DENSITY_METHODS}")
        if self.box_voxels < 8 or self.voxel_size_nm <= 0 or self.resolution_nm <= 0:
            raise TomosiftError("density: box >= 8 voxels, voxel size and resolution > 0 nm")

    @property
    def box_size_nm(self) -> float:
        return self.box_voxels * self.voxel_size_nm

    @property
    def sigma_nm(self) -> float:
        return self.resolution_nm / 2.0


@dataclass
class DensityStats:
    """One row of ``results/densities/summary.tsv`` (no timings: same input, same bytes)."""

    name: str
    source: str
    kind: str
    description: str
    atoms: int | None
    mass_kda: float | None
    radius_of_gyration_nm: float
    max_extent_nm: float
    max_radius_nm: float

    def as_row(self) -> dict:
        return asdict(self)


def centre_of_mass(coordinates_nm: np.ndarray, masses_da: np.ndarray) -> np.ndarray:
    """Mass-weighted centre (3,) of (N, 3) coordinates."""
    return (coordinates_nm * masses_da[:, None]).sum(axis=0) / masses_da.sum()


def radius_of_gyration_nm(coordinates_nm: np.ndarray, weights: np.ndarray) -> float:
    """Weighted radius of gyration of (N, 3) points about their weighted centre."""
    centre = (coordinates_nm * weights[:, None]).sum(axis=0) / weights.sum()
    squared = ((coordinates_nm - centre) ** 2).sum(axis=1)
    return float(np.sqrt((squared * weights).sum() / weights.sum()))


def max_extent_nm(points_nm: np.ndarray) -> float:
    """Largest distance between two of the (N, 3) points (through their convex hull)."""
    if len(points_nm) < 2:
        return 0.0
    try:
        hull_points = points_nm[ConvexHull(points_nm).vertices]
    except QhullError:  # flat or degenerate point sets
        hull_points = points_nm
    if len(hull_points) > 4000:
        hull_points = hull_points[:: int(np.ceil(len(hull_points) / 4000))]
    diff = hull_points[:, None, :] - hull_points[None, :, :]
    return float(np.sqrt((diff**2).sum(axis=-1).max()))


def check_fits_box(name: str, max_radius_nm: float, extent_nm: float, settings: DensitySettings):
    """Raise if a particle reaching ``max_radius_nm`` from its centre cannot sit in the box.

    Every orientation must fit, so the particle must lie inside the sphere inscribed in the box,
    to within one voxel (the sampling tolerance of a contour or an atom centre).
    """
    half_box_nm = settings.box_size_nm / 2
    if max_radius_nm > half_box_nm + settings.voxel_size_nm:
        raise TomosiftError(
            f"{name}: the complex does not fit the box: it reaches {max_radius_nm:.1f} nm from "
            f"its centre (max extent {extent_nm:.1f} nm) but the box is {settings.box_size_nm:.1f}"
            f" nm ({settings.box_voxels} voxels of {settings.voxel_size_nm:g} nm, half-box "
            f"{half_box_nm:.1f} nm); use 'assembly: none', a larger box or a larger voxel size"
        )


def gaussian_density(
    coordinates_nm: np.ndarray,
    masses_da: np.ndarray,
    box_voxels: int,
    voxel_size_nm: float,
    sigma_nm: float,
    oversample: int = 3,
) -> np.ndarray:
    """Mass-weighted sum of 3D Gaussians, sampled without aliasing.

    Args:
        coordinates_nm: (N, 3) atom positions x, y, z in nm relative to the box origin
            (voxel ``box_voxels // 2``).
        masses_da: (N,) atom masses in Da.
        box_voxels: output edge length n.
        voxel_size_nm: output voxel edge.
        sigma_nm: standard deviation of each atom's Gaussian.
        oversample: the fine grid is ``oversample`` times finer.

    Returns:
        (n, n, n) float32 density in Da/nm³ indexed [z, y, x]; its sum times the voxel volume
        equals the total mass (for atoms inside the box).
    """
    n = box_voxels
    fine_n = n * oversample
    fine_voxel_nm = voxel_size_nm / oversample
    positions = coordinates_nm / fine_voxel_nm + fine_n // 2  # fine voxel units, x y z
    fine = _splat_trilinear(positions, masses_da, fine_n)
    spectrum = np.fft.fftn(np.fft.ifftshift(fine))
    freq = np.fft.fftfreq(fine_n, d=fine_voxel_nm)  # cycles per nm
    # Gaussian kernel transfer, divided by the trilinear splat's own transfer (sinc² per axis).
    gaussian = np.exp(-2 * np.pi**2 * sigma_nm**2 * freq**2)
    axis_transfer = gaussian / np.sinc(freq * fine_voxel_nm) ** 2
    spectrum *= axis_transfer[:, None, None] * axis_transfer[None, :, None] * axis_transfer
    coarse = _fourier_crop(spectrum, n)
    return (coarse / voxel_size_nm**3).astype(np.float32)


def electron_density(
    model: AtomicModel,
    centre_nm: np.ndarray,
    box_voxels: int,
    voxel_size_nm: float,
    sigma_nm: float,
    oversample: int = 3,
) -> np.ndarray:
    """gemmi's electron-scattering density of ``model`` blurred to ``sigma_nm``, Fourier-cropped.

    Returns:
        (n, n, n) float32 indexed [z, y, x], with ``centre_nm`` at voxel n // 2.
    """
    n = box_voxels
    fine_n = n * oversample
    edge_angstrom = n * voxel_size_nm * 10.0
    structure = model.structure.clone()
    structure.cell = gemmi.UnitCell(edge_angstrom, edge_angstrom, edge_angstrom, 90, 90, 90)
    structure.spacegroup_hm = "P 1"
    shift = gemmi.Position(*(edge_angstrom / 2 - np.asarray(centre_nm) * 10.0))
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                atom.pos = atom.pos + shift
    calculator = gemmi.DensityCalculatorE()
    calculator.grid.set_unit_cell(structure.cell)
    calculator.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calculator.grid.set_size(fine_n, fine_n, fine_n)
    calculator.grid.fill(0.0)
    calculator.d_min = 2 * voxel_size_nm * 10.0 / oversample
    calculator.blur = 8 * np.pi**2 * (sigma_nm * 10.0) ** 2
    calculator.add_model_density_to_grid(structure[0])
    fine = np.array(calculator.grid, copy=True).transpose(2, 1, 0)  # gemmi is [x, y, z]
    # Grid point i sits at i * spacing, so the origin is at fine_n // 2 as everywhere else.
    spectrum = np.fft.fftn(np.fft.ifftshift(fine))
    coarse = _fourier_crop(spectrum, n) / oversample**3
    return coarse.astype(np.float32)


def _splat_trilinear(positions: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Spread weights at (N, 3) x y z positions (voxel units) onto an (n, n, n) [z, y, x] grid."""
    grid = np.zeros(n**3, dtype=np.float64)
    for corner, corner_weight in trilinear_corners(positions):
        ix, iy, iz = (corner % n).T
        grid += np.bincount((iz * n + iy) * n + ix, weights * corner_weight, minlength=n**3)
    return grid.reshape(n, n, n)


def _fourier_crop(spectrum: np.ndarray, n: int) -> np.ndarray:
    """Inverse FFT of the central n³ frequencies of an unshifted spectrum, origin at n // 2."""
    big = spectrum.shape[0]
    keep = np.r_[0 : n - n // 2, big - n // 2 : big]
    cropped = spectrum[np.ix_(keep, keep, keep)]
    return np.fft.fftshift(np.fft.ifftn(cropped).real)


def density_from_model(
    model: AtomicModel, settings: DensitySettings, name: str = "model"
) -> tuple[np.ndarray, dict]:
    """Map of an atomic model with its centre of mass at the box origin, and its statistics.

    Raises:
        TomosiftError: when the complex does not fit the box.
    """
    box_size = model.bounding_box_size_nm()
    if box_size.max() > 2 * (settings.box_size_nm / 2 + settings.voxel_size_nm):
        # cheap early exit for huge assemblies: no sphere of the box's size can hold them
        check_fits_box(name, box_size.max() / 2, float(np.linalg.norm(box_size)), settings)
    coords, masses = model.coordinates_nm, model.masses_da
    centre = centre_of_mass(coords, masses)
    centred = coords - centre
    radius = float(np.sqrt((centred**2).sum(axis=1)).max())
    extent = max_extent_nm(centred)
    check_fits_box(name, radius, extent, settings)
    if settings.method == "gaussian":
        volume = gaussian_density(
            centred, masses, settings.box_voxels, settings.voxel_size_nm, settings.sigma_nm,
            settings.oversample,
        )
    else:
        volume = electron_density(
            model, centre, settings.box_voxels, settings.voxel_size_nm, settings.sigma_nm,
            settings.oversample,
        )
    stats = {
        "atoms": len(masses),
        "mass_kda": float(masses.sum() / 1000.0),
        "radius_of_gyration_nm": radius_of_gyration_nm(centred, masses),
        "max_extent_nm": extent,
        "max_radius_nm": radius,
    }
    return volume, stats


def density_from_map(
    volume: np.ndarray, voxel_size_in_nm: float, settings: DensitySettings, name: str = "map"
) -> tuple[np.ndarray, dict]:
    """Resample a density map to the output grid, centred and normalised.

    The background (median of the map's outer faces) is subtracted; the centre of mass of the
    positive density goes to the box origin; frequencies beyond the output Nyquist are removed
    before interpolation (cubic spline) when the map is finer than the output; the result is
    scaled to the atomic models' Da/nm³ scale by its plateau (see the module docstring), and
    the statistics give the mass that scale implies.

    Args:
        volume: (nz, ny, nx) map, positive density = protein.
        voxel_size_in_nm: its voxel edge.

    Returns:
        ((n, n, n) float32 map, statistics).

    Raises:
        TomosiftError: NaNs, an empty map, or a particle that does not fit the box.
    """
    if volume.ndim != 3:
        raise TomosiftError(f"{name}: expected a 3D map, got shape {volume.shape}")
    if not np.all(np.isfinite(volume)):
        raise TomosiftError(f"{name}: the map contains NaN or infinite values")
    data = volume.astype(np.float64)
    faces = np.concatenate([
        data[0].ravel(), data[-1].ravel(), data[:, 0].ravel(), data[:, -1].ravel(),
        data[:, :, 0].ravel(), data[:, :, -1].ravel(),
    ])
    data = data - np.median(faces)
    if voxel_size_in_nm < settings.voxel_size_nm:
        data = low_pass(data, voxel_size_in_nm, cutoff_per_nm=0.5 / settings.voxel_size_nm)
    positive = np.clip(data, 0, None)
    if positive.sum() <= 0:
        raise TomosiftError(f"{name}: the map holds no positive density above its background")
    grid_zyx = np.indices(data.shape).reshape(3, -1).T.astype(np.float64)
    weights = positive.ravel()
    centre_zyx = (grid_zyx * weights[:, None]).sum(axis=0) / weights.sum()
    threshold = 0.1 * positive.max()  # a contour near the envelope of the atom centres
    inside = weights > threshold
    points_nm = (grid_zyx[inside] - centre_zyx)[:, ::-1] * voxel_size_in_nm
    radius = float(np.sqrt((points_nm**2).sum(axis=1)).max()) if inside.any() else 0.0
    extent = max_extent_nm(points_nm)
    check_fits_box(name, radius, extent, settings)

    n = settings.box_voxels
    offsets_nm = (np.arange(n) - n // 2) * settings.voxel_size_nm
    zz, yy, xx = np.meshgrid(offsets_nm, offsets_nm, offsets_nm, indexing="ij")
    source = [centre_zyx[0] + zz / voxel_size_in_nm, centre_zyx[1] + yy / voxel_size_in_nm,
              centre_zyx[2] + xx / voxel_size_in_nm]
    resampled = ndimage.map_coordinates(data, source, order=3, mode="constant", cval=0.0)
    resampled *= PLATEAU_DENSITY_DA_PER_NM3 / plateau_density(resampled)
    kept = np.clip(resampled, 0, None).ravel()
    rg = radius_of_gyration_nm(
        np.indices((n, n, n)).reshape(3, -1).T[:, ::-1] * settings.voxel_size_nm, kept + 1e-12
    )
    mass_da = float(np.clip(resampled, 0, None).sum()) * settings.voxel_size_nm**3
    stats = {
        "atoms": None,
        "mass_kda": mass_da / 1000.0,
        "radius_of_gyration_nm": rg,
        "max_extent_nm": extent,
        "max_radius_nm": radius,
    }
    return resampled.astype(np.float32), stats


def low_pass(volume: np.ndarray, voxel_size_nm: float, cutoff_per_nm: float) -> np.ndarray:
    """Remove frequencies above ``cutoff_per_nm`` (soft cosine edge over the last 10%)."""
    spectrum = np.fft.rfftn(volume)
    kz = np.fft.fftfreq(volume.shape[0], voxel_size_nm)[:, None, None]
    ky = np.fft.fftfreq(volume.shape[1], voxel_size_nm)[None, :, None]
    kx = np.fft.rfftfreq(volume.shape[2], voxel_size_nm)[None, None, :]
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    edge = 0.9 * cutoff_per_nm
    mask = np.clip((cutoff_per_nm - k) / (cutoff_per_nm - edge), 0, 1)
    mask = 0.5 - 0.5 * np.cos(np.pi * mask)
    return np.fft.irfftn(spectrum * mask, s=volume.shape, axes=(0, 1, 2))


def make_density(
    path: str | Path, settings: DensitySettings, name: str | None = None, source: str | None = None
) -> tuple[np.ndarray, DensityStats]:
    """Density map of a structure file (PDB/mmCIF model or MRC map) on the output grid.

    Returns:
        ((n, n, n) float32 map indexed [z, y, x], its summary row).
    """
    path = Path(path)
    name = name or path.name
    if is_map_file(path):
        data, voxel_in = read_mrc(path)
        volume, stats = density_from_map(data, voxel_in, settings, name=f"{name} ({path})")
        kind, description = "map", (f"map resampled from {voxel_in:g} nm voxels, scaled to "
                                f"a protein plateau of {PLATEAU_DENSITY_DA_PER_NM3:g} Da/nm³ "
                                "(mass estimated)")
    else:
        model = read_atomic_model(path, settings.assembly)
        volume, stats = density_from_model(model, settings, name=f"{name} ({path})")
        kind, description = "model", f"{model.description}, {settings.method} density"
    row = DensityStats(
        name=name,
        source=source or str(path),
        kind=kind,
        description=description,
        **stats,
    )
    return volume, row


def write_summary_table(stats_paths, table_path) -> list[dict]:
    """Join per-structure JSON rows into one TSV (atomically); return the rows."""
    import json

    import pandas as pd

    from tomosift.io import atomic_path

    rows = [json.loads(Path(path).read_text()) for path in stats_paths]
    frame = pd.DataFrame(rows)
    with atomic_path(table_path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.4g")
    return rows
