"""Template-free particle picking by a 3D Difference of Gaussians (Xu et al. 2017, §3.1.2).

The paper picks its ground-truth particles "similar to (Pei et al., 2016) through convoluting
the tomograms with 3D Difference of Gaussian function with scaling factor of σ = 7 nm and
scaling factor ratio K = 1.1". Here:

1. ``difference_of_gaussians``: ``G_σ * v − G_{Kσ} * v`` of the tomogram ``v`` (negated first
   when particles are dark), a band-pass whose response peaks at the centre of a blob of
   radius about √3·σ;
2. the response is turned into a robust z-score, ``(r − median) / (1.4826 · MAD)`` over the
   voxels away from the faces, so that the threshold does not depend on the tomogram's
   intensity scale (the MAD is the noise's spread as long as particles fill less than half
   the volume);
3. ``find_peaks``: local maxima of the z-score above the threshold, at least
   ``min_distance`` apart (the higher one wins), refined to sub-voxel by a 3-point parabola
   per axis.

4. ``suppress_wedge_lobes`` (``PickSettings.wedge_suppression``): the missing wedge of a
   ±tilt_max tilt series gives every particle's DoG response side lobes ~45° above and below it
   (an X in the x-z plane; :func:`wedge_lobe_template`), which pass the threshold beside strong
   particles in sparse tomograms. The picks are taken strongest first, and each one's score is
   reduced by the side lobes the stronger kept picks predict at its place (their scores times
   the lobe template, a linear prediction); a pick whose remainder no longer passes the
   threshold is dropped.

Optionally (``PickSettings.ctf_correction``), the tomogram is first corrected for the CTF
(:func:`ctf_correct`: phase flip or Wiener filter at the tomogram's defocus) so that the DoG
sees the particles' low frequencies with one sign; the picks' positions are all that comes out
of it (extraction cuts the raw tomogram).

Positions are (x, y, z) in voxels of the tomogram (voxel i covers [i − 0.5, i + 0.5]).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from tomosift.errors import TomosiftError
from tomosift.simulate.ctf import Optics, ctf

POLARITIES = ("dark", "white")
MAD_TO_SIGMA = 1.4826
CTF_CORRECTIONS = ("none", "phase-flip", "wiener")
#: Label prefix of the CTF parameters in a tomogram's MRC header (see :func:`ctf_label`).
CTF_LABEL = "tomosift ctf"


@dataclass(frozen=True)
class PickSettings:
    """How ``pick`` finds particles.

    Attributes:
        sigma_nm: the smaller Gaussian's σ (the paper's 7 nm).
        k: ratio of the larger Gaussian's σ to the smaller one's (the paper's 1.1).
        min_distance_nm: least distance between two picks; None: σ (two blobs whose centres
            are closer than the filter's own scale cannot be told apart by it).
        edge_nm: picks closer than this to a face are dropped; None: K·σ (the smallest σ when
            multi-scale), the reach of the larger Gaussian, within which the filter sees the
            mirrored border.
        threshold: least robust z-score of the DoG response at a pick (median + threshold ·
            1.4826 · MAD of the response). 5: on pure noise volumes the largest local maximum
            stays below 5 (measured: ``tests/test_pick.py``, benchmark in ``benchmarks/pick.py``).
        max_picks: keep at most this many picks (highest score first); None: all.
        polarity: "dark" (particles darker than the background, as recorded) or "white".
        refine: sub-voxel refinement of each peak by a 3-point parabola per axis.
        sigma_max_nm: None: one scale (the paper's). Else a multi-scale DoG: σ from
            ``sigma_nm`` to ``sigma_max_nm`` in steps of at most √2, each scale's peaks
            thresholded on that scale's own robust z (so the threshold keeps its noise
            meaning), then blob non-maximum suppression, largest scale first: a kept peak of
            blob radius r_i = √3·σ_i removes every later peak j with centres closer than
            r_i + r_j (two particles do not overlap; domains of a large complex lie inside its
            blob). A blob of radius r responds most at σ ≈ r / √3, so particles of radii
            r_min..r_max want σ = r_min / √3 .. r_max / √3. On the simulated tomograms of
            benchmarks/pick.py it finds the small complexes the paper's scale misses (recall
            ≥ 0.97) but keeps CTF-fringe peaks 1.5-3 radii from particles (precision 0.49-0.86),
            so the single paper scale stays the default.
        ctf_correction: "none" (the paper), "phase-flip" or "wiener": :func:`ctf_correct`
            before the DoG; needs the tomogram's optics (defocus) in :func:`pick`.
        wiener_snr: the flat signal-to-noise ratio S of the Wiener filter
            −CTF / (CTF² + 1/S): large S inverts the CTF, small S tends to −S·CTF (a matched
            filter of the CTF).
        wedge_suppression: drop picks that the missing-wedge side lobes of stronger picks
            explain (:func:`suppress_wedge_lobes`, each scale on its own when multi-scale).
        tilt_max_deg: the tilt series' range ±tilt_max_deg (tilt axis y, beam z), which
            shapes the side lobes; 90: no wedge.
    """

    sigma_nm: float = 7.0
    k: float = 1.1
    min_distance_nm: float | None = None
    edge_nm: float | None = None
    threshold: float = 5.0
    max_picks: int | None = None
    polarity: str = "dark"
    refine: bool = True
    sigma_max_nm: float | None = None
    ctf_correction: str = "none"
    wiener_snr: float = 1.0
    wedge_suppression: bool = True
    tilt_max_deg: float = 60.0

    def __post_init__(self) -> None:
        if self.ctf_correction not in CTF_CORRECTIONS:
            raise TomosiftError(f"ctf_correction must be one of {', '.join(CTF_CORRECTIONS)}, "
                                f"got {self.ctf_correction!r}")
        if not self.wiener_snr > 0:
            raise TomosiftError(f"wiener_snr must be > 0, got {self.wiener_snr:g}")
        if not 0 < self.tilt_max_deg <= 90:
            raise TomosiftError(f"tilt_max_deg must lie in (0, 90], got {self.tilt_max_deg:g}")

    def sigmas_nm(self) -> list[float]:
        """The DoG scales, smallest first."""
        if self.sigma_max_nm is None or self.sigma_max_nm <= self.sigma_nm:
            return [self.sigma_nm]
        steps = math.ceil(math.log(self.sigma_max_nm / self.sigma_nm, math.sqrt(2)) - 1e-6)
        ratio = (self.sigma_max_nm / self.sigma_nm) ** (1 / steps)
        return [self.sigma_nm * ratio**i for i in range(steps + 1)]

    def min_distance_voxels(self, voxel_size_nm: float) -> float:
        nm = self.sigma_nm if self.min_distance_nm is None else self.min_distance_nm
        return nm / voxel_size_nm

    def edge_voxels(self, voxel_size_nm: float) -> float:
        nm = self.k * self.sigmas_nm()[0] if self.edge_nm is None else self.edge_nm
        return nm / voxel_size_nm


def ctf_correct(volume: np.ndarray, voxel_size_nm: float, optics: Optics,
                mode: str = "phase-flip", wiener_snr: float = 1.0) -> np.ndarray:
    """A (Z, Y, X) tomogram corrected for the CTF of its tilt series, float32 (Z, Y, X).

    The 3D spectrum is multiplied by ``−sign(CTF(|k|))`` (``phase-flip``) or by the Wiener
    filter ``−CTF(|k|) / (CTF(|k|)² + 1 / wiener_snr)`` (``wiener``), |k| the 3D spatial
    frequency in cycles/nm, CTF the convention of :mod:`tomosift.simulate.ctf` at
    ``optics.defocus_um``. The minus sign keeps the recorded polarity: at low frequency
    (CTF(0) = −A) the factor is positive, so dark particles stay dark (white ones white), and
    every later lobe is given the first lobe's sign.

    Why one 3D filter is the tilt series' correction: each tilt contributes a central slice
    of the 3D spectrum on which the detector's 2D frequency has the slice point's own 3D
    modulus |k|, so a tilt series recorded at one defocus has the transfer CTF(|k|) on every
    measured 3D frequency, and correcting each tilt image before a linear reconstruction
    equals correcting the tomogram in 3D (the missing wedge stays empty). The approximation:
    the defocus gradient across a tilted image (height differences of ± half the field of
    view × sin θ), per-tilt defocus changes and astigmatism are ignored; the MTF and the
    B-factor envelope are left alone. The simulated tomograms (:mod:`tomosift.simulate.cell`)
    use one defocus for every tilt, where the correction is exact.
    """
    if mode not in CTF_CORRECTIONS:
        raise TomosiftError(f"CTF correction must be one of {', '.join(CTF_CORRECTIONS)}, "
                            f"got {mode!r}")
    data = np.asarray(volume, dtype=np.float32)
    if mode == "none" or not optics.ctf_enabled:
        return data.copy()
    if voxel_size_nm <= 0:
        raise TomosiftError(f"voxel size must be > 0, got {voxel_size_nm:g} nm")
    if not optics.defocus_um > 0:
        raise TomosiftError(f"CTF correction needs an underfocus > 0, got defocus "
                            f"{optics.defocus_um:g} µm")
    if not wiener_snr > 0:
        raise TomosiftError(f"wiener_snr must be > 0, got {wiener_snr:g}")
    from scipy import fft

    shape = data.shape
    spectrum = fft.rfftn(data, workers=-1)
    kz = np.fft.fftfreq(shape[0], voxel_size_nm)
    ky2 = np.fft.fftfreq(shape[1], voxel_size_nm)[:, None] ** 2
    kx2 = np.fft.rfftfreq(shape[2], voxel_size_nm)[None, :] ** 2
    for plane, z in enumerate(kz):  # one plane at a time: no full-size temporaries
        transfer = ctf(np.sqrt(z * z + ky2 + kx2), optics)
        if mode == "phase-flip":
            factor = -np.sign(transfer)
        else:
            factor = -transfer / (transfer**2 + 1.0 / wiener_snr)
        spectrum[plane] *= factor.astype(np.float32)
    return fft.irfftn(spectrum, s=shape, workers=-1).astype(np.float32, copy=False)


def ctf_label(optics: Optics) -> str:
    """The MRC header label that records a tomogram's CTF (read back by
    :func:`optics_from_label`): ``tomosift ctf defocus_um=5 voltage_kv=300 cs_mm=2
    amplitude_contrast=0.07``."""
    return (f"{CTF_LABEL} defocus_um={optics.defocus_um:g} voltage_kv={optics.voltage_kv:g} "
            f"cs_mm={optics.cs_mm:g} amplitude_contrast={optics.amplitude_contrast:g}")


def optics_from_label(label: str) -> Optics | None:
    """The optics of a :func:`ctf_label` line; None for any other label."""
    if not label.startswith(CTF_LABEL + " "):
        return None
    try:
        values = dict(item.split("=", 1) for item in label[len(CTF_LABEL):].split())
        return Optics(defocus_um=float(values["defocus_um"]),
                      voltage_kv=float(values["voltage_kv"]), cs_mm=float(values["cs_mm"]),
                      amplitude_contrast=float(values["amplitude_contrast"]))
    except (KeyError, ValueError):
        return None


def optics_from_mrc(path: str | os.PathLike) -> Optics | None:
    """The optics recorded in a tomogram's MRC header labels (:func:`ctf_label`), or None."""
    from tomosift.io import mrc_labels

    for label in mrc_labels(path):
        optics = optics_from_label(label)
        if optics is not None:
            return optics
    return None


