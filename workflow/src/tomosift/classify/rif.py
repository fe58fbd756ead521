"""Rotation-invariant features (RIF) and the RIF-SVM baseline (Xu et al. 2009, 2011).

The baseline of Xu et al. 2017, Table 1: each subtomogram becomes a vector of spherical-
harmonic power spectra of its Fourier amplitude, and an RBF support-vector machine classifies
the vectors.

How a feature vector is made, per subtomogram (volume indexed [z, y, x], origin n // 2):

1. optionally normalise the volume to zero mean and unit variance (scale invariance);
2. take the amplitude ``|F(k)|`` of its orthonormal 3D DFT; the amplitude is invariant to
   (circular) translation and even, ``|F(-k)| = |F(k)|``, and it rotates with the volume;
3. sample it on concentric spheres ``|k| = r``, r = 1 .. shells (Fourier-index units, the
   origin at index n // 2 of the fftshifted transform) at quadrature points, by trilinear
   interpolation on the periodic grid;
4. expand each shell in spherical harmonics, ``a_lm(r) = sum_i w_i f_r(p_i) conj(Y_lm(p_i))``,
   with Gauss-Legendre nodes in cos(theta) times uniform phi;
5. keep the rotation-invariant power per shell and degree, ``P(r, l) = sum_m |a_lm(r)|^2``.
   The amplitude is even, so odd degrees vanish: only l = 0, 2, ..., L are kept;
6. optionally compress (``sqrt`` or ``log1p``; raw P by default, see :class:`RifSettings`)
   and flatten shell-major.

Why it is fast: steps 3 and 4 are one fixed linear map from the Fourier amplitudes to the
coefficients. For each shell the interpolation weights, quadrature weights and the basis
(``scipy.special.sph_harm_y``, computed once) are folded into a dense (voxels, coefficients)
matrix over the voxels the shell's interpolation touches (the half-space of ``rfftn``; a
corner in the other half reads its mirror, which has the same amplitude). Per batch this
leaves an ``rfftn``, an ``abs``, one gather and one small matrix product per shell. The result
is the same as interpolating at the points and summing, to rounding.

Quadrature: the per-shell degree of exactness defaults to ``max(2L, L + ceil(pi r))``, because
the amplitude sampled on a shell of radius r from a grid of unit spacing carries angular detail
up to degree about ``pi r``: the minimal rule (exact for degree 2L, products of two degree-L
functions) would alias that detail into the kept coefficients and spoil rotation invariance on
the outer shells.

Accuracy: trilinear interpolation on the unpadded Fourier grid limits how rotation invariant
the small, high-degree powers are. For smooth test objects (Gaussian blobs in a 40³ box,
rotated by 30/50/70° zyz) the flattened raw features differ by 0.4%, P(r, 0) by 0.4% and
P(r, 2) by ~4%, but P(r, 8..10), which carry < 1% of the power, by 10-35%. Zero-padding the
transform twofold cuts these errors 3-4x at ~10x the cost, and did not improve RIF-SVM accuracy
on noisy simulated subtomograms, so it is not done.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.sparse as sparse
from scipy.special import sph_harm_y
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from tomosift.errors import TomosiftError
from tomosift.progress import progress_bar

COMPRESSIONS = ("none", "sqrt", "log1p")
DEFAULT_C_GRID = (1.0, 10.0, 100.0, 1000.0)
DEFAULT_GAMMA_GRID = ("scale", 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class RifSettings:
    """How rotation-invariant features are computed.

    Attributes:
        max_degree: largest spherical-harmonic degree L; degrees 0, 2, ..., L are kept.
        shells: number of Fourier shells, radii 1 .. shells in Fourier-index units (cycles per
            box); None = n // 2 (up to Nyquist).
        quadrature_degree: polynomial degree each shell's quadrature integrates exactly
            (>= 2L); None = ``max(2L, L + ceil(pi r))`` per shell r (see the module docstring).
        compression: applied to the power P: ``none`` (default), ``sqrt`` or ``log1p``. On
            six simulated 13-class datasets (SNR 1000 to 0.03, tilt ±60 to ±40, 390 to 1300
            training and as many test subtomograms) the three gave RIF-SVM test accuracies
            within 1% of each other, raw power the best on average (0.881 vs 0.878 sqrt,
            0.873 log1p); raw power is also the most rotation invariant (interpolation errors
            are largest, relatively, where the power is small, and log1p amplifies those).
        normalize: subtract each volume's mean and divide by its standard deviation first, so
            that features do not depend on the intensity scale. Keep it on for a fair baseline:
            the simulator sets each particle's noise from its own signal variance, so the raw
            scale alone identifies the class (an SVM on log(std) alone: 0.60 accuracy on 13
            classes at SNR 0.03, ±40°), which real tomograms, with one noise level for all
            particles, do not offer. Turning it off raised RIF-SVM accuracy from 0.72 to 0.89
            on that dataset.
        chunk_size: volumes transformed at once (bounds memory: ~1 MB per 40³ volume).
    """

    max_degree: int = 10
    shells: int | None = None
    quadrature_degree: int | None = None
    compression: str = "none"
    normalize: bool = True
    chunk_size: int = 64

    def __post_init__(self) -> None:
        if self.max_degree < 0:
            raise TomosiftError(f"max_degree must be >= 0, got {self.max_degree}")
        if self.shells is not None and self.shells < 1:
            raise TomosiftError(f"shells must be >= 1, got {self.shells}")
        if self.quadrature_degree is not None and self.quadrature_degree < 2 * self.max_degree:
            raise TomosiftError(
                f"quadrature_degree must be >= 2 * max_degree = {2 * self.max_degree}, "
                f"got {self.quadrature_degree}"
            )
        if self.compression not in COMPRESSIONS:
            raise TomosiftError(
                f"compression must be one of {COMPRESSIONS}, got {self.compression!r}"
            )
        if self.chunk_size < 1:
            raise TomosiftError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def degrees(self) -> np.ndarray:
        """The kept degrees 0, 2, ..., L."""
        return np.arange(0, self.max_degree + 1, 2)

    def n_shells(self, box_voxels: int) -> int:
        """Number of shells for an n-voxel box."""
        return box_voxels // 2 if self.shells is None else self.shells

    def n_features(self, box_voxels: int) -> int:
        """Feature length: shells * (L // 2 + 1)."""
        return self.n_shells(box_voxels) * len(self.degrees)


def shell_quadrature(
    radius: float, max_degree: int, exact_degree: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss-Legendre (in cos theta) x uniform-phi quadrature on the unit sphere.

    Args:
        radius: shell radius in Fourier-index units (sets the default exactness).
        max_degree: L.
        exact_degree: degree integrated exactly; None = ``max(2L, L + ceil(pi * radius))``.

    Returns:
        theta (M,) polar angles in rad, phi (M,) azimuths in rad, weights (M,) summing to 4 pi.
        The point set is symmetric under p -> -p (even number of azimuths).
    """
    if exact_degree is None:
        exact_degree = max(2 * max_degree, max_degree + math.ceil(math.pi * radius))
    n_theta = exact_degree // 2 + 1  # Gauss-Legendre with N nodes: exact to degree 2N - 1
    n_phi = exact_degree + 1  # uniform phi: exact for e^{i k phi}, |k| < n_phi
    n_phi += n_phi % 2
    nodes, gl_weights = np.polynomial.legendre.leggauss(n_theta)
    theta = np.repeat(np.arccos(nodes), n_phi)
    phi = np.tile(2.0 * np.pi * np.arange(n_phi) / n_phi, n_theta)
    weights = np.repeat(gl_weights, n_phi) * (2.0 * np.pi / n_phi)
    return theta, phi, weights


def _real_basis(theta: np.ndarray, phi: np.ndarray, degrees: Sequence[int]) -> np.ndarray:
    """conj(Y_lm) as real columns whose squares sum to P(l) = sum_m |a_lm|^2 for real data.

    For a real function a_{l,-m} = (-1)^m conj(a_lm), so sum_m |a_lm|^2 = |a_l0|^2 +
    2 sum_{m>0} |a_lm|^2. Columns per degree l: Re conj(Y_l0), then sqrt(2) Re and sqrt(2) Im of
    conj(Y_lm) for m = 1 .. l (2l + 1 columns). Returns (M, sum_l (2l + 1)) float64.
    """
    columns = []
    for degree in degrees:
        columns.append(sph_harm_y(degree, 0, theta, phi).real)
        for order in range(1, degree + 1):
            value = np.sqrt(2.0) * np.conj(sph_harm_y(degree, order, theta, phi))
            columns.extend((value.real, value.imag))
    return np.stack(columns, axis=1)


def amplitude_interpolation_matrix(
    points_zyx: np.ndarray, n: int
) -> tuple[np.ndarray, sparse.csr_matrix]:
    """Trilinear interpolation of an rfftn amplitude at frequency points, as a dense matrix.

    Args:
        points_zyx: (M, 3) frequencies (z, y, x) in Fourier-index units, origin 0.
        n: box size.

    Returns:
        voxels: (V,) flat indices into an (n, n, n // 2 + 1) rfftn array;
        weights: (M, V) sparse float64 interpolation weights (rows sum to 1).
    """
    base = np.floor(points_zyx)
    frac = points_zyx - base
    base = base.astype(np.int64)
    flat_parts, weight_parts = [], []
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                corner = base + np.array([dz, dy, dx])
                weight = (
                    (frac[:, 0] if dz else 1 - frac[:, 0])
                    * (frac[:, 1] if dy else 1 - frac[:, 1])
                    * (frac[:, 2] if dx else 1 - frac[:, 2])
                )
                corner = corner % n
                # |F(k)| = |F(-k)|: a corner outside the rfftn half-space reads its mirror.
                mirror = corner[:, 2] > n // 2
                corner[mirror] = (-corner[mirror]) % n
                flat_parts.append((corner[:, 0] * n + corner[:, 1]) * (n // 2 + 1) + corner[:, 2])
                weight_parts.append(weight)
    flat = np.concatenate(flat_parts)
    voxels, column = np.unique(flat, return_inverse=True)
    rows = np.tile(np.arange(len(points_zyx)), 8)
    weights = sparse.coo_matrix(
        (np.concatenate(weight_parts), (rows, column)), shape=(len(points_zyx), len(voxels))
    ).tocsr()  # duplicate (point, voxel) entries are summed
    return voxels, weights


@dataclass(frozen=True)
class _ShellOperator:
    """Precomputed linear maps from rfftn amplitudes to spherical-harmonic coefficients."""

    voxels: np.ndarray  # (sum V_r,) int64 flat rfftn indices, shells concatenated
    bounds: tuple[int, ...]  # shell r reads voxels[bounds[r]:bounds[r + 1]]
    matrices: tuple[np.ndarray, ...]  # per shell (V_r, C) float32
    group_starts: np.ndarray  # first column of each degree, for np.add.reduceat


@functools.lru_cache(maxsize=8)
def _shell_operator(
    n: int, shells: int, max_degree: int, exact_degree: int | None, degrees: tuple[int, ...]
) -> _ShellOperator:
    voxel_parts, matrices, bounds = [], [], [0]
    for radius in range(1, shells + 1):
        theta, phi, weights = shell_quadrature(radius, max_degree, exact_degree)
        direction = np.stack(
            [np.cos(theta), np.sin(theta) * np.sin(phi), np.sin(theta) * np.cos(phi)], axis=1
        )  # (z, y, x)
        voxels, interp = amplitude_interpolation_matrix(radius * direction, n)
        basis = _real_basis(theta, phi, degrees) * weights[:, None]
        matrices.append(np.ascontiguousarray(interp.T @ basis, dtype=np.float32))  # (V_r, C)
        voxel_parts.append(voxels)
        bounds.append(bounds[-1] + len(voxels))
    sizes = [2 * d + 1 for d in degrees]
    group_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    return _ShellOperator(
        np.concatenate(voxel_parts), tuple(bounds), tuple(matrices), group_starts
    )


def _check_volumes(volumes: np.ndarray, settings: RifSettings) -> int:
    if volumes.ndim != 4 or volumes.shape[1:] != (volumes.shape[1],) * 3:
        raise TomosiftError(f"expected (B, n, n, n) or (n, n, n) volumes, got {volumes.shape}")
    n = volumes.shape[1]
    if n < 4:
        raise TomosiftError(f"volumes must be at least 4 voxels wide, got {n}")
    if settings.n_shells(n) > n // 2:
        raise TomosiftError(f"shells must be <= n // 2 = {n // 2} for {n}-voxel boxes, "
                            f"got {settings.shells}")
    return n


def shell_power(
    volumes: np.ndarray, settings: RifSettings, degrees: Sequence[int] | None = None
) -> np.ndarray:
    """Rotation-invariant power P(r, l) = sum_m |a_lm(r)|^2 of the Fourier amplitude.

    Args:
        volumes: (B, n, n, n) real volumes indexed [z, y, x].
        settings: RIF settings (compression is not applied here).
        degrees: degrees to compute; None = settings.degrees (0, 2, ..., L). Odd degrees may be
            asked for (they are zero to rounding: the amplitude is even).

    Returns:
        (B, shells, len(degrees)) float64 power, shells r = 1 .. shells.
    """
    volumes = np.asarray(volumes)
    n = _check_volumes(volumes, settings)
    degrees = tuple(int(d) for d in (settings.degrees if degrees is None else degrees))
    if any(d < 0 or d > settings.max_degree for d in degrees):
        raise TomosiftError(f"degrees must lie in 0 .. max_degree = {settings.max_degree}")
    shells = settings.n_shells(n)
    op = _shell_operator(n, shells, settings.max_degree, settings.quadrature_degree, degrees)
    out = np.empty((len(volumes), shells, len(degrees)))
    for start in range(0, len(volumes), settings.chunk_size):
        chunk = np.asarray(volumes[start : start + settings.chunk_size], dtype=np.float32)
        if settings.normalize:
            chunk = chunk - chunk.mean(axis=(1, 2, 3), keepdims=True)
            scale = chunk.std(axis=(1, 2, 3), keepdims=True)
            chunk /= np.maximum(scale, np.finfo(np.float32).tiny)
        amplitude = np.abs(scipy.fft.rfftn(chunk, axes=(1, 2, 3), norm="ortho"))
        gathered = amplitude.reshape(len(chunk), -1)[:, op.voxels]
        for shell, matrix in enumerate(op.matrices):
            coefficients = gathered[:, op.bounds[shell] : op.bounds[shell + 1]] @ matrix
            squares = np.square(coefficients, dtype=np.float64)
            out[start : start + len(chunk), shell] = np.add.reduceat(
                squares, op.group_starts, axis=1
            )
    if not np.all(np.isfinite(out)):
        raise TomosiftError("volumes contain NaN or infinite values")
    return out


def rif_features(volumes: np.ndarray, settings: RifSettings) -> np.ndarray:
    """Rotation- and translation-invariant feature vectors of subtomograms.

    Args:
        volumes: (B, n, n, n) or (n, n, n) real volumes indexed [z, y, x], any float dtype.
        settings: RIF settings.

    Returns:
        (B, F) float32 features, or (F,) for one volume; F = shells * (L // 2 + 1), shell-major
        (feature ``s * (L // 2 + 1) + j`` is shell radius s + 1, degree 2 j), compressed as
        ``settings.compression`` says.
    """
    volumes = np.asarray(volumes)
    single = volumes.ndim == 3
    if single:
        volumes = volumes[None]
    power = shell_power(volumes, settings)
    if settings.compression == "log1p":
        power = np.log1p(power)
    elif settings.compression == "sqrt":
        power = np.sqrt(power)
    features = power.reshape(len(power), -1).astype(np.float32)
    return features[0] if single else features


def features_from_dataset(
    h5_file, indices: Sequence[int], settings: RifSettings, batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """RIF features of selected subtomograms of an open dataset file, streamed in batches.

    Args:
        h5_file: open h5py File (or group) with a ``volumes`` dataset (N, n, n, n).
        indices: strictly increasing particle indices in [0, N).
        settings: RIF settings.
        batch_size: volumes read at a time (memory: batch_size * n³ * 4 bytes).
        progress: show a tqdm progress bar.

    Returns:
        (len(indices), F) float32 features, in the order of ``indices``.
    """
    name = getattr(h5_file, "filename", "dataset")
    if "volumes" not in h5_file:
        raise TomosiftError(f"{name}: no 'volumes' dataset")
    volumes = h5_file["volumes"]
    if volumes.ndim != 4:
        raise TomosiftError(f"{name}: 'volumes' must be (N, n, n, n), got {volumes.shape}")
    if batch_size < 1:
        raise TomosiftError(f"batch_size must be >= 1, got {batch_size}")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and (indices[0] < 0 or indices[-1] >= len(volumes)):
        raise TomosiftError(f"{name}: indices must lie in [0, {len(volumes)})")
    if np.any(np.diff(indices) <= 0):
        raise TomosiftError(f"{name}: indices must be strictly increasing")
    n = volumes.shape[1]
    out = np.empty((len(indices), settings.n_features(n)), dtype=np.float32)
    bar = progress_bar(total=len(indices), desc="RIF features", unit="subtomo",
                       enabled=progress)
    with bar:
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            # Read contiguous runs as slices (much faster than point selections in HDF5).
            breaks = np.flatnonzero(np.diff(batch) != 1) + 1
            runs = np.split(batch, breaks)
            block = np.concatenate([volumes[run[0] : run[-1] + 1] for run in runs])
            out[start : start + len(batch)] = rif_features(block, settings)
            bar.update(len(batch))
    return out


@dataclass
class SvmArrays:
    """A fitted RBF support-vector machine on standardised features, as plain arrays.

    The one-vs-one SVC of scikit-learn (libsvm): ``support_vectors`` (S, F) grouped by class
    (``n_support`` per class), ``dual_coef`` (C - 1, S), ``intercept`` (C (C - 1) / 2,), the
    kernel's ``gamma``; features are first standardised with ``mean`` and ``scale``.
    :meth:`decision_function` reproduces scikit-learn's (one-vs-rest shape, as
    ``SVC(decision_function_shape="ovr")``) to rounding.
    """

    mean: np.ndarray
    scale: np.ndarray
    support_vectors: np.ndarray
    dual_coef: np.ndarray
    intercept: np.ndarray
    n_support: np.ndarray
    gamma: float
    classes: np.ndarray

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> SvmArrays:
        scaler, svc = pipeline.named_steps["scale"], pipeline.named_steps["svc"]
        return cls(scaler.mean_.copy(), scaler.scale_.copy(), svc.support_vectors_.copy(),
                   svc.dual_coef_.copy(), svc.intercept_.copy(), svc.n_support_.copy(),
                   float(svc._gamma), svc.classes_.copy())

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name)) for name in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SvmArrays:
        values = {name: np.asarray(arrays[name]) for name in cls.__dataclass_fields__}
        values["gamma"] = float(values["gamma"])
        return cls(**values)

    def decision_function(self, features: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """(N, C) one-vs-rest decision values for C > 2 classes, (N,) for two classes."""
        features = np.asarray(features, dtype=np.float64)
        return np.concatenate([self._decision(features[start : start + batch_size])
                               for start in range(0, max(len(features), 1), batch_size)])

    def _decision(self, features: np.ndarray) -> np.ndarray:
        x = (features - self.mean) / self.scale
        vectors = self.support_vectors
        squared = ((x**2).sum(axis=1)[:, None] + (vectors**2).sum(axis=1)[None, :]
                   - 2.0 * x @ vectors.T)
        kernel = np.exp(-self.gamma * np.maximum(squared, 0.0))  # (N, S)
        n_classes = len(self.classes)
        if n_classes == 2:
            return kernel @ self.dual_coef[0] + self.intercept[0]
        bounds = np.concatenate([[0], np.cumsum(self.n_support)])
        # per class c: its support vectors' contributions to every pair, (N, C - 1)
        blocks = [kernel[:, bounds[c] : bounds[c + 1]] @ self.dual_coef[:, bounds[c] :
                                                                          bounds[c + 1]].T
                  for c in range(n_classes)]
        votes = np.zeros((len(x), n_classes))
        confidence = np.zeros((len(x), n_classes))
        pair = 0
        for i in range(n_classes):
            for j in range(i + 1, n_classes):
                decision = blocks[i][:, j - 1] + blocks[j][:, i] + self.intercept[pair]
                votes[:, i] += decision > 0
                votes[:, j] += decision <= 0
                confidence[:, i] += decision
                confidence[:, j] -= decision
                pair += 1
        # scikit-learn's tie-breaking: votes plus confidences squashed into (-1/3, 1/3)
        return votes + confidence / (3 * (np.abs(confidence) + 1))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Labels by one-vs-one votes, ties to the first class (as libsvm and scikit-learn)."""
        decision = self.decision_function(features)
        if decision.ndim == 1:
            return self.classes[(decision > 0).astype(int)]
        return self.classes[np.rint(decision).argmax(axis=1)]


class RifSvm:
    """RBF support-vector machine on RIF features (StandardScaler + SVC), C and gamma by
    stratified cross-validation on the training data.

    Attributes (after ``fit``):
        pipeline: the fitted scikit-learn Pipeline, refit on all training data;
        arrays: the same as :class:`SvmArrays` (what predictions use and model files store);
        c: chosen C; gamma: chosen gamma (float or 'scale'); cv_score: mean CV accuracy of
        the chosen pair; classes: the labels seen in training.
    """

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.c: float | None = None
        self.gamma: float | str | None = None
        self.cv_score: float | None = None
        self.classes: np.ndarray | None = None
        self.arrays: SvmArrays | None = None

    def fit(
        self, features: np.ndarray, labels: np.ndarray,
        c_grid: Sequence[float] = DEFAULT_C_GRID,
        gamma_grid: Sequence[float | str] = DEFAULT_GAMMA_GRID,
        cv_folds: int = 3, seed: int = 0,
    ) -> RifSvm:
        """Choose C and gamma by grid search with StratifiedKFold(cv_folds, shuffled by seed).

        Args:
            features: (N, F) training features.
            labels: (N,) class labels (any sortable type), at least 2 examples per class.
            c_grid, gamma_grid: candidate values; gamma applies to standardised features
                ('scale' = 1 / F for them).
            cv_folds: folds of the cross-validation (fewer if a class has fewer examples;
                none, and scikit-learn's defaults, if a class has a single example).
            seed: shuffling seed of the folds.

        Returns:
            self.
        """
        features = np.asarray(features, dtype=np.float64)
        labels = np.asarray(labels)
        if features.ndim != 2 or len(features) != len(labels):
            raise TomosiftError(f"features must be (N, F) with N = len(labels) = {len(labels)}, "
                                f"got {features.shape}")
        classes, counts = np.unique(labels, return_counts=True)
        if len(classes) < 2:
            raise TomosiftError("RIF-SVM training needs at least two classes")
        if cv_folds < 2:
            raise TomosiftError(f"cv_folds must be >= 2, got {cv_folds}")
        pipeline = Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="rbf"))])
        cv_folds = min(cv_folds, int(counts.min()))
        if cv_folds < 2:
            # One example in some class: no cross-validation possible; keep scikit-learn's
            # defaults (C = 1, gamma = 'scale').
            self.pipeline = pipeline.fit(features, labels)
            self.c, self.gamma, self.cv_score, self.classes = 1.0, "scale", None, classes
            self.arrays = SvmArrays.from_pipeline(self.pipeline)
            return self
        search = GridSearchCV(
            pipeline,
            {"svc__C": [float(c) for c in c_grid], "svc__gamma": list(gamma_grid)},
            cv=StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed),
            scoring="accuracy", refit=True,
        )
        search.fit(features, labels)
        self.pipeline = search.best_estimator_
        self.c = float(search.best_params_["svc__C"])
        self.gamma = search.best_params_["svc__gamma"]
        self.cv_score = float(search.best_score_)
        self.classes = classes
        self.arrays = SvmArrays.from_pipeline(self.pipeline)
        return self

    def _fitted(self) -> SvmArrays:
        if self.arrays is None:
            raise TomosiftError("the RIF-SVM is not trained: call fit first")
        return self.arrays

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N,) predicted labels of (N, F) features."""
        return self._fitted().predict(features)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """(N, C) one-vs-rest decision values for C > 2 classes, (N,) for two classes."""
        return self._fitted().decision_function(features)
