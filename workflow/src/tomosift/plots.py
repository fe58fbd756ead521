"""Figures for the report (matplotlib, written atomically as PNG)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from tomosift.io import atomic_path


def save_figure(figure: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a figure as PNG atomically and close it.

    PNG metadata carries no time stamp or software version, so the same figure gives the
    same bytes.
    """
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png", metadata={"Software": None})
    plt.close(figure)


def central_slices(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three central slices (x-y, x-z, y-z) of a [z, y, x] volume, each shown row = first
    named axis's partner: x-y is [y, x], x-z is [z, x], y-z is [z, y]."""
    c = volume.shape[0] // 2
    return volume[c, :, :], volume[:, c, :], volume[:, :, c]


def density_montage(
    names: Sequence[str], volumes: Sequence[np.ndarray], voxel_size_nm: float,
    path: str | os.PathLike,
) -> None:
    """One row per map: its central x-y, x-z and y-z slices."""
    rows = len(volumes)
    figure, axes = plt.subplots(rows, 3, figsize=(6.0, 2.0 * rows + 0.4), squeeze=False)
    extent_nm = volumes[0].shape[0] * voxel_size_nm
    for row, (name, volume) in enumerate(zip(names, volumes, strict=True)):
        for col, (image, label) in enumerate(zip(central_slices(volume), ("x-y", "x-z", "y-z"),
                                                  strict=True)):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", origin="lower", extent=(0, extent_nm, 0, extent_nm))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{label} (centre)", fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    figure.suptitle(f"Density maps, central slices ({extent_nm:.1f} nm boxes)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def snr_tilt_grid(
    name: str,
    slices: Mapping[tuple[float, float], np.ndarray],
    snrs: Sequence[float],
    tilts: Sequence[float],
    clean: np.ndarray,
    path: str | os.PathLike,
    level_label: str = "SNR",
) -> None:
    """Paper Fig. 3: x-z central slices of one particle across the noise x tilt-range grid.

    Args:
        slices: (noise level, tilt) -> x-z central slice [z, x].
        snrs: the noise levels (SNRs, or doses with ``level_label`` saying so), one row each.
        clean: x-z central slice of the map itself, shown first.
    """
    rows, cols = len(snrs), len(tilts)
    figure, axes = plt.subplots(rows, cols + 1, figsize=(max(4.5, 1.9 * (cols + 1)),
                                                         1.9 * rows + 0.8), squeeze=False)
    for row, snr in enumerate(snrs):
        ax = axes[row, 0]
        if row == 0:
            ax.imshow(clean, cmap="gray", origin="lower")
            ax.set_title("map", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{level_label} {snr:g}", fontsize=9)
        if row > 0:  # no frame beside the map's column, but keep the row's label
            for spine in ax.spines.values():
                spine.set_visible(False)
        for col, tilt in enumerate(tilts):
            ax = axes[row, col + 1]
            ax.imshow(slices[(snr, tilt)], cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"±{tilt:g}°", fontsize=9)
    figure.suptitle(f"{name}: x-z central slices\n(z = beam, tilt axis y)", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)


def ctf_power_spectrum(
    frequency_per_nm: np.ndarray,
    power: np.ndarray,
    predicted_zeros_per_nm: Sequence[float],
    ctf_curve: tuple[np.ndarray, np.ndarray],
    title: str,
    path: str | os.PathLike,
) -> None:
    """Radially averaged power spectrum of a clean projection, predicted CTF zeros marked."""
    figure, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.semilogy(frequency_per_nm, power / power[1:].max(), "o-", ms=3, label="projection power")
    k, values = ctf_curve
    ax.semilogy(k, np.maximum(values**2, 1e-6), "-", color="0.6", lw=1, label="CTF² × MTF²")
    for i, zero in enumerate(predicted_zeros_per_nm):
        ax.axvline(zero, color="crimson", ls="--", lw=1,
                   label="predicted CTF zeros" if i == 0 else None)
    ax.set_xlabel("spatial frequency (1/nm)")
    ax.set_ylabel("relative power")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(1e-6, 2)
    ax.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    save_figure(figure, path)


def fourier_coverage(
    coverages: Mapping[float, np.ndarray], path: str | os.PathLike
) -> None:
    """Central kx-kz sections of the sampled Fourier space, one panel per tilt range.

    Args:
        coverages: tilt_max_deg -> (n, n) [kz, kx] gridding weight, centred (fftshifted).
    """
    tilts = list(coverages)
    figure, axes = plt.subplots(1, len(tilts), figsize=(max(4.5, 3.0 * len(tilts)), 3.4),
                                squeeze=False)
    for ax, tilt in zip(axes[0], tilts, strict=True):
        weight = coverages[tilt]
        n = weight.shape[0]
        ax.imshow(np.log1p(weight), cmap="magma", origin="lower",
                  extent=(-n / 2, n / 2, -n / 2, n / 2))
        ax.set_title(f"tilt range ±{tilt:g}°", fontsize=9)
        ax.set_xlabel("kx (Fourier index)")
        ax.set_ylabel("kz (Fourier index, beam)")
    figure.suptitle("Sampled Fourier space (bright) and missing wedge (dark), ky = 0",
                    fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)


def accuracy_heatmap(
    rows: Sequence[str], columns: Sequence[str], ours: np.ndarray, paper: np.ndarray,
    path: str | os.PathLike,
) -> None:
    """Two heat maps, ours and the paper's, rows SNR, columns tilt range x method."""
    figure, axes = plt.subplots(
        1, 2, figsize=(max(7.0, 1.1 * len(columns) * 2), 0.6 * len(rows) + 2.8),
        squeeze=False, sharey=True, layout="constrained",
    )
    for ax, values, title in ((axes[0, 0], ours, "tomosift"), (axes[0, 1], paper, "paper")):
        image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        ax.tick_params(axis="y", labelleft=ax is axes[0, 0])
        ax.set_title(f"{title}: test accuracy", fontsize=10)
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.6 else "black")
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    save_figure(figure, path)


def confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], title: str, path: str | os.PathLike
) -> None:
    """Row-normalised confusion matrix (true class in rows)."""
    counts = np.asarray(matrix, dtype=float)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.32 * len(class_names)
    figure, ax = plt.subplots(figsize=(size, size))
    ax.imshow(fractions, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)


def pick_scores_by_mass(tables: Mapping[str, object], path: str | os.PathLike,
                        title: str = "Picking by mass", goal_kda: float = 150.0,
                        goal: float = 0.9) -> None:
    """Recall and precision per class against its mass (log x), one line per picking
    setting (name -> :func:`tomosift.tomograms.pick.scores_by_mass` table); dashed: the
    goal (``goal`` at ``goal_kda`` and above)."""
    figure, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), sharey=True, squeeze=False)
    for ax, column in zip(axes[0], ("recall", "precision"), strict=True):
        for name, table in tables.items():
            rows = table[np.isfinite(table["mass_kda"])]
            ax.plot(rows["mass_kda"], rows[column], marker="o", markersize=4, label=name)
        ax.set_xscale("log")
        ticks = [t for t in (20, 50, 100, 200, 500, 1000, 2000, 5000)
                 if any(((tb["mass_kda"] / t).between(0.5, 2)).any() for tb in tables.values())]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.axvline(goal_kda, color="grey", linestyle="--", linewidth=1)
        ax.axhline(goal, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("mass (kDa)")
        ax.set_title(column, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("fraction")
    axes[0, 1].legend(fontsize=7, loc="lower right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
