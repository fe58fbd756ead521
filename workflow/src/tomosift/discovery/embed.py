"""Two-dimensional t-SNE maps of feature vectors (paper Fig. 2)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from tomosift.errors import TomosiftError

HIGHLIGHT_COLOUR = "black"


def tsne_2d(
    features: np.ndarray, seed: int, perplexity: float = 30.0, max_points: int = 5000,
    pca_components: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed feature vectors in 2D with t-SNE.

    Past ``max_points`` vectors a seeded random subset of ``max_points`` is embedded (t-SNE
    costs O(N log N) per iteration and maps of more points are unreadable anyway). Features
    wider than ``pca_components`` are first reduced by a seeded PCA to that many components,
    as is usual before t-SNE. t-SNE itself starts from a PCA of its input (``init="pca"``)
    with learning rate ``auto`` and ``random_state=seed``. ``perplexity`` is capped at
    (M - 1) / 3 for small M, which scikit-learn requires to be below M.

    Args:
        features: (N, F), N >= 4.

    Returns:
        (xy, indices): embedding (M, 2) float64, and the rows of ``features`` it holds,
        (M,) int64, increasing.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise TomosiftError(f"t-SNE needs features of shape (N, F), got {x.shape}")
    n = x.shape[0]
    if n < 4:
        raise TomosiftError(f"t-SNE needs at least 4 feature vectors, got {n}")
    if max_points < 4:
        raise TomosiftError(f"t-SNE max_points must be >= 4, got {max_points}")
    if not np.all(np.isfinite(x)):
        raise TomosiftError("t-SNE: the features contain NaN or infinite values")
    if n > max_points:
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.choice(n, size=max_points, replace=False)).astype(np.int64)
    else:
        indices = np.arange(n, dtype=np.int64)
    x = x[indices]
    m = x.shape[0]
    if x.shape[1] > pca_components and m > pca_components:
        x = PCA(n_components=pca_components, svd_solver="randomized",
                random_state=seed).fit_transform(x)
    if x.shape[1] < 2:
        x = np.hstack([x, np.zeros((m, 2 - x.shape[1]))])
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (m - 1) / 3.0), init="pca",
                learning_rate="auto", random_state=seed)
    return tsne.fit_transform(x), indices


def plot_embedding(
    path: str | os.PathLike, xy: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
    highlight_class: str | Sequence[str] | None = None, title: str = "",
) -> None:
    """Scatter a 2D embedding coloured by true class (PNG).

    Args:
        xy: (M, 2) embedding.
        labels: (M,) class indices into ``class_names``.
        highlight_class: a class or several (e.g. those left out of training) drawn last,
            on top, as larger black-edged stars and marked ``(held out)`` in the legend.
    """
    from tomosift.plots import plt, save_figure

    xy = np.asarray(xy, dtype=np.float64)
    labels = np.asarray(labels).ravel()
    names = list(class_names)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] != labels.size:
        raise TomosiftError(f"embedding of shape {xy.shape} does not match {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise TomosiftError(f"labels exceed the {len(names)} class names")
    wanted = ([highlight_class] if isinstance(highlight_class, str)
              else list(highlight_class or []))
    for name in wanted:
        if name not in names:
            raise TomosiftError(f"highlight class {name!r} is not among the classes "
                                f"({', '.join(names)})")
    highlighted = [names.index(name) for name in wanted]
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    figure, ax = plt.subplots(figsize=(7.0, 5.2))
    size = 6.0 if labels.size > 2000 else 12.0
    for c, name in enumerate(names):
        if c in highlighted:
            continue
        chosen = labels == c
        if chosen.any():
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=size, color=cmap(c % cmap.N),
                       alpha=0.7, linewidths=0, label=name)
    for c in highlighted:
        chosen = labels == c
        ax.scatter(xy[chosen, 0], xy[chosen, 1], s=4 * size + 10, marker="*",
                   color=cmap(c % cmap.N), edgecolors=HIGHLIGHT_COLOUR, linewidths=0.5,
                   label=f"{names[c]} (held out)", zorder=3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5),
              frameon=False)
    figure.tight_layout()
    save_figure(figure, path)