def optics_from_star(path: str | os.PathLike) -> Optics | None:
    """The optics of a particles STAR file (a simulated tomogram's truth): the median
    ``rlnDefocusU`` of its particles (Å, > 0 underfocus) with the optics block's
    ``rlnVoltage``, ``rlnSphericalAberration`` and ``rlnAmplitudeContrast``; None without a
    defocus."""
    from tomosift.io import ANGSTROM_PER_NM
    from tomosift.tomograms.relion import read_particles_star

    particles, optics_table, _ = read_particles_star(path)
    if "rlnDefocusU" not in particles.columns:
        return None
    defocus_a = pd.to_numeric(particles["rlnDefocusU"], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(defocus_a).any():
        return None
    values = {"defocus_um": float(np.nanmedian(defocus_a)) / ANGSTROM_PER_NM / 1e3}
    columns = {"rlnVoltage": "voltage_kv", "rlnSphericalAberration": "cs_mm",
               "rlnAmplitudeContrast": "amplitude_contrast"}
    if optics_table is not None:
        for column, field in columns.items():
            if column in optics_table.columns:
                values[field] = float(optics_table[column].iloc[0])
    return Optics(**values)


def difference_of_gaussians(volume: np.ndarray, sigma_voxels: float, k: float,
                            polarity: str) -> np.ndarray:
    """The DoG response ``G_σ * v − G_{kσ} * v`` of a (Z, Y, X) volume, float32 (Z, Y, X),
    oriented so that particles give positive values (a dark volume is negated first).

    Faces are mirrored (``reflect``); the response within about kσ of a face is less reliable.
    """
    if polarity not in POLARITIES:
        raise TomosiftError(f"polarity must be one of {', '.join(POLARITIES)}, got {polarity!r}")
    if sigma_voxels <= 0 or k <= 1:
        raise TomosiftError(f"DoG needs sigma > 0 and k > 1, got sigma {sigma_voxels:g} voxels, "
                            f"k {k:g}")
    data = np.asarray(volume, dtype=np.float32)
    if polarity == "dark":
        data = -data
    small = ndimage.gaussian_filter(data, sigma_voxels, mode="reflect", truncate=4.0)
    large = ndimage.gaussian_filter(data, k * sigma_voxels, mode="reflect", truncate=4.0)
    small -= large
    return small


def robust_z(response: np.ndarray, edge_voxels: float = 0.0) -> np.ndarray:
    """(Z, Y, X) float32 ``(r − median) / (1.4826 · MAD)``, the statistics taken over the
    voxels at least ``edge_voxels`` from every face (all voxels if none are)."""
    inner = response[_interior(response.shape, edge_voxels)]
    if inner.size == 0:
        inner = response
    sample = inner.ravel()
    if sample.size > 2_000_000:  # a regular subsample: the same statistics, faster
        sample = sample[:: sample.size // 1_000_000]
    median = float(np.median(sample))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(sample - median)))
    if not spread > 0:
        spread = float(np.std(sample)) or 1.0
    return ((response - np.float32(median)) / np.float32(spread)).astype(np.float32, copy=False)


