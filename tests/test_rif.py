"""Rotation-invariant features and the RIF-SVM baseline (tomosift.rif)."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
from scipy.ndimage import affine_transform
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from tomosift.classify.rif import (
    RifSettings,
    RifSvm,
    SvmArrays,
    features_from_dataset,
    rif_features,
    shell_power,
    shell_quadrature,
)
from tomosift.errors import TomosiftError

N = 40
# (centre xyz voxels, sigma xyz voxels, amplitude): smooth, anisotropic, well inside the box.
SHAPE_A = [((3, -2, 1), (2.5, 4.0, 3.0), 1.0), ((-5, 4, 2), (2.0, 2.0, 3.5), 0.8),
           ((1, 6, -6), (3.0, 2.0, 2.0), 0.6)]
SHAPE_B = [((0, 0, 0), (5.0, 3.0, 2.0), 1.0), ((6, -3, 3), (2.0, 2.0, 2.0), 0.5)]


def blobs(specs, n: int = N, rotation: np.ndarray | None = None,
          shift_voxels: np.ndarray | None = None) -> np.ndarray:
    """(n, n, n) [z, y, x] sum of anisotropic Gaussians, placed as f(R^T (x - t)) analytically."""
    rotation = np.eye(3) if rotation is None else rotation
    shift = np.zeros(3) if shift_voxels is None else shift_voxels
    axis = np.arange(n) - n // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    points = np.stack([x, y, z], axis=-1).reshape(-1, 3).astype(np.float64)
    local = (points - shift) @ rotation  # rows: R^T (x - t)
    volume = np.zeros(len(points))
    for centre, sigma, amplitude in specs:
        d = (local - np.asarray(centre, dtype=float)) / np.asarray(sigma)
        volume += amplitude * np.exp(-0.5 * np.sum(d * d, axis=1))
    return volume.reshape(n, n, n)


def rotate_volume(volume: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """f(R^T x) about voxel n // 2 by cubic-spline resampling; R acts on (x, y, z)."""
    n = volume.shape[0]
    flip = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    matrix = flip @ rotation.T @ flip  # output [z, y, x] index -> input index
    centre = np.full(3, n // 2, dtype=float)
    return affine_transform(volume, matrix, offset=centre - matrix @ centre, order=3,
                            mode="constant")


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.fixture(scope="module")
def shape_a() -> np.ndarray:
    return blobs(SHAPE_A)


@pytest.fixture(scope="module")
def rotated_a(shape_a) -> np.ndarray:
    rotation = Rotation.from_euler("zyz", [30, 50, 70], degrees=True).as_matrix()
    rotated = rotate_volume(shape_a, rotation)
    assert relative(shape_a, rotated) > 0.5  # the rotation really moves the density
    return rotated


@pytest.mark.parametrize("compression", ["none", "sqrt"])
def test_features_are_rotation_invariant(shape_a, rotated_a, compression):
    features = rif_features(np.stack([shape_a, rotated_a]), RifSettings(compression=compression))
    assert relative(features[0], features[1]) < 0.02


def test_low_degree_power_is_rotation_invariant_per_degree(shape_a, rotated_a):
    # The flattened features are dominated by P(r, 0); check l = 0 and l = 2 on their own, on
    # shells r >= 4, where the sphere spans enough voxels for interpolation to resolve them.
    # (Weighting the m > 0 coefficients wrongly, e.g., breaks this at l = 2 by 15-35%.)
    power = shell_power(np.stack([shape_a, rotated_a]), RifSettings())[:, 3:, :2]
    difference = np.linalg.norm(power[0] - power[1], axis=0) / np.linalg.norm(power[0], axis=0)
    assert difference[0] < 0.01
    assert difference[1] < 0.1


def test_features_are_translation_invariant(shape_a):
    shifted = np.roll(shape_a, (3, -2, 4), axis=(0, 1, 2))
    settings = RifSettings()
    assert relative(rif_features(shape_a, settings), rif_features(shifted, settings)) < 1e-4


def test_different_shapes_give_different_features(shape_a):
    settings = RifSettings()
    assert relative(rif_features(shape_a, settings), rif_features(blobs(SHAPE_B), settings)) > 0.1


def test_isotropic_gaussian_has_only_degree_zero_power():
    # The orthonormal DFT of exp(-|x|^2 / 2 s^2) has amplitude n^-1.5 (2 pi s^2)^1.5
    # exp(-2 pi^2 s^2 |k|^2 / n^2); on a shell P(r, 0) = 4 pi f(r)^2 and P(r, l > 0) = 0.
    sigma = 1.5
    volume = blobs([((0, 0, 0), (sigma,) * 3, 1.0)])
    power = shell_power(volume[None], RifSettings(normalize=False))[0]  # (20, 6)
    radius = np.arange(1, 9)
    amplitude = N**-1.5 * (2 * np.pi * sigma**2) ** 1.5 * np.exp(
        -2 * np.pi**2 * sigma**2 * radius**2 / N**2)
    np.testing.assert_allclose(power[:8, 0], 4 * np.pi * amplitude**2, rtol=0.03)
    assert np.all(power[:8, 1:] < 1e-4 * power[:8, :1])


def test_quadrature_is_exact_for_products_of_degree_l_harmonics():
    max_degree = 6
    theta, phi, weights = shell_quadrature(1.0, max_degree, exact_degree=2 * max_degree)
    assert weights.sum() == pytest.approx(4 * np.pi)
    pairs = [(deg, m) for deg in range(max_degree + 1) for m in range(-deg, deg + 1)]
    basis = np.stack([sph_harm_y(deg, m, theta, phi) for deg, m in pairs], axis=1)
    gram = (basis * weights[:, None]).T @ basis.conj()
    np.testing.assert_allclose(gram, np.eye(len(pairs)), atol=1e-12)


def test_feature_length_and_no_odd_degrees(shape_a):
    settings = RifSettings(max_degree=10)
    assert rif_features(shape_a, settings).shape == (20 * 6,)
    assert settings.n_features(N) == 120
    small = RifSettings(max_degree=7, shells=5)
    assert rif_features(np.zeros((3, 16, 16, 16)) + 1.0, small).shape == (3, 5 * 4)
    # Odd degrees of the (even) Fourier amplitude vanish; the kept ones are the even ones.
    every = shell_power(shape_a[None], settings, degrees=range(11))[0]
    assert np.all(every[:, 1::2] <= 1e-10 * every[:, ::2].max())
    np.testing.assert_allclose(every[:, ::2], shell_power(shape_a[None], settings)[0],
                               rtol=1e-6)


def test_bad_input_is_refused():
    with pytest.raises(TomosiftError, match="volumes"):
        rif_features(np.zeros((2, 40, 40, 30)), RifSettings())
    with pytest.raises(TomosiftError, match="shells"):
        rif_features(np.zeros((16, 16, 16)), RifSettings(shells=9))
    with pytest.raises(TomosiftError, match="compression"):
        RifSettings(compression="log")
    with pytest.raises(TomosiftError, match="NaN"):
        rif_features(np.full((16, 16, 16), np.nan), RifSettings())


def toy_dataset(count_per_class: int, seed: int, n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Two shapes in random poses (rotation, +-3 voxel shift) plus white noise, SNR 1."""
    rng = np.random.default_rng(seed)
    shapes = [[((-4, 0, 0), (2.0, 2.0, 2.0), 1.0), ((4, 0, 0), (2.0, 2.0, 2.0), 1.0)],
              [((0, 0, 0), (4.5, 2.0, 2.0), 1.0), ((0, 3, 0), (2.0, 2.0, 2.0), 0.6)]]
    volumes, labels = [], []
    for label, shape in enumerate(shapes):
        for _ in range(count_per_class):
            rotation = Rotation.random(random_state=rng).as_matrix()
            clean = blobs(shape, n, rotation, rng.uniform(-3, 3, size=3))
            volumes.append(clean + clean.std() * rng.standard_normal(clean.shape))
            labels.append(label)
    return np.stack(volumes).astype(np.float32), np.array(labels)


def test_svm_separates_shapes_and_not_shuffled_labels():
    settings = RifSettings(max_degree=6)
    train_x, train_y = toy_dataset(60, seed=1)
    test_x, test_y = toy_dataset(50, seed=2)
    train_f, test_f = rif_features(train_x, settings), rif_features(test_x, settings)
    model = RifSvm().fit(train_f, train_y, seed=0)
    assert np.mean(model.predict(test_f) == test_y) > 0.9
    assert model.cv_score > 0.9
    assert model.c in (1.0, 10.0, 100.0, 1000.0)
    assert model.decision_function(test_f).shape == (len(test_y),)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(test_f), model.predict(test_f))

    # Shuffled training labels carry no information: chance in cross-validation and on the
    # test set (averaged over shuffles: the clusters are so well separated that one fit may
    # map a whole cluster to the wrong label).
    accuracies = []
    for shuffle in range(5):
        shuffled = np.random.default_rng(shuffle).permutation(train_y)
        chance = RifSvm().fit(train_f, shuffled, seed=0)
        assert chance.cv_score < 0.75
        accuracies.append(np.mean(chance.predict(test_f) == test_y))
    assert 0.25 < np.mean(accuracies) < 0.75


def test_svm_needs_training_and_valid_labels():
    with pytest.raises(TomosiftError, match="not trained"):
        RifSvm().predict(np.zeros((2, 4)))
    with pytest.raises(TomosiftError, match="two classes"):
        RifSvm().fit(np.zeros((6, 4)), np.zeros(6))


def test_features_from_dataset_matches_in_memory(tmp_path):
    volumes, _ = toy_dataset(5, seed=4, n=24)  # (10, 24, 24, 24)
    path = tmp_path / "small.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("volumes", data=volumes, chunks=(1, 24, 24, 24))
    indices = [0, 2, 3, 4, 7, 9]
    settings = RifSettings(max_degree=8)
    with h5py.File(path, "r") as h5:
        streamed = features_from_dataset(h5, indices, settings, batch_size=4, progress=False)
        with pytest.raises(TomosiftError, match="increasing"):
            features_from_dataset(h5, [3, 1], settings, progress=False)
        with pytest.raises(TomosiftError, match="indices"):
            features_from_dataset(h5, [5, 10], settings, progress=False)
    assert streamed.shape == (6, 12 * 5) and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, rif_features(volumes[indices], settings), rtol=1e-6)


@pytest.mark.parametrize("n_classes", [2, 5])
def test_svm_arrays_reproduce_scikit_learn(n_classes):
    # model files keep the SVM as arrays (no pickled objects): the same decisions and labels
    rng = np.random.default_rng(n_classes)
    features = np.concatenate([rng.normal(c, 1.0, (40, 6)) for c in range(n_classes)])
    labels = np.repeat(np.arange(n_classes), 40)
    svm = RifSvm().fit(features, labels, cv_folds=2)
    test = rng.normal(1.0, 2.0, (200, 6))
    arrays = SvmArrays.from_arrays(svm.arrays.to_arrays())
    np.testing.assert_allclose(arrays.decision_function(test),
                               svm.pipeline.decision_function(test), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(arrays.predict(test), svm.pipeline.predict(test))
