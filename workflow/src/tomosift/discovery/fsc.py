"""Fourier shell correlation (FSC) between two maps, and the resolution it implies.

Shells are one Fourier voxel wide: shell ``s`` holds the frequencies whose radius ``|k|``
(in Fourier index units, i.e. cycles per box) lies in ``[s - 0.5, s + 0.5)``, for
``s = 0 .. n // 2``; the corners of the cube beyond ``n // 2 + 0.5`` are left out. Shell ``s``
is the spatial frequency ``s / (n · voxel_size_nm)`` (1/nm), a resolution of
``n · voxel_size_nm / s`` nm.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tomosift.errors import TomosiftError
from tomosift.io import write_text

THRESHOLDS = (0.5, 0.143)


def _check_pair(a: np.ndarray, b: np.ndarray) -> int:
    if a.ndim != 3 or len(set(a.shape)) != 1:
        raise TomosiftError(f"FSC needs cubic 3D maps, got shape {a.shape}")
    if a.shape != b.shape:
        raise TomosiftError(f"FSC needs maps of the same shape, got {a.shape} and {b.shape}")
    return a.shape[0]


def _rfft_shells(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shell index and Hermitian weight of every coefficient of an ``rfftn`` of an n³ box.

    Returns:
        (shell, weight), both of shape (n, n, n // 2 + 1). ``weight`` is 2 for coefficients
        whose conjugate partner is not stored (the half-space ``rfftn`` drops) and 1 for the
        ``kx = 0`` plane and, for even n, the ``kx = n / 2`` plane; sums over the half-space
        with these weights equal sums over the full space for real input.
    """
    k = np.fft.fftfreq(n) * n
    kx = np.fft.rfftfreq(n) * n
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    shell = np.floor(radius + 0.5).astype(np.int64)
    weight = np.full(kx.shape, 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    return shell, np.broadcast_to(weight, shell.shape)


def fsc_curve(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None,
    observed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two maps.

    Args:
        a, b: real maps of shape (n, n, n), indexed [z, y, x].
        mask: optional real-space mask of shape (n, n, n), multiplied into both maps before
            the Fourier transform (e.g. :func:`soft_sphere_mask`).
        observed: optional (n, n, n // 2 + 1) 0/1 in ``rfftn`` layout: only these Fourier
            coefficients count (what an average observed; a shell with none gets FSC 0).

    Returns:
        (shells, fsc): shell indices 0 .. n // 2, shape (S,) int, and per shell
        ``Re Σ A B* / sqrt(Σ |A|² Σ |B|²)``, shape (S,) float64. A shell where either map has
        no power gets FSC 0.
    """
    n = _check_pair(a, b)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if mask is not None:
        if mask.shape != a.shape:
            raise TomosiftError(f"FSC mask has shape {mask.shape}, the maps {a.shape}")
        a = a * mask
        b = b * mask
    fa = np.fft.rfftn(a)
    fb = np.fft.rfftn(b)
    shell, weight = _rfft_shells(n)
    n_shells = n // 2 + 1
    inside = shell < n_shells
    index = shell[inside]
    w = weight[inside]
    if observed is not None:
        if observed.shape != fa.shape:
            raise TomosiftError(f"FSC Fourier mask has shape {observed.shape}, the maps' "
                                f"rfftn {fa.shape}")
        w = w * (np.asarray(observed)[inside] > 0)
    cross = np.bincount(index, weights=w * (fa[inside] * np.conj(fb[inside])).real,
                        minlength=n_shells)
    power_a = np.bincount(index, weights=w * np.abs(fa[inside]) ** 2, minlength=n_shells)
    power_b = np.bincount(index, weights=w * np.abs(fb[inside]) ** 2, minlength=n_shells)
    denominator = np.sqrt(power_a * power_b)
    fsc = np.divide(cross, denominator, out=np.zeros(n_shells), where=denominator > 0)
    return np.arange(n_shells), fsc


def soft_sphere_mask(
    n: int, radius_voxels: float | None = None, edge_voxels: float = 3.0
) -> np.ndarray:
    """A sphere with a raised-cosine edge, centred on voxel n // 2.

    Args:
        n: box edge in voxels.
        radius_voxels: radius where the edge starts (mask 1 inside it); default
            ``n / 2 - edge_voxels - 1``, so that the edge ends one voxel inside the box.
        edge_voxels: width of the edge over which the mask falls from 1 to 0 as
            ``(1 + cos(π (r - radius) / edge)) / 2``; 0 gives a hard sphere.

    Returns:
        float64 array of shape (n, n, n) with values in [0, 1].
    """
    if edge_voxels < 0:
        raise TomosiftError(f"mask edge must be >= 0 voxels, got {edge_voxels}")
    if radius_voxels is None:
        radius_voxels = n / 2 - edge_voxels - 1
    if radius_voxels <= 0:
        raise TomosiftError(
            f"mask radius {radius_voxels} voxels is not positive for a {n}³ box "
            f"with a {edge_voxels}-voxel edge"
        )
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    mask = (r <= radius_voxels).astype(np.float64)
    if edge_voxels > 0:
        edge = (r > radius_voxels) & (r < radius_voxels + edge_voxels)
        mask[edge] = 0.5 * (1.0 + np.cos(np.pi * (r[edge] - radius_voxels) / edge_voxels))
    return mask


def resolution_at(
    shells: np.ndarray, fsc: np.ndarray, threshold: float, box_voxels: int,
    voxel_size_nm: float,
) -> float:
    """Resolution (nm) where the FSC first falls below ``threshold``.

    The search starts at shell 1 (shell 0, the mean, says nothing about resolution). At the
    first shell ``s`` with ``fsc[s] < threshold`` the crossing is interpolated linearly between
    shells ``s - 1`` and ``s``; the resolution is ``box_voxels · voxel_size_nm / s*``.

    Returns:
        The resolution in nm; ``inf`` when the FSC is below the threshold already at shell 1
        (the maps do not agree at any measurable frequency); the Nyquist resolution
        ``2 · voxel_size_nm`` when the curve never falls below the threshold.
    """
    shells = np.asarray(shells, dtype=np.float64)
    fsc = np.asarray(fsc, dtype=np.float64)
    below = np.flatnonzero((shells >= 1) & (fsc < threshold))
    if below.size == 0:
        return 2.0 * voxel_size_nm
    i = int(below[0])
    if shells[i] <= 1 or i == 0:
        return math.inf
    s0, s1, f0, f1 = shells[i - 1], shells[i], fsc[i - 1], fsc[i]
    crossing = s0 + (f0 - threshold) / (f0 - f1) * (s1 - s0)
    return box_voxels * voxel_size_nm / crossing


@dataclass(frozen=True)
class FscResult:
    """An FSC curve and its resolutions.

    Attributes:
        shells: shell indices, shape (S,).
        fsc: FSC per shell, shape (S,).
        resolution_05_nm: resolution at FSC 0.5 (nm).
        resolution_0143_nm: resolution at FSC 0.143 (nm).
        mask: name of the mask applied before the FFT (``none`` when unmasked).
        box_voxels: box edge (voxels).
        voxel_size_nm: voxel edge (nm).
    """

    shells: np.ndarray
    fsc: np.ndarray
    resolution_05_nm: float
    resolution_0143_nm: float
    mask: str
    box_voxels: int
    voxel_size_nm: float

    def summary_line(self) -> str:
        """``FSC 0.5: <x> nm; FSC 0.143: <y> nm``."""
        return fsc_summary_line(self.resolution_05_nm, self.resolution_0143_nm)


def compute_fsc(
    a: np.ndarray, b: np.ndarray, voxel_size_nm: float, mask: np.ndarray | None = None,
    mask_name: str | None = None,
) -> FscResult:
    """FSC of two (n, n, n) maps and the resolutions at 0.5 and 0.143.

    ``mask_name`` labels the mask in reports; it defaults to ``none`` without a mask and
    ``custom`` with one.
    """
    if not voxel_size_nm > 0:
        raise TomosiftError(f"voxel size must be positive, got {voxel_size_nm} nm")
    shells, fsc = fsc_curve(a, b, mask)
    n = a.shape[0]
    return FscResult(
        shells=shells, fsc=fsc,
        resolution_05_nm=resolution_at(shells, fsc, 0.5, n, voxel_size_nm),
        resolution_0143_nm=resolution_at(shells, fsc, 0.143, n, voxel_size_nm),
        mask=mask_name if mask_name is not None else ("none" if mask is None else "custom"),
        box_voxels=n, voxel_size_nm=float(voxel_size_nm),
    )


def fsc_summary_line(res05: float, res0143: float) -> str:
    """``FSC 0.5: <x> nm; FSC 0.143: <y> nm`` with two decimals (``inf`` when unresolved)."""
    return f"FSC 0.5: {res05:.2f} nm; FSC 0.143: {res0143:.2f} nm"


def _frequencies(shells: np.ndarray, box_voxels: int, voxel_size_nm: float) -> np.ndarray:
    return np.asarray(shells, dtype=np.float64) / (box_voxels * voxel_size_nm)


def write_fsc_table(
    path: str | os.PathLike, shells: np.ndarray, fsc: np.ndarray, box_voxels: int,
    voxel_size_nm: float,
) -> None:
    """Write the curve as TSV, atomically.

    Columns: ``shell``, ``frequency_per_nm`` (shell / box size), ``resolution_nm`` (its
    inverse; ``inf`` at shell 0), ``fsc``.
    """
    freq = _frequencies(shells, box_voxels, voxel_size_nm)
    lines = ["shell\tfrequency_per_nm\tresolution_nm\tfsc"]
    for s, f, value in zip(shells, freq, fsc, strict=True):
        resolution = math.inf if f == 0 else 1.0 / f
        lines.append(f"{int(s)}\t{f:.6g}\t{resolution:.6g}\t{value:.6f}")
    write_text(path, "\n".join(lines) + "\n")


def plot_fsc(
    path: str | os.PathLike, curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    box_voxels: int, voxel_size_nm: float, title: str,
) -> None:
    """Plot FSC curves against spatial frequency (1/nm) with the 0.5 and 0.143 lines (PNG).

    Args:
        curves: label -> (shells (S,), fsc (S,)); each legend entry gives its 0.143
            resolution.
    """
    from tomosift.plots import plt, save_figure

    figure, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, (shells, fsc) in curves.items():
        res = resolution_at(shells, fsc, 0.143, box_voxels, voxel_size_nm)
        ax.plot(_frequencies(shells, box_voxels, voxel_size_nm), fsc, "-", lw=1.4,
                label=f"{label} (0.143: {res:.2f} nm)")
    for threshold, style in zip(THRESHOLDS, ("--", ":"), strict=True):
        ax.axhline(threshold, color="0.4", ls=style, lw=1)
        ax.text(0.0, threshold, f" {threshold}", va="bottom", ha="left", fontsize=7,
                color="0.3", transform=ax.get_yaxis_transform())
    ax.axhline(0.0, color="0.8", lw=0.8)
    ax.set_xlim(0.0, 1.0 / (2.0 * voxel_size_nm))
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlabel("spatial frequency (1/nm)")
    ax.set_ylabel("FSC")
    ax.set_title(title, fontsize=10)
    if curves:
        ax.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    save_figure(figure, path)