def _interior(shape: Sequence[int], edge_voxels: float) -> tuple[slice, ...]:
    margin = max(0, math.ceil(edge_voxels))
    return tuple(slice(margin, max(margin, n - margin)) for n in shape)


def find_peaks(response: np.ndarray, min_distance_voxels: float, edge_voxels: float,
               threshold: float, refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a (Z, Y, X) response above ``threshold``.

    Peaks closer than ``edge_voxels`` to a face (voxel centres 0 and n − 1) are dropped; of two
    peaks closer than ``min_distance_voxels`` the higher is kept.

    Returns:
        positions (P, 3) x, y, z in voxels (float64; sub-voxel when ``refine``) and scores
        (P,) (the response at the peak voxel), sorted by score, highest first.
    """
    response = np.asarray(response, dtype=np.float32)
    # The inscribed cube of the exclusion ball: every true peak survives, the rest is greedy.
    half = max(1, math.floor(max(min_distance_voxels, 1.0) / math.sqrt(3)))
    local_max = ndimage.maximum_filter(response, size=2 * half + 1, mode="nearest")
    candidate = (response >= local_max) & (response > threshold)
    keep = np.zeros_like(candidate)
    inner = _interior(response.shape, edge_voxels)
    keep[inner] = candidate[inner]
    zyx = np.argwhere(keep)
    scores = response[tuple(zyx.T)].astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    zyx, scores = zyx[order], scores[order]
    chosen = _suppress(zyx.astype(np.float64), min_distance_voxels)
    zyx, scores = zyx[chosen], scores[chosen]
    positions = zyx.astype(np.float64)
    if refine and len(zyx):
        positions += _parabola_offsets(response, zyx)
    return positions[:, ::-1].copy(), scores


def _suppress(points: np.ndarray, min_distance: float | np.ndarray,
              pairwise: bool = False) -> np.ndarray:
    """Indices of points (sorted best first) kept by greedy non-maximum suppression: a kept
    point removes the later ones closer than its distance (one for all, or (P,) per point),
    or with ``pairwise`` closer than the sum of both points' distances (overlapping blobs)."""
    radii = np.broadcast_to(np.asarray(min_distance, dtype=np.float64), (len(points),))
    if len(points) == 0 or radii.max() <= 0:
        return np.arange(len(points))
    tree = cKDTree(points)
    reach = radii.max() if pairwise else 0.0
    removed = np.zeros(len(points), dtype=bool)
    kept = []
    for i in range(len(points)):
        if removed[i]:
            continue
        kept.append(i)
        near = np.asarray(tree.query_ball_point(points[i], radii[i] + reach), np.int64)
        distance = np.linalg.norm(points[near] - points[i], axis=1)
        too_close = (distance < radii[i] + radii[near] if pairwise
                     else distance <= radii[i] - 1e-9)
        removed[near[too_close]] = True
    return np.asarray(kept, dtype=np.int64)


def _parabola_offsets(response: np.ndarray, zyx: np.ndarray) -> np.ndarray:
    """(P, 3) z, y, x sub-voxel offsets (within ±0.5) of the vertex of a 3-point parabola
    through each peak and its two neighbours along each axis."""
    offsets = np.zeros(zyx.shape, dtype=np.float64)
    for axis in range(3):
        n = response.shape[axis]
        inside = (zyx[:, axis] > 0) & (zyx[:, axis] < n - 1)
        low, high = zyx[inside].copy(), zyx[inside].copy()
        low[:, axis] -= 1
        high[:, axis] += 1
        centre = response[tuple(zyx[inside].T)].astype(np.float64)
        minus = response[tuple(low.T)].astype(np.float64)
        plus = response[tuple(high.T)].astype(np.float64)
        curvature = minus - 2 * centre + plus
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(curvature < 0, 0.5 * (minus - plus) / curvature, 0.0)
        offsets[inside, axis] = np.clip(shift, -0.5, 0.5)
    return offsets


#: Gaussian blobs (standard deviation in units of the DoG's σ) whose wedge-filtered DoG
#: responses make up :func:`wedge_lobe_template`: from a point to a blob the size of σ.
LOBE_BLOBS = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class LobeTemplate:
    """The side lobes of one particle's DoG response in a tomogram with a missing wedge.

    Attributes:
        lobes: (n, n, n) float32 [z, y, x], the response at offset (x, y, z) from the particle
            in voxel ``[n // 2 + z, n // 2 + y, n // 2 + x]`` as a fraction of the response at
            the particle's centre; zero inside the central lobe and outside the wedge's double
            cone (see :func:`wedge_lobe_template`).
        ratio: the largest side-lobe peak (off-centre local maximum in the cone) over the
            centre peak.
        peak_offset_xyz: the offset (voxels) of that largest side-lobe peak.
    """

    lobes: np.ndarray
    ratio: float
    peak_offset_xyz: tuple[int, int, int]

    def at(self, offsets_xyz: np.ndarray) -> np.ndarray:
        """(P,) the lobe fraction at offsets (P, 3) x, y, z (trilinear; 0 beyond the box)."""
        offsets = np.asarray(offsets_xyz, dtype=np.float64).reshape(-1, 3)
        centre = self.lobes.shape[0] // 2
        coords = offsets[:, ::-1].T + centre
        return ndimage.map_coordinates(self.lobes, coords, order=1, mode="constant", cval=0.0)


def wedge_lobe_template(sigma_voxels: float, k: float, tilt_max_deg: float,
                        voxel_size_nm: float, optics: Optics | None = None,
                        correction: str = "none", wiener_snr: float = 1.0) -> LobeTemplate:
    """The missing wedge's side lobes of the DoG response to a particle, computed once.

    In Fourier space, on a cube of edge 2n cropped to the central n = 2·⌈6·kσ⌉ voxels (the
    periodic images of the response stay outside the crop): a Gaussian blob (standard
    deviation :data:`LOBE_BLOBS` × σ), times the tilt series' observed double wedge
    ``|kz| ≤ tan(tilt_max)·|kx|`` (tilt axis y, beam z:
    :func:`tomosift.discovery.wedge.observed`), times the CTF and its correction when
    ``optics`` are known (the tomogram the DoG sees), times the DoG's transfer
    ``exp(−2π²σ²f²) − exp(−2π²k²σ²f²)``. Back in real space each blob's response is divided
    by its centre value, and the template is the largest over the blobs (particles from a
    point to the DoG's own size), where positive.

    Kept are the side lobes only: offsets within n/2 of the centre, inside the double cone
    ``|z| ≥ tan(90° − tilt_max)·√(x² + y²)`` around the beam axis (the tilt series' rays run
    within tilt_max of z, and the wedge's streaks with them), and outside the particle's own
    central lobe (the connected region around the centre where the same blob's response
    without a wedge is positive: there non-maximum suppression decides). At σ = 7 nm, 0.92 nm
    voxels, ±60° the X-shaped lobes peak at about 0.08 of the centre, some 22 voxels to the
    side and 22 above or below; the largest value, about 0.2, is the wedge's elongation of
    the particle along z just beyond its central lobe. Beyond n/2 the streaks go on, at
    0.02–0.04 of the centre, and are not modelled.
    """
    if not 0 < tilt_max_deg <= 90:
        raise TomosiftError(f"tilt_max_deg must lie in (0, 90], got {tilt_max_deg:g}")
    if sigma_voxels <= 0 or k <= 1:
        raise TomosiftError(f"DoG needs sigma > 0 and k > 1, got sigma {sigma_voxels:g} voxels, "
                            f"k {k:g}")
    use_ctf = optics is not None and optics.ctf_enabled and correction in CTF_CORRECTIONS
    return _lobe_template(float(sigma_voxels), float(k), float(tilt_max_deg),
                          float(voxel_size_nm), optics if use_ctf else None,
                          correction if use_ctf else "none", float(wiener_snr))


@functools.lru_cache(maxsize=8)
def _lobe_template(sigma_voxels: float, k: float, tilt_max_deg: float, voxel_size_nm: float,
                   optics: Optics | None, correction: str, wiener_snr: float) -> LobeTemplate:
    n = 2 * math.ceil(6 * k * sigma_voxels)
    centre = n // 2
    with_wedge = _blob_responses(sigma_voxels, k, n, tilt_max_deg, voxel_size_nm, optics,
                                 correction, wiener_snr)
    without = _blob_responses(sigma_voxels, k, n, 90.0, voxel_size_nm, optics, correction,
                              wiener_snr)
    z, y, x = np.indices((n, n, n)) - centre
    # The double cone around the beam axis, within the ball the box holds ...
    side = np.abs(z) >= math.tan(math.radians(90.0 - tilt_max_deg)) * np.hypot(x, y) - 1e-9
    side &= x * x + y * y + z * z <= centre * centre
    # ... outside the particle's own central lobe (where its wedge-free response is > 0).
    regions, _ = ndimage.label(without > 0)
    side &= regions != regions[centre, centre, centre]
    lobes = np.where(side, np.clip(with_wedge, 0.0, None), 0.0).astype(np.float32)
    lobes.setflags(write=False)
    peak = np.unravel_index(int(np.argmax(lobes)), lobes.shape)
    offset = tuple(int(peak[axis]) - centre for axis in (2, 1, 0))
    return LobeTemplate(lobes=lobes, ratio=float(lobes[peak]), peak_offset_xyz=offset)


def _blob_responses(sigma_voxels: float, k: float, n: int, tilt_max_deg: float,
                    voxel_size_nm: float, optics: Optics | None, correction: str,
                    wiener_snr: float) -> np.ndarray:
    """(n, n, n) the largest over :data:`LOBE_BLOBS` of the DoG responses to a Gaussian blob
    at voxel n // 2 (each over its centre value), through the wedge and the CTF chain;
    computed on a box of 2n (the periodic images stay outside the crop) unless there is no
    wedge (the response is then compact)."""
    from scipy import fft

    from tomosift.discovery.wedge import observed

    m = n if tilt_max_deg >= 90 else 2 * n
    full, half = np.fft.fftfreq(m), np.fft.rfftfreq(m)  # cycles per voxel
    fz, fy, fx = np.meshgrid(full, full, half, indexing="ij", sparse=True)
    f2 = fx * fx + fy * fy + fz * fz
    transfer = (np.exp(-2 * np.pi**2 * sigma_voxels**2 * f2)
                - np.exp(-2 * np.pi**2 * (k * sigma_voxels) ** 2 * f2))
    if tilt_max_deg < 90:
        frequencies = np.stack(np.broadcast_arrays(fx, fy, fz), axis=-1)
        transfer *= observed(frequencies, -tilt_max_deg, tilt_max_deg)
        del frequencies
    if optics is not None:
        recorded = ctf(np.sqrt(f2) / voxel_size_nm, optics)
        if correction == "phase-flip":
            recorded *= -np.sign(recorded)
        elif correction == "wiener":
            recorded *= -recorded / (recorded**2 + 1.0 / wiener_snr)
        transfer *= recorded
    centre = n // 2
    crop = (slice(m // 2 - centre, m // 2 - centre + n),) * 3
    envelope = np.full((n, n, n), -np.inf)
    for blob in LOBE_BLOBS:
        blob_voxels = blob * sigma_voxels
        spectrum = (transfer * np.exp(-2 * np.pi**2 * blob_voxels**2 * f2)).astype(np.complex64)
        response = np.fft.fftshift(fft.irfftn(spectrum, s=(m, m, m), workers=-1))[crop]
        envelope = np.maximum(envelope, response / response[centre, centre, centre])
    return envelope


def suppress_wedge_lobes(positions_xyz: np.ndarray, scores: np.ndarray,
                         template: LobeTemplate, threshold: float) -> np.ndarray:
    """Indices of the picks (sorted best first) that the side lobes of stronger picks do not
    explain.

    The DoG is linear, so at a pick the response is its own particle's, plus the side lobes
    of the particles around it, plus noise. Strongest first, each pick is given the lobes its
    stronger *kept* neighbours predict there, ``Σ_j score_j · lobes(x_i − x_j)``
    (:class:`LobeTemplate`; scores are robust z-scores, whose zero is the median, so the
    prediction scales with them), and is kept when its score less that prediction still passes
    ``threshold`` (the same noise test as every pick's); a dropped pick predicts no lobes.
    """
    points = np.asarray(positions_xyz, dtype=np.float64).reshape(-1, 3)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(points) < 2:
        return np.arange(len(points))
    reach = math.sqrt(3) * (template.lobes.shape[0] // 2)
    neighbours = cKDTree(points).query_ball_point(points, reach)
    kept = np.zeros(len(points), dtype=bool)
    for i in range(len(points)):
        stronger = np.asarray([j for j in neighbours[i] if j < i and kept[j]], dtype=np.int64)
        predicted = 0.0
        if len(stronger):
            predicted = float(values[stronger] @ template.at(points[i] - points[stronger]))
        kept[i] = values[i] - predicted >= threshold
    return np.flatnonzero(kept)


def pick(volume: np.ndarray, voxel_size_nm: float,
         settings: PickSettings = PickSettings(),
         optics: Optics | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Particles of a (Z, Y, X) tomogram with voxel edge ``voxel_size_nm``.

    ``optics``: the tomogram's CTF (its ``defocus_um``), needed when
    ``settings.ctf_correction`` is not "none"; the DoG then runs on :func:`ctf_correct`'s
    output. When given, the wedge's side-lobe template (``settings.wedge_suppression``)
    includes the CTF (and its correction) too.

    Returns:
        positions (P, 3) x, y, z in voxels and scores (P,) (robust z-score of the DoG
        response), highest score first; empty arrays when nothing passes the threshold.
    """
    if voxel_size_nm <= 0:
        raise TomosiftError(f"voxel size must be > 0, got {voxel_size_nm:g} nm")
    if settings.ctf_correction != "none":
        if optics is None:
            raise TomosiftError(f"CTF correction '{settings.ctf_correction}' needs the "
                                "tomogram's defocus (--defocus-um, or a truth STAR / MRC header "
                                "that records it)")
        volume = ctf_correct(volume, voxel_size_nm, optics, settings.ctf_correction,
                             settings.wiener_snr)
    edge = settings.edge_voxels(voxel_size_nm)
    min_distance = settings.min_distance_voxels(voxel_size_nm)
    sigmas = settings.sigmas_nm()
    if len(sigmas) == 1:
        response = robust_z(difference_of_gaussians(volume, sigmas[0] / voxel_size_nm,
                                                     settings.k, settings.polarity), edge)
        positions, scores = find_peaks(response, min_distance, edge, settings.threshold,
                                       settings.refine)
        del response
        positions, scores = _without_lobes(positions, scores, sigmas[0], voxel_size_nm,
                                           settings, optics)
    else:
        positions, scores = _multiscale_peaks(volume, voxel_size_nm, sigmas, settings, edge,
                                              optics)
    if settings.max_picks is not None:
        positions, scores = positions[: settings.max_picks], scores[: settings.max_picks]
    return positions, scores


def _without_lobes(positions: np.ndarray, scores: np.ndarray, sigma_nm: float,
                   voxel_size_nm: float, settings: PickSettings,
                   optics: Optics | None) -> tuple[np.ndarray, np.ndarray]:
    """The picks of one DoG scale less those the wedge's side lobes explain (when
    ``settings.wedge_suppression``; :func:`suppress_wedge_lobes`)."""
    if not settings.wedge_suppression or len(scores) < 2:
        return positions, scores
    template = wedge_lobe_template(sigma_nm / voxel_size_nm, settings.k, settings.tilt_max_deg,
                                   voxel_size_nm, optics, settings.ctf_correction,
                                   settings.wiener_snr)
    kept = suppress_wedge_lobes(positions, scores, template, settings.threshold)
    return positions[kept], scores[kept]


def _multiscale_peaks(volume: np.ndarray, voxel_size_nm: float, sigmas_nm: Sequence[float],
                      settings: PickSettings, edge_voxels: float,
                      optics: Optics | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of the DoG at every scale (each its own robust z ≥ threshold, less the wedge's
    side lobes of that scale when ``settings.wedge_suppression``), then coarse-first
    blob non-maximum suppression: sorted by scale (largest first), then z, a kept peak removes
    every later one whose blob overlaps its own (centres closer than r_i + r_j, r = √3·σ).

    Why the largest scale first, not the strongest response: in a CTF-filtered tomogram the
    domains of a large complex respond as strongly at small σ as a small complex does (raw,
    scale-normalised DoG or z-score alike), so only "this blob is part of a larger one" tells
    them apart (benchmarks/pick.py)."""
    positions, scores, radii = [], [], []
    base = settings.min_distance_voxels(voxel_size_nm)
    for sigma_nm in sigmas_nm:
        response = robust_z(difference_of_gaussians(volume, sigma_nm / voxel_size_nm,
                                                    settings.k, settings.polarity), edge_voxels)
        found, z = find_peaks(response, base * sigma_nm / sigmas_nm[0], edge_voxels,
                              settings.threshold, settings.refine)
        del response
        found, z = _without_lobes(found, z, sigma_nm, voxel_size_nm, settings, optics)
        positions.append(found)
        scores.append(z)
        radii.append(np.full(len(z), math.sqrt(3) * sigma_nm / voxel_size_nm))
    # Later scales are larger: reverse the list so that the largest come first.
    points = np.concatenate(positions[::-1])
    z_all, r_all = np.concatenate(scores[::-1]), np.concatenate(radii[::-1])
    order = np.lexsort((-z_all, -r_all))
    points, z_all, r_all = points[order], z_all[order], r_all[order]
    if len(points) == 0:
        return points, z_all
    kept = _suppress(points, r_all, pairwise=True)
    points, z_all = points[kept], z_all[kept]
    best = np.argsort(-z_all, kind="stable")
    return points[best], z_all[best]


def match_picks(picked_xyz: np.ndarray, truth_xyz: np.ndarray,
                tolerance_voxels: float = 2.0) -> np.ndarray:
    """(P,) index of the truth particle matched to each pick, or −1.

    One-to-one: among the pairs within ``tolerance_voxels`` (Euclidean), the assignment that
    matches the most picks, and of those the one with the least total distance.
    """
    picked = np.asarray(picked_xyz, dtype=np.float64).reshape(-1, 3)
    truth = np.asarray(truth_xyz, dtype=np.float64).reshape(-1, 3)
    matched = np.full(len(picked), -1, dtype=np.int64)
    if len(picked) == 0 or len(truth) == 0:
        return matched
    pairs = cKDTree(picked).sparse_distance_matrix(cKDTree(truth), tolerance_voxels,
                                                   output_type="ndarray")
    if len(pairs) == 0:
        return matched
    rows, row_index = np.unique(pairs["i"], return_inverse=True)
    cols, col_index = np.unique(pairs["j"], return_inverse=True)
    # A missing pair costs more than any set of real pairs: the most matches first.
    forbidden = 1.0 + len(pairs) * (tolerance_voxels + 1.0)
    cost = np.full((len(rows), len(cols)), forbidden)
    cost[row_index, col_index] = pairs["v"]
    assigned_rows, assigned_cols = linear_sum_assignment(cost)
    real = cost[assigned_rows, assigned_cols] < forbidden
    matched[rows[assigned_rows[real]]] = cols[assigned_cols[real]]
    return matched


def pick_scores(picked_xyz: np.ndarray, truth_xyz: np.ndarray, truth_labels: np.ndarray,
                class_names: Sequence[str], tolerance_voxels: float = 2.0) -> pd.DataFrame:
    """Recall per class and overall precision of picks against known particles.

    Returns:
        one row per class and a last row "all": ``class``, ``truth`` (particles), ``found``
        (matched within ``tolerance_voxels``), ``recall``; on the "all" row also ``picks``,
        ``false_picks`` (unmatched picks) and ``precision`` (NaN on class rows).
    """
    labels = np.asarray(truth_labels, dtype=np.int64).reshape(-1)
    matched = match_picks(picked_xyz, truth_xyz, tolerance_voxels)
    found_truth = np.zeros(len(labels), dtype=bool)
    found_truth[matched[matched >= 0]] = True
    rows = []
    for c, name in enumerate(class_names):
        members = labels == c
        count, found = int(members.sum()), int(found_truth[members].sum())
        rows.append({"class": str(name), "truth": count, "found": found,
                     "recall": found / count if count else math.nan})
    n_picks = len(matched)
    true_picks = int((matched >= 0).sum())
    rows.append({"class": "all", "truth": len(labels), "found": int(found_truth.sum()),
                 "recall": found_truth.mean() if len(labels) else math.nan,
                 "picks": n_picks, "false_picks": n_picks - true_picks,
                 "precision": true_picks / n_picks if n_picks else math.nan})
    table = pd.DataFrame(rows, columns=["class", "truth", "found", "recall", "picks",
                                        "false_picks", "precision"])
    return table


#: Columns of :func:`scores_by_mass`.
MASS_COLUMNS = ("class", "mass_kda", "n_true", "n_found", "n_picks", "recall", "precision")


def scores_by_mass(picked_xyz: np.ndarray, truth_xyz: np.ndarray, truth_labels: np.ndarray,
                   class_names: Sequence[str], masses_kda: Mapping[str, float],
                   tolerance_voxels: float = 2.0) -> pd.DataFrame:
    """Recall and precision per class against the class's mass, lightest first.

    Each pick is given to one class: the class of the true particle it is matched to
    (:func:`match_picks`, one-to-one within ``tolerance_voxels``), or, when unmatched, the
    class of the true particle nearest to it (whatever the distance). Then per class c:
    ``n_true`` particles of c, ``n_found`` of them matched, ``n_picks`` picks given to c,
    ``recall = n_found / n_true`` and ``precision = n_found / n_picks`` (NaN when 0 / 0): a
    false pick counts against the class it lies nearest to (a fringe or a domain of that
    particle, or a spot of noise in its neighbourhood). Summed over the classes, ``n_picks``
    is every pick and ``n_found`` every matched pick, so the overall precision is
    ``Σ n_found / Σ n_picks``. Counts of several tomograms add up
    (:func:`pool_mass_tables`).

    ``masses_kda``: class name -> mass (NaN for a class it lacks).
    """
    picked = np.asarray(picked_xyz, dtype=np.float64).reshape(-1, 3)
    truth = np.asarray(truth_xyz, dtype=np.float64).reshape(-1, 3)
    labels = np.asarray(truth_labels, dtype=np.int64).reshape(-1)
    matched = match_picks(picked, truth, tolerance_voxels)
    owner = np.full(len(picked), -1, dtype=np.int64)
    if len(picked) and len(truth):
        _, nearest = cKDTree(truth).query(picked)
        owner = np.where(matched >= 0, labels[np.maximum(matched, 0)], labels[nearest])
    found = np.zeros(len(labels), dtype=bool)
    found[matched[matched >= 0]] = True
    rows = []
    for c, name in enumerate(class_names):
        members = labels == c
        rows.append({"class": str(name), "mass_kda": float(masses_kda.get(str(name), math.nan)),
                     "n_true": int(members.sum()), "n_found": int(found[members].sum()),
                     "n_picks": int((owner == c).sum())})
    return _mass_rates(pd.DataFrame(rows, columns=list(MASS_COLUMNS[:5])))


def pool_mass_tables(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One :func:`scores_by_mass` table from several (tomograms): counts summed per class,
    rates recomputed from the sums."""
    joined = pd.concat(list(tables), ignore_index=True)
    counts = joined.groupby("class", sort=False, as_index=False).agg(
        mass_kda=("mass_kda", "first"), n_true=("n_true", "sum"), n_found=("n_found", "sum"),
        n_picks=("n_picks", "sum"))
    return _mass_rates(counts)


def _mass_rates(counts: pd.DataFrame) -> pd.DataFrame:
    table = counts.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        table["recall"] = np.where(table["n_true"] > 0,
                                   table["n_found"] / table["n_true"].clip(lower=1), math.nan)
        table["precision"] = np.where(table["n_picks"] > 0,
                                      table["n_found"] / table["n_picks"].clip(lower=1), math.nan)
    table = table.sort_values(["mass_kda", "class"], kind="stable", na_position="last")
    return table.reset_index(drop=True)[list(MASS_COLUMNS)]


def mass_reaching(table: pd.DataFrame, recall: float = 0.9, precision: float = 0.9) -> float:
    """The least mass (kDa) above which every class (with particles) of a
    :func:`scores_by_mass` table has at least this recall and precision; NaN when even the
    heaviest class misses."""
    rows = table[(table["n_true"] > 0) & np.isfinite(table["mass_kda"])].sort_values("mass_kda")
    passed = ((rows["recall"] >= recall) & (rows["precision"] >= precision)).to_numpy()
    masses = rows["mass_kda"].to_numpy()
    least = math.nan
    for index in range(len(rows) - 1, -1, -1):
        if not passed[index]:
            break
        least = float(masses[index])
    return least


def write_picks(path: str | os.PathLike, positions_xyz: np.ndarray, scores: np.ndarray,
                tomogram_shape_zyx: Sequence[int], voxel_size_nm: float, tomo_name: str,
                box_voxels: int = 40) -> None:
    """Write picks as a RELION 5 particles STAR file (atomically), the score as
    ``rlnAutopickFigureOfMerit``; the optics block names the box extraction will cut."""
    from tomosift.tomograms.relion import particle_table, write_particles_star

    size_xyz = tuple(int(n) for n in tomogram_shape_zyx)[::-1]
    table = particle_table(tomo_name, positions_xyz, size_xyz, voxel_size_nm,
                           extra={"rlnAutopickFigureOfMerit": np.asarray(scores, np.float64)})
    write_particles_star(path, table, voxel_size_nm, box_voxels)


def resolve_correction(requested: str, optics: Optics | None) -> str:
    """The CTF correction to run: ``auto`` is ``wiener`` when the optics (defocus) are known
    and ``none`` otherwise; any other mode as asked."""
    if requested == "auto":
        return "wiener" if optics is not None else "none"
    if requested not in CTF_CORRECTIONS:
        raise TomosiftError(f"ctf_correction must be auto or one of {', '.join(CTF_CORRECTIONS)}"
                            f", got {requested!r}")
    return requested


def tomogram_optics(tomogram_path: str | os.PathLike, defocus_um: float | None = None,
                    truth_path: str | os.PathLike | None = None,
                    base: Optics | None = None) -> tuple[Optics | None, str]:
    """The optics of a tomogram for CTF correction, and where they came from.

    In this order: ``defocus_um`` given (with ``base``'s voltage, Cs and amplitude contrast;
    None: 300 kV, 2 mm, 0.07),
    the truth STAR's ``rlnDefocusU`` (:func:`optics_from_star`), the MRC header's
    ``tomosift ctf`` label (:func:`optics_from_mrc`); (None, "none") when none says.
    """
    from dataclasses import replace

    if defocus_um is not None:
        if not defocus_um > 0:
            raise TomosiftError(f"--defocus-um must be > 0 (underfocus), got {defocus_um:g}")
        return replace(base or Optics(), defocus_um=float(defocus_um)), "given"
    if truth_path is not None:
        optics = optics_from_star(truth_path)
        if optics is not None:
            return optics, str(truth_path)
    optics = optics_from_mrc(tomogram_path)
    if optics is not None:
        return optics, f"{tomogram_path} header"
    return None, "none"


def pick_tomogram(tomogram_path: str | os.PathLike, out_path: str | os.PathLike,
                  settings: PickSettings = PickSettings(), tomo_name: str | None = None,
                  box_voxels: int = 40, optics: Optics | None = None) -> int:
    """Pick one tomogram MRC into a particles STAR file; returns the number of picks.

    ``tomo_name``: rlnTomoName (default: the file's stem). ``optics``: the tomogram's CTF
    for ``settings.ctf_correction`` (None: the MRC header's ``tomosift ctf`` label). Raises
    TomosiftError naming the file when nothing passes the threshold or no defocus is known
    for a CTF correction (and writes nothing).
    """
    from pathlib import Path

    from tomosift.io import read_mrc

    if settings.ctf_correction != "none" and optics is None:
        optics = optics_from_mrc(tomogram_path)
        if optics is None:
            raise TomosiftError(f"{tomogram_path}: no defocus for the CTF correction "
                                f"'{settings.ctf_correction}' (give --defocus-um, a truth STAR "
                                "with rlnDefocusU, or --ctf-correction none)")
    volume, voxel_size_nm = read_mrc(tomogram_path)
    positions, scores = pick(volume, voxel_size_nm, settings, optics)
    if len(positions) == 0:
        raise TomosiftError(f"{tomogram_path}: no particles found (no DoG peak above the "
                            f"threshold, robust z-score {settings.threshold:g}; try a lower "
                            "threshold or the other polarity)")
    name = tomo_name if tomo_name is not None else Path(tomogram_path).stem
    write_picks(out_path, positions, scores, volume.shape, voxel_size_nm, name, box_voxels)
    return len(positions)


def read_truth(truth_path: str | os.PathLike, tomogram_size_xyz: Sequence[int] | None = None,
               voxel_size_nm: float | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """True particles from a STAR file: (N, 3) x, y, z voxels, (N,) 0-based labels and class
    names (:func:`tomosift.tomograms.relion.class_labels`; one class "particle" without
    rlnClassNumber)."""
    from tomosift.tomograms.relion import class_labels, coordinates_of, read_particles_star

    particles, _, class_names = read_particles_star(truth_path)
    xyz = coordinates_of(particles, truth_path, tomogram_size_xyz, voxel_size_nm)
    if "rlnClassNumber" not in particles.columns:
        return xyz, np.zeros(len(particles), dtype=np.int64), ["particle"]
    labels, names = class_labels(particles["rlnClassNumber"].to_numpy(), class_names,
                                 truth_path)
    return xyz, labels, names


def score_pick_files(picks_path: str | os.PathLike, truth_path: str | os.PathLike,
                     tolerance_voxels: float = 2.0) -> pd.DataFrame:
    """``pick_scores`` of a picks STAR file against a truth STAR file (class names from the
    truth's tomosift_classes block)."""
    from tomosift.tomograms.relion import coordinates_of, read_particles_star

    picks, _, _ = read_particles_star(picks_path)
    picked = coordinates_of(picks, picks_path)
    truth, labels, names = read_truth(truth_path)
    return pick_scores(picked, truth, labels, names, tolerance_voxels)


def score_mass_files(picks_path: str | os.PathLike, truth_path: str | os.PathLike,
                     masses_kda: Mapping[str, float],
                     tolerance_voxels: float = 2.0) -> pd.DataFrame:
    """``scores_by_mass`` of a picks STAR file against a truth STAR file (class names from the
    truth's tomosift_classes block, masses by class name)."""
    from tomosift.tomograms.relion import coordinates_of, read_particles_star

    picks, _, _ = read_particles_star(picks_path)
    picked = coordinates_of(picks, picks_path)
    truth, labels, names = read_truth(truth_path)
    return scores_by_mass(picked, truth, labels, names, masses_kda, tolerance_voxels)
