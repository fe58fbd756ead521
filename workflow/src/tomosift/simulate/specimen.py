"""What surrounds a particle in a real specimen: neighbouring particles and the solvent.

The paper places each particle alone, in vacuum. tomosift's realistic mode adds:

* **Crowding** (:class:`Crowding`, :func:`place_neighbours`): 0 to ``max_neighbours``
  particles of other classes around the centre particle, each randomly rotated, at a physical
  distance: the spheres that hold their densities (:func:`support_radius_voxels`) do not
  overlap and are at least ``min_gap_nm`` apart, at most ``max_gap_nm`` beyond touching the
  centre particle, and each reaches into the box (so it is partly inside). An empty
  subtomogram keeps a free sphere of the median class radius around its centre.
* **Solvent** (:class:`Ice`, :func:`solvent_corrected`): a particle displaces the ice it
  sits in, so its contrast is that of protein minus that of the solvent. With the solvent's
  potential a fraction ``solvent_contrast`` of protein's (vitreous ice about 4.5 V, protein
  about 7.0 V: 0.64), each voxel loses ``solvent_contrast`` times the protein plateau
  times the fraction of the voxel that protein fills. The uniform ice itself only adds a
  constant, which carries no information; its thickness thins the beam (see
  :mod:`tomosift.simulate.dose`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from tomosift.density import PLATEAU_DENSITY_DA_PER_NM3
from tomosift.errors import TomosiftError

#: Density above this fraction of a map's peak counts as the particle (support radius).
SUPPORT_FRACTION = 0.01
VITREOUS_ICE_SOLVENT_CONTRAST = 0.64


@dataclass(frozen=True)
class Crowding:
    """Neighbours around each particle (defaults: none, the paper's setting)."""

    max_neighbours: int = 0
    min_gap_nm: float = 0.5
    max_gap_nm: float = 3.0
    attempts: int = 50

    def __post_init__(self) -> None:
        if self.max_neighbours < 0:
            raise TomosiftError(f"crowding.max_neighbours must be >= 0, got {self.max_neighbours}")
        if not 0 <= self.min_gap_nm <= self.max_gap_nm:
            raise TomosiftError("crowding: need 0 <= min_gap_nm <= max_gap_nm, got "
                                f"{self.min_gap_nm:g} and {self.max_gap_nm:g}")


@dataclass(frozen=True)
class Ice:
    """The ice layer (defaults: vacuum, the paper's setting).

    Attributes:
        thickness_nm: ice thickness at zero tilt; the beam crosses ``thickness / cos(tilt)``.
        solvent_contrast: solvent potential / protein potential (0 = vacuum; 0.64 = vitreous
            ice).
        inelastic_mfp_nm: inelastic mean free path of electrons in ice (about 350 nm at
            300 kV); electrons scattered inelastically are removed by the energy filter.
    """

    thickness_nm: float = 0.0
    solvent_contrast: float = 0.0
    inelastic_mfp_nm: float = 350.0

    def __post_init__(self) -> None:
        if self.thickness_nm < 0 or self.inelastic_mfp_nm <= 0:
            raise TomosiftError("ice: thickness_nm must be >= 0 and inelastic_mfp_nm > 0")
        if not 0 <= self.solvent_contrast < 1:
            raise TomosiftError(f"ice.solvent_contrast must be in [0, 1), "
                                f"got {self.solvent_contrast:g}")


@dataclass(frozen=True)
class Neighbour:
    """A particle beside the centre one: its class, rotation and position (x, y, z voxels
    from the box centre)."""

    label: int
    rotation: np.ndarray
    position_voxels: np.ndarray


def support_radius_voxels(volume: np.ndarray, fraction: float = SUPPORT_FRACTION) -> float:
    """Largest distance (voxels) from the box centre (voxel n // 2) of density above
    ``fraction`` of the map's peak."""
    n = volume.shape[0]
    peak = volume.max()
    if peak <= 0:
        raise TomosiftError("the map holds no positive density")
    axis = np.arange(n) - n // 2
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    inside = volume > fraction * peak
    return float(np.sqrt(xx[inside] ** 2 + yy[inside] ** 2 + zz[inside] ** 2).max())


def solvent_corrected(volume: np.ndarray, solvent_contrast: float) -> np.ndarray:
    """The density minus the solvent it displaces (see the module docstring), float32."""
    if solvent_contrast == 0:
        return volume
    plateau = PLATEAU_DENSITY_DA_PER_NM3
    occupancy = np.clip(volume / plateau, 0.0, 1.0)
    return (volume - solvent_contrast * plateau * occupancy).astype(np.float32)


def _distance_to_box(position: np.ndarray, half_box: float) -> float:
    """Distance from a point to the cube [-half_box, half_box]³ (0 inside)."""
    outside = np.clip(np.abs(position) - half_box, 0.0, None)
    return float(np.sqrt((outside**2).sum()))


def place_neighbours(
    rng: np.random.Generator,
    centre_label: int,
    centre_shift_voxels: np.ndarray,
    radii_voxels: np.ndarray,
    box_voxels: int,
    voxel_size_nm: float,
    crowding: Crowding,
) -> list[Neighbour]:
    """Neighbours of one particle, drawn from ``rng`` (the particle's pose stream).

    Args:
        centre_label: the centre particle's class; ``len(radii_voxels)`` or more = empty.
        centre_shift_voxels: (3,) where the centre particle sits (x, y, z voxels).
        radii_voxels: (C,) support radius of each structure class.
        box_voxels: the subtomogram's edge.
        voxel_size_nm: for the gaps.
        crowding: how many and how close.

    Returns:
        Up to ``crowding.max_neighbours`` neighbours (fewer when no free place was found in
        ``crowding.attempts`` tries).
    """
    n_structures = len(radii_voxels)
    if crowding.max_neighbours == 0 or n_structures == 0:
        return []
    is_empty = centre_label >= n_structures
    candidates = np.array([c for c in range(n_structures) if c != centre_label])
    if candidates.size == 0:
        return []
    centre_radius = float(np.median(radii_voxels)) if is_empty else radii_voxels[centre_label]
    centre = np.asarray(centre_shift_voxels, dtype=np.float64)
    half_box = box_voxels / 2
    min_gap = crowding.min_gap_nm / voxel_size_nm
    max_gap = crowding.max_gap_nm / voxel_size_nm
    placed: list[Neighbour] = []
    for _ in range(int(rng.integers(0, crowding.max_neighbours + 1))):
        label = int(rng.choice(candidates))
        rotation = Rotation.random(random_state=rng).as_matrix()
        radius = radii_voxels[label]
        for _attempt in range(crowding.attempts):
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            distance = centre_radius + radius + rng.uniform(min_gap, max_gap)
            position = centre + distance * direction
            if _distance_to_box(position, half_box) >= radius:
                continue  # entirely outside the box
            if all(np.linalg.norm(position - other.position_voxels)
                   >= radius + radii_voxels[other.label] + min_gap for other in placed):
                placed.append(Neighbour(label, rotation, position))
                break
    return placed


def crowding_reach_voxels(box_voxels: int, max_radius_voxels: float) -> float:
    """How far (per axis) a neighbour's density can lie from the box centre: it reaches into
    the box, so its centre is within ``n / 2 + r`` per axis, its density within ``n / 2 + 2r``."""
    return box_voxels / 2 + 2 * max_radius_voxels
