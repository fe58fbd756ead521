"""Structure census (tomosift.discovery.census): calibrated same-structure comparison of
subset averages, merging and known/novel, on particles with a known answer at SNR 0.1."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_classify3d import _particles

from tomosift.density import DensitySettings, make_density
from tomosift.discovery.census import (
    FIXED_THRESHOLD,
    CensusSettings,
    SubsetAverage,
    agreement_ratio,
    expected_correlation,
    has_density,
    is_novel,
    merge_averages,
    merge_threshold,
    nearest_references,
    normalised_score,
    pair_levels,
)
from tomosift.discovery.classify3d import ClassifySettings, classify
from tomosift.errors import TomosiftError

SNR = 0.1
PER_SUBSET = 20


@pytest.fixture(scope="module")
def maps(structure_path):
    """40³ maps at 0.92 nm of two asymmetric complexes."""
    return {name: make_density(structure_path(name), DensitySettings())[0]
            for name in ("1u6g", "4v1w")}


def _subset_average(volume, seed, number, count=PER_SUBSET):
    """A subset of noisy (SNR 0.1), wedge-masked (±60°) particles in random poses, averaged
    reference-free as two half-maps."""
    particles, _, _ = _particles(volume, count, SNR, seed)
    result = classify(particles, ClassifySettings(classes=1, iterations=2, workers=2),
                      progress=False)
    return SubsetAverage(result.half_maps[0], result.observed(0), count, [number])


@pytest.fixture(scope="module")
def four_subsets(maps):
    """Subsets 1, 2 of 1u6g and 3, 4 of 4v1w; calibration pairs: two independent averages of
    10 particles of each complex."""
    averages = [_subset_average(maps[name], seed, number)
                for number, (name, seed) in enumerate(
                    [("1u6g", 1), ("1u6g", 2), ("4v1w", 3), ("4v1w", 4)], 1)]
    calibration = [(_subset_average(maps[name], seed, 0, 10),
                    _subset_average(maps[name], seed + 1, 0, 10))
                   for name, seed in (("1u6g", 10), ("4v1w", 20))]
    return averages, calibration


@pytest.fixture(scope="module")
def census_of_four(four_subsets):
    """The four subsets merged with the calibrated threshold."""
    return merge_averages(*four_subsets, CensusSettings(workers=2))


def test_expected_fsc_of_an_average_from_its_half_sets():
    # F = 1/3 -> sqrt(2/3 / (4/3)) = sqrt(1/2); F = 0.143 -> 0.5 (the map-model threshold)
    assert expected_correlation(np.array([1 / 3, 0.143]))[0] == pytest.approx(np.sqrt(0.5))
    assert expected_correlation(np.array([1 / 3, 0.143]))[1] == pytest.approx(0.5, abs=2e-3)
    assert agreement_ratio(np.array([1, 0.4, 0.2]), np.array([1, 0.8, 0.4]), 2) == \
        pytest.approx(0.5)


def test_identical_structures_merge_and_different_ones_do_not(census_of_four):
    merged = census_of_four
    assert sorted(s.subsets for s in merged.structures) == [[1, 2], [3, 4]]
    # the calibration: two independent averages of one complex agree as predicted (~1)
    assert len(merged.calibration_ratios) == 2
    assert np.all(merged.calibration_ratios > 0.8) and np.all(merged.calibration_ratios < 1.1)
    ratios = merged.pair_ratios
    assert ratios[0, 1] >= merged.threshold and ratios[2, 3] >= merged.threshold
    assert np.max(ratios[:2, 2:]) < 0.7 * merged.threshold, ratios
    assert {s.particles for s in merged.structures} == {2 * PER_SUBSET}


def test_a_fixed_threshold_replaces_the_calibrated_one(four_subsets, census_of_four):
    """Above every pair ratio nothing merges; near 0 (below any two positively correlated
    averages) all merge into one; the calibration is measured either way."""
    ratios = census_of_four.pair_ratios
    above = float(np.nanmax(ratios)) + 0.01
    apart = merge_averages(*four_subsets, CensusSettings(workers=2, threshold=above))
    assert apart.threshold == above and len(apart.structures) == 4 and not apart.merges
    together = merge_averages(*four_subsets, CensusSettings(workers=2, threshold=0.001))
    assert len(together.structures) == 1 and together.structures[0].particles == 4 * PER_SUBSET
    assert together.same_level == pytest.approx(census_of_four.same_level)


def test_the_default_threshold_is_fixed_where_averages_hold_enough_members(four_subsets,
                                                                          census_of_four):
    """auto (the default): these 20-member averages are below the 25 members the fixed 0.85
    was validated on, so the calibrated threshold applies; the same averages counted as
    30-member ones merge at 0.85 (both complexes' pairs reach it, 0.94-1.0 here; no pair of
    different complexes does), with the calibrated threshold measured beside it."""
    assert census_of_four.rule.startswith("calibrated: midway")
    assert "median of 20 members" in census_of_four.rule
    assert census_of_four.threshold == census_of_four.calibrated_threshold < FIXED_THRESHOLD
    averages, calibration = four_subsets
    larger = [dataclasses.replace(average, particles=30) for average in averages]
    fixed = merge_averages(larger, calibration, CensusSettings(workers=2))
    assert fixed.threshold == FIXED_THRESHOLD and fixed.rule.startswith("auto: fixed")
    assert fixed.calibrated_threshold == pytest.approx(census_of_four.threshold)
    assert sorted(s.subsets for s in fixed.structures) == [[1, 2], [3, 4]]
    calibrated = merge_averages(larger, calibration,
                                CensusSettings(workers=2, threshold="calibrated"))
    assert calibrated.threshold == pytest.approx(census_of_four.threshold)
    assert calibrated.rule == "calibrated: midway to the median pair ratio"


def test_the_count_by_threshold_predicts_what_another_threshold_gives(four_subsets,
                                                                    census_of_four):
    """The census follows its merges past its threshold on copies: the steps say how many
    structures any threshold down to the median pair ratio gives, and a census run with
    one of those thresholds gives that many."""
    calibrated = census_of_four
    ratios = calibrated.pair_ratios
    above = float(np.nanmax(ratios)) + 0.01
    assert calibrated.structures_at(above) == 4
    assert calibrated.structures_at(calibrated.threshold) == len(calibrated.structures) == 2
    same = sorted([ratios[0, 1], ratios[2, 3]])
    assert calibrated.structures_at(0.5 * (same[0] + same[1])) == 3
    assert calibrated.followed_to == pytest.approx(np.nanmedian(ratios))
    assert calibrated.structures_at(calibrated.followed_to - 0.01) is None
    # nothing merges above every ratio, yet the steps followed from there predict the
    # calibrated census's count
    apart = merge_averages(*four_subsets, CensusSettings(workers=2, threshold=above))
    assert len(apart.structures) == 4 and len(apart.ratios_below) >= 2
    assert apart.structures_at(calibrated.threshold) == 2
    assert [count for _, count in apart.structures_by_threshold()][:3] == [4, 3, 2]


def test_per_subset_calibration_merges_the_same_structures(four_subsets, census_of_four):
    """Subsets 1 (1u6g) and 3 (4v1w) own a calibration split each, 2 and 4 none: the census
    held pair by pair to its subsets' own levels finds the same two structures, on the
    normalised scale, and its count by threshold agrees with it."""
    averages, calibration = four_subsets
    settings = CensusSettings(workers=2, calibration="per_subset")
    with pytest.raises(TomosiftError, match="owners"):
        merge_averages(averages, calibration, settings)
    merged = merge_averages(averages, calibration, settings, owners=[0, 2])
    assert merged.normalised and merged.threshold == 0.5
    assert sorted(s.subsets for s in merged.structures) == [[1, 2], [3, 4]]
    np.testing.assert_allclose(merged.calibration_ratios, census_of_four.calibration_ratios)
    for owner, ratio in zip([0, 2], merged.calibration_ratios, strict=True):
        assert merged.levels[owner] == pytest.approx(max(ratio, merged.same_level))
    assert max(merged.levels[0], merged.levels[2]) > merged.same_level  # one has its own
    assert merged.levels[1] == merged.levels[3] == pytest.approx(merged.same_level)
    assert all(score >= 0.5 for _, _, score in merged.merges)
    assert merged.followed_to == 0.0 and merged.structures_at(0.5) == 2
    assert merged.structures_at(max(s for _, _, s in merged.merges) + 0.01) == 4


def test_pooled_calibration_merges_at_the_quantile_of_the_splits(four_subsets, census_of_four):
    """Pooled: the threshold is the same-structure level itself (the 10% quantile of the
    splits' ratios, no pull toward the median pair), on the ratio scale; a pair merges when
    its ratio reaches it, and the two complexes never merge. Two splits (1.01 and 0.98 here)
    put the quantile near their minimum, above the 0.94 of 1u6g's two subsets: the rule is
    made for a census's many splits (docs/benchmarks.md, issue 20, sixth session)."""
    averages, calibration = four_subsets
    merged = merge_averages(averages, calibration,
                            CensusSettings(workers=2, calibration="pooled"))
    assert not merged.normalised and not merged.levels
    assert merged.threshold == merged.same_level == pytest.approx(
        np.quantile(census_of_four.calibration_ratios, 0.1))
    assert merged.threshold > census_of_four.threshold
    ratios = merged.pair_ratios
    assert [sorted(s.subsets) for s in merged.structures if len(s.subsets) > 1] == [[3, 4]]
    assert ratios[2, 3] >= merged.threshold > ratios[0, 1] > np.max(ratios[:2, 2:])
    assert merged.structures_at(merged.threshold) == len(merged.structures) == 3


def test_a_structure_without_its_reference_is_novel(census_of_four, maps):
    settings = CensusSettings(workers=2)
    structures = census_of_four.structures
    both = nearest_references(structures, maps, settings)
    truth = ["1u6g" if s.subsets == [1, 2] else "4v1w" for s in structures]
    assert [name for name, _ in both] == truth
    assert not any(is_novel(score, settings) for _, score in both)
    only_one = nearest_references(structures, {"1u6g": maps["1u6g"]}, settings)
    novel = [is_novel(score, settings) for _, score in only_one]
    assert novel == [name == "4v1w" for name in truth]


def test_an_average_of_noise_has_no_density_and_is_not_novel(census_of_four, rng):
    """Two half-maps of independent noise (as an average of empty boxes) agree on no shell:
    no resolved density, so the census lists it but never calls it novel; the complexes'
    averages of 20 particles at SNR 0.1 do resolve."""
    noise = rng.normal(size=(2, 40, 40, 40)).astype(np.float32)
    blank = SubsetAverage(noise, np.ones((40, 40, 21), dtype=np.float32), 20, [9])
    assert blank.resolved_shell < 2 and not has_density(blank)
    assert all(has_density(structure) for structure in census_of_four.structures)


def test_settings_are_checked():
    with pytest.raises(TomosiftError, match="min_members"):
        CensusSettings(min_members=1)
    with pytest.raises(TomosiftError, match="calibration_quantile"):
        CensusSettings(calibration_quantile=1.5)
    with pytest.raises(TomosiftError, match="threshold must be in"):
        CensusSettings(threshold=0.0)
    with pytest.raises(TomosiftError, match="a number, auto or calibrated"):
        CensusSettings(threshold="sometimes")
    assert CensusSettings(calibration="per_subset").threshold == "auto"
    with pytest.raises(TomosiftError, match="calibration must be one of"):
        CensusSettings(calibration="largest")
    with pytest.raises(TomosiftError, match="per_subset"):
        CensusSettings(calibration="per_subset", threshold=0.8)
    assert CensusSettings(calibration="pooled", threshold=0.8).threshold == 0.8


def test_a_pair_is_held_to_the_lower_of_its_subsets_own_levels():
    """Own levels where a subset's split agrees at least as well as the common level, the
    common level elsewhere (no split, or a failed one); the normalised score is 0 at the
    median pair ratio and 1 at the pair's level, so the midway rule (0.5) is the
    best_resolved rule when every level is common."""
    levels = pair_levels(np.array([0.95, np.nan, 0.30, 0.70, 0.85]), same_level=0.85)
    np.testing.assert_allclose(levels, [0.95, 0.85, 0.85, 0.85, 0.85])
    assert normalised_score(0.35, 0.70, 0.35) == pytest.approx(0.0)
    assert normalised_score(0.70, 0.70, 0.35) == pytest.approx(1.0)
    # the ratio that scores 0.5 against the common level is the best_resolved midpoint
    midpoint = merge_threshold(0.85, np.array([0.2, 0.35, 0.5]))
    assert normalised_score(midpoint, 0.85, 0.35) == pytest.approx(0.5)


def test_calibration_splits_the_best_resolved_subsets_not_the_largest(rng):
    """A large subset whose half-maps disagree (a mixture) is split after a smaller one that
    resolves; subsets with fewer than 2 x min_members members only when none has more."""
    from scipy import ndimage

    from tomosift.subdivide.census import _calibration_subsets

    box = 24
    signal = ndimage.gaussian_filter(rng.normal(size=(box,) * 3), 1.0).astype(np.float32)
    coverage = np.ones((box, box, box // 2 + 1), dtype=np.float32)

    def average(halves_agree: bool, particles: int, number: int) -> SubsetAverage:
        noise = 0.05 * rng.normal(size=(2,) + (box,) * 3)
        halves = (signal + noise) if halves_agree else rng.normal(size=(2,) + (box,) * 3)
        return SubsetAverage(halves.astype(np.float32), coverage, particles, [number])

    mixture, resolving, small = average(False, 300, 1), average(True, 40, 2), average(True, 8, 3)
    assert resolving.resolved_shell > mixture.resolved_shell
    settings = CensusSettings(min_members=10, calibration_subsets=1)
    assert _calibration_subsets([1, 2, 3], [mixture, resolving, small], settings) == [2]
    settings = CensusSettings(min_members=10, calibration_subsets=8)
    assert _calibration_subsets([1, 2, 3], [mixture, resolving, small], settings) == [2, 1]
    assert _calibration_subsets([3], [small], settings) == [3]
