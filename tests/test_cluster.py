"""k-means, agreement with the truth, enrichment, cluster tables and pose normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tomosift.discovery.cluster import (
    agreement,
    cluster_sizes,
    enrichment,
    kmeans,
    most_enriched_cluster,
    parse_subset_spec,
    plot_cluster_size_histograms,
    read_cluster_table,
    size_statistics,
    subset_indices,
    write_cluster_table,
)
from tomosift.discovery.embed import plot_embedding, tsne_2d
from tomosift.discovery.posenorm import (
    PosenormSettings,
    posenorm_features,
    posenorm_pose,
    posenorm_volume,
)
from tomosift.errors import TomosiftError


def _blobs(seed: int, per_class: int = 60, classes: int = 4, dim: int = 5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(classes, dim))
    truth = np.repeat(np.arange(classes), per_class)
    return centres[truth] + rng.normal(size=(truth.size, dim)), truth


@pytest.mark.parametrize("minibatch_threshold", [100_000, 10])
def test_kmeans_recovers_separated_blobs(minibatch_threshold):
    features, truth = _blobs(0)
    labels, centres = kmeans(features, 4, seed=1, minibatch_threshold=minibatch_threshold)
    assert labels.shape == truth.shape and centres.shape == (4, 5)
    scores = agreement(truth, labels)
    assert scores["purity"] >= 0.99
    assert scores["adjusted_rand"] == pytest.approx(1.0, abs=1e-6)
    assert scores["nmi"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(labels, kmeans(features, 4, seed=1,
                                                 minibatch_threshold=minibatch_threshold)[0])


def test_kmeans_standardised_centres_are_in_feature_units():
    features, truth = _blobs(1, classes=3)
    features[:, 0] *= 100.0
    labels, centres = kmeans(features, 3, seed=0, standardize=True)
    assert agreement(truth, labels)["adjusted_rand"] == pytest.approx(1.0)
    for c in range(3):
        np.testing.assert_allclose(centres[c], features[labels == c].mean(axis=0), rtol=1e-6)


def test_kmeans_refuses_more_clusters_than_vectors():
    with pytest.raises(TomosiftError, match=r"k = 7 .* N = 5"):
        kmeans(np.zeros((5, 3)), 7, seed=0)


def test_agreement_purity_over_partition():
    truth = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([0, 0, 1, 1, 2, 2])  # cluster 1 mixes one of each class
    assert agreement(truth, clusters)["purity"] == pytest.approx(5 / 6)


def test_enrichment_on_hand_made_example():
    truth = np.array([2, 2, 2, 0, 2, 1, 1, 0, 2, 0])
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 3, 3, 3])
    table = enrichment(truth, clusters, target_class=2)
    assert table["cluster"].tolist() == [0, 1, 3]
    assert table["size"].tolist() == [4, 3, 3]
    assert table["count"].tolist() == [3, 1, 1]
    np.testing.assert_allclose(table["fraction_in_cluster"], [0.75, 1 / 3, 1 / 3])
    np.testing.assert_allclose(table["fraction_in_class"], [0.6, 0.2, 0.2])
    assert most_enriched_cluster(truth, clusters, 2) == 0
    np.testing.assert_array_equal(cluster_sizes(clusters, 5), [4, 3, 0, 3, 0])
    with pytest.raises(TomosiftError, match="class 5"):
        enrichment(truth, clusters, target_class=5)


def test_most_enriched_cluster_ignores_tiny_pure_clusters_and_breaks_ties():
    # Class 1 has 40 members: 2 alone in cluster 0 (pure), 30 in cluster 1 (30/50), 8 in
    # cluster 2 (8/10). The 5 % floor is 2 members, so cluster 0 wins by default; a floor
    # of 10 members leaves cluster 1.
    truth = np.r_[[1] * 2, [1] * 30 + [0] * 20, [1] * 8 + [0] * 2]
    clusters = np.r_[[0] * 2, [1] * 50, [2] * 10]
    assert most_enriched_cluster(truth, clusters, 1) == 0
    assert most_enriched_cluster(truth, clusters, 1, min_fraction_of_class=0.25) == 1
    assert most_enriched_cluster(truth, clusters, 1, min_count=3) == 2
    # Equal fractions (1/2): the larger count wins, then the smaller cluster id.
    truth = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    clusters = np.array([5, 5, 3, 3, 3, 3, 4, 4])
    assert most_enriched_cluster(truth, clusters, 1, min_fraction_of_class=0) == 3
    assert most_enriched_cluster(truth[[0, 1, 6, 7]], clusters[[0, 1, 6, 7]], 1) == 4


def test_size_statistics_on_hand_made_example(tmp_path):
    sizes = np.array([2, 10, 11, 1977])
    stats = size_statistics(sizes)
    assert stats["n_clusters"] == 4
    assert stats["mean"] == pytest.approx(500.0)
    assert stats["cv"] == pytest.approx(np.std(sizes) / 500.0)
    assert (stats["n_small"], stats["n_large"]) == (2, 1)
    assert (stats["min"], stats["max"]) == (2, 1977)
    plot_cluster_size_histograms(tmp_path / "sizes.png", {"posenorm": sizes, "cnn": [5, 8, 9]})
    assert (tmp_path / "sizes.png").stat().st_size > 0


def test_cluster_table_and_subset_spec(tmp_path):
    path = tmp_path / "clusters.tsv"
    write_cluster_table(path, np.array([10, 11, 12, 13]), np.array([1, 0, 1, 2]),
                        true_labels=np.array([0, 1, 1, 0]), class_names=["a", "b"])
    frame = read_cluster_table(path)
    assert list(frame.columns) == ["index", "cluster", "label", "class"]
    assert frame["class"].tolist() == ["a", "b", "b", "a"]
    assert parse_subset_spec(f"{path}:1") == (path, 1)
    assert parse_subset_spec("dir:with:colons/c.tsv:7") == (Path("dir:with:colons/c.tsv"), 7)
    np.testing.assert_array_equal(subset_indices(f"{path}:1"), [10, 12])
    with pytest.raises(TomosiftError, match="no cluster 5"):
        subset_indices(f"{path}:5")
    with pytest.raises(TomosiftError, match="not an integer"):
        parse_subset_spec(f"{path}:x")
    subdivided = tmp_path / "distances.tsv"  # the table tomosift subdivide writes
    write_cluster_table(subdivided, np.array([0, 1]), np.array([2, 1]),
                        distances=np.array([0.5, 1 / 3]), true_classes=["x", "y"])
    assert subdivided.read_text() == ("index\tcluster\tdistance\tclass\n"
                                      "0\t2\t0.5\tx\n1\t1\t0.333333\ty\n")
    with pytest.raises(TomosiftError, match=r"TABLE\.tsv:CLUSTER"):
        parse_subset_spec("clusters.tsv")
    with pytest.raises(TomosiftError, match="not found"):
        subset_indices(f"{tmp_path / 'missing.tsv'}:0")


def test_tsne_subsamples_deterministically(tmp_path, monkeypatch):
    features, truth = _blobs(2, per_class=30, classes=3, dim=8)
    xy, indices = tsne_2d(features, seed=0, perplexity=10, max_points=60)
    assert xy.shape == (60, 2) and indices.shape == (60,)
    assert np.all(np.diff(indices) > 0)
    np.testing.assert_array_equal(indices, tsne_2d(features, seed=0, perplexity=10,
                                                   max_points=60)[1])
    plot_embedding(tmp_path / "tsne.png", xy, truth[indices], ["a", "b", "c"],
                   highlight_class="b", title="t-SNE")
    assert (tmp_path / "tsne.png").stat().st_size > 0
    # a fold's held-out classes, all marked: one legend entry each
    import tomosift.plots

    legends = []
    save = tomosift.plots.save_figure

    def keep_legend(figure, path, **kwargs):
        legends.append([t.get_text() for t in figure.axes[0].get_legend().get_texts()])
        save(figure, path, **kwargs)

    monkeypatch.setattr(tomosift.plots, "save_figure", keep_legend)
    plot_embedding(tmp_path / "fold.png", xy, truth[indices], ["a", "b", "c"],
                   highlight_class=["a", "c"])
    assert legends == [["b", "a (held out)", "c (held out)"]]
    with pytest.raises(TomosiftError, match="'z'"):
        plot_embedding(tmp_path / "y.png", xy, truth[indices], ["a", "b", "c"], ["a", "z"])
    with pytest.raises(TomosiftError, match="highlight"):
        plot_embedding(tmp_path / "x.png", xy, truth[indices], ["a", "b", "c"], "z")


# Pose normalisation: objects made of Gaussian blobs (centres in voxels, x, y, z), placed
# analytically at any rotation and shift, so no interpolation blurs the reference.
OBJECT_A = ([(7, 0, 0), (-4, 1, 0), (0, 5, 1), (1, -2, 4)], [1.0, 1.4, 0.9, 0.7],
            [2.0, 2.5, 1.8, 1.6])
OBJECT_B = ([(0, 0, 6), (5, 3, 0), (-5, 3, 0), (0, -5, -2)], [1.2, 0.8, 1.0, 1.1],
            [2.2, 1.7, 2.0, 2.4])
BOX = 32


def _blob_object(
    spec, rotation: np.ndarray | None = None, shift: np.ndarray | None = None
) -> np.ndarray:
    rotation = np.eye(3) if rotation is None else rotation
    shift = np.zeros(3) if shift is None else shift
    c = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    points = np.stack([x, y, z], axis=-1).astype(np.float64)
    volume = np.zeros((BOX, BOX, BOX))
    for centre, amplitude, sigma in zip(*spec, strict=True):
        p = rotation @ np.asarray(centre, dtype=np.float64) + shift
        volume += amplitude * np.exp(-((points - p) ** 2).sum(axis=-1) / (2 * sigma**2))
    return volume


def _posed(spec, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([_blob_object(spec, Rotation.random(random_state=rng).as_matrix(),
                                  rng.uniform(-2.5, 2.5, 3)) for _ in range(count)])


@pytest.mark.parametrize("settings", [PosenormSettings(), PosenormSettings(
    component="central", bin_factor=1)])
def test_posenorm_undoes_rotation_and_shift(settings):
    rng = np.random.default_rng(7)
    reference = posenorm_features(_blob_object(OBJECT_A)[None], settings)[0]
    for volume in _posed(OBJECT_A, 3, rng):
        noisy = volume + rng.normal(scale=0.05, size=volume.shape)
        features = posenorm_features(noisy[None], settings)[0]
        assert np.corrcoef(reference, features)[0, 1] > 0.9


def test_posenorm_separates_two_objects():
    rng = np.random.default_rng(8)
    settings = PosenormSettings()
    volumes = np.concatenate([_posed(OBJECT_A, 4, rng), _posed(OBJECT_B, 4, rng)])
    features = posenorm_features(volumes, settings)
    assert features.shape == (8, (BOX // 2) ** 3) and features.dtype == np.float32
    corr = np.corrcoef(features)
    same = np.kron(np.eye(2), np.ones((4, 4))).astype(bool)
    assert corr[same].min() > corr[~same].max() + 0.1
    labels, _ = kmeans(features, 2, seed=0)
    assert agreement(np.repeat([0, 1], 4), labels)["purity"] == 1.0


def test_posenorm_otsu_segments_a_sphere():
    c = np.arange(BOX) - BOX // 2
    radius = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    sphere = (radius < 6).astype(np.float64)
    shifted = np.roll(sphere, (2, -1, 3), axis=(0, 1, 2))
    pose = posenorm_pose(shifted, PosenormSettings(threshold="otsu"))
    assert pose.segmented
    np.testing.assert_allclose(pose.centre_xyz, np.array([3, -1, 2]) + BOX // 2, atol=1e-6)


def test_posenorm_dark_polarity_matches_white():
    volume = _blob_object(OBJECT_B, shift=np.array([1.0, -2.0, 0.5]))
    white = posenorm_volume(volume, PosenormSettings())
    dark = posenorm_volume(-volume, PosenormSettings(polarity="dark"))
    np.testing.assert_allclose(white, dark, atol=1e-9)
    pose = posenorm_pose(volume, PosenormSettings())
    assert pose.segmented and np.linalg.det(pose.rotation) == pytest.approx(1.0)


def test_posenorm_empty_volume_is_left_in_place():
    empty = np.zeros((BOX, BOX, BOX))
    pose = posenorm_pose(empty, PosenormSettings())
    assert not pose.segmented
    np.testing.assert_array_equal(pose.rotation, np.eye(3))
    np.testing.assert_array_equal(posenorm_volume(empty, PosenormSettings()), empty)
    noise = np.random.default_rng(9).normal(size=(BOX, BOX, BOX))
    np.testing.assert_array_equal(posenorm_volume(noise, PosenormSettings()),
                                  posenorm_volume(noise, PosenormSettings()))
    with pytest.raises(TomosiftError, match="polarity"):
        PosenormSettings(polarity="recorded")


def test_a_thinly_spread_class_still_has_a_most_enriched_cluster():
    from tomosift.discovery.cluster import most_enriched_cluster

    # 40 members of class 1, one in each of 40 clusters of 3: 5% of 40 (2) is more than any
    # cluster holds, so the floor falls to 1 instead of leaving no cluster eligible
    clusters = np.repeat(np.arange(40), 3)
    labels = np.tile([1, 0, 0], 40)
    assert most_enriched_cluster(labels, clusters, 1) == 0  # all tie at 1/3: the lowest
    clusters[[22, 23]] = 8  # cluster 7 keeps only its member of class 1
    assert most_enriched_cluster(labels, clusters, 1) == 7
