"""How many distinct structures do the subsets hold? Calibrated comparison and merging of
subset averages.

Each subset is averaged as two independent half-maps (gold standard). Its half-set FSC
``F(s)`` per Fourier shell ``s`` says how well the subset reproduces itself; the full
average's expected correlation with the true structure is ``C(s) = sqrt(2F / (1 + F))``. Two
averages of one structure, aligned, then have an expected FSC of ``C_A(s) C_B(s)``; the
**same-structure ratio** of a pair is the FSC they reach over the shells both resolve (FSC of
each half-set pair >= 0.143), summed, divided by that expected sum. It is near 1 for two
averages of one structure whatever their particle counts and resolutions, and lower for
different structures.

**Calibration.** Both ends of the scale are measured on the data. The *same-structure
level*: the members of a few of the best-resolved subsets are split at random into two groups,
each averaged on its own (an independent refinement from its own start, as two subsets of
one structure are); these pairs are one structure by construction, and the level is a low
quantile (``calibration_quantile``) of their ratios. The *different-structure level*: the
median ratio of all pairs of subsets (with tens of structures in a hundred subsets, nearly
all pairs are of different structures). The threshold lies midway between the two. (A
threshold at the same-structure level alone split pure classes at dose 80: independent
averages of one class scatter below it, while different classes stay far lower;
docs/benchmarks.md, issue 20. A subset's own half-maps, aligned back onto each other, agree
better still: they share one refinement's start and systematic errors.) No number is tuned
to a dataset. With few structures among few subsets the median is no longer a
different-structure level and the threshold rises: fewer merges.

**Per-subset calibration** (``calibration: per_subset``): every subset is split the same
way, and a pair is held to the lower of its two subsets' own levels, since a small complex's
averages reproduce less well than a large one's and one common level judges them by the
large ones (docs/benchmarks.md, issue 20). The merge score is normalised,
``(ratio - median) / (level - median)``: 0 at the median pair ratio, 1 at the pair's level,
merged at 0.5 (with every level the common one this is the midway rule). A subset whose split
agrees less than the common level (a failed refinement), or that has too few members to
split, takes the common level; a merged structure keeps the lower level of its two.

**Pooled calibration** (``calibration: pooled``): every subset is split the same way, and the
threshold is the same-structure level itself, the ``calibration_quantile`` of all the splits'
ratios: two subsets are one structure when they agree as well as all but that share of the
independent averages of one subset do, with no different-structure end. Pooled over every
subset, the splits span small and large complexes, pure subsets and mixtures, and the odd
failed refinement, so the level is not set by a few large complexes. It is made for a
census of many subsets: with a few splits the quantile sits near their minimum, and pairs
of one structure just below it stay apart (docs/benchmarks.md, issue 20, sixth session).

**The default threshold** (``threshold: auto``) is a fixed same-structure ratio,
:data:`FIXED_THRESHOLD` (0.85), where the subset averages hold at least
:data:`FIXED_THRESHOLD_MIN_MEMBERS` (25) members (the median of the averages compared), and
the calibrated rule of ``calibration`` below that. 0.85 counted within ±2 of the truth on 8
of 10 40³ benchmark censuses of both imaging settings (50-member averages; read off five, then
checked on five nobody had looked at) and one off on the other two, where the calibrated
midpoint undercounts by 5-10; the ratio's scale
was measured stable from 25 to 100 members per average, and below that, on 10-member
averages, two averages of one complex agree at only 0.68-0.84 (docs/benchmarks.md, issue 20,
seventh and eighth sessions). The calibration is measured either way, and the threshold the
calibrated rule would have set is reported beside the fixed one. ``per_subset`` calibration
(a normalised scale) is always calibrated.

**Merging** is agglomerative: the pair with the highest ratio above the threshold merges
(the second's half-maps turned onto the first and summed with particle-count weights, so the
merged half-maps stay independent), the merged average is compared again with every other,
and merging stops when no pair reaches the threshold. The number of structures is not an
input.

**Known or novel.** A reference map is a model, not a second average: it lacks what every
average of the data shares (the same reference-free alignment, pseudo-symmetry, edge and
interpolation effects), so the pair ratio cannot judge it (a 40³ average of 4v1w whose
half-maps agree at FSC 0.99 agrees with the 4v1w map at 0.8 on every shell, and the pair
ratio calls the map different). A structure is compared with each reference as a map with
its model (Rosenthal & Henderson 2003): the **reference score** is the last shell where
their FSC is >= 0.5 divided by the last shell where the structure's half-set FSC is >=
0.143 (for a perfect model the two coincide: ``C = 0.5`` where ``F = 0.143``). The structure
is ``novel`` when no reference reaches ``1 / reference_resolution_factor`` (the reference
explains the map to within that factor of the map's own resolution).

Volumes are (n, n, n) float32 indexed [z, y, x], bright density; ``coverage`` masks are
(n, n, n // 2 + 1) 0/1 in rfftn layout (what each average observed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tomosift.discovery.align import (
    Alignment,
    AlignSettings,
    Prepared,
    align_prepared,
    prepare,
    rotate_mask,
)
from tomosift.discovery.fsc import fsc_curve, soft_sphere_mask
from tomosift.discovery.refine import last_shell_above
from tomosift.discovery.rotations import transform_volume
from tomosift.errors import TomosiftError

#: Half-set FSC threshold of a resolved shell (gold standard).
RESOLVED_FSC = 0.143
#: A subset average must resolve at least this many shells to be compared.
MIN_RESOLVED_SHELLS = 2
#: The default merge threshold on the same-structure ratio (module docstring).
FIXED_THRESHOLD = 0.85
#: ... applied where the averages compared hold at least this many members (median).
FIXED_THRESHOLD_MIN_MEMBERS = 25
#: The threshold rules that are not a number (:class:`CensusSettings`).
THRESHOLD_RULES = ("auto", "calibrated")
#: How the same-structure level is calibrated (:class:`CensusSettings`).
CALIBRATIONS = ("best_resolved", "per_subset", "pooled")
#: The per-subset census merges a pair at this normalised score (midway between the median
#: pair ratio, 0, and the pair's own same-structure level, 1).
NORMALISED_THRESHOLD = 0.5


@dataclass(frozen=True)
class CensusSettings:
    """How a census averages, compares and merges.

    Attributes:
        min_members: subsets with fewer members are listed as unresolved, not averaged.
        max_members: members averaged per subset (a seeded subsample; None = all).
        iterations: refinement iterations of each subset's average.
        calibration_quantile: the same-structure level is this quantile of the ratios of the
            calibration pairs (see the module docstring).
        calibration_subsets: how many of the best-resolved subsets (with at least twice
            ``min_members`` members) are split into two independent averages to calibrate.
        calibration: ``best_resolved``: one same-structure level for every pair, from the
            ``calibration_subsets`` best-resolved subsets. ``per_subset``: every subset with
            enough members is split too, and a pair is held to the lower of its two
            subsets' own levels (:func:`pair_levels`); merge scores are then normalised
            (0 = the median pair ratio, 1 = the pair's own level, merged at 0.5).
            ``pooled``: every subset with enough members is split too, and the merge
            threshold is the ``calibration_quantile`` of all the splits' ratios.
        threshold: ``auto``: :data:`FIXED_THRESHOLD` where the averages compared hold a
            median of at least :data:`FIXED_THRESHOLD_MIN_MEMBERS` members, the calibrated
            threshold below that (and always with ``per_subset``); ``calibrated``: the
            calibrated threshold; a number: that fixed merge threshold on the
            same-structure ratio. The calibration is measured and reported either way.
        reference_resolution_factor: a reference explains a structure when their FSC stays
            >= 0.5 up to at least 1 / this of the shells the structure resolves.
        seed: seeds the subsamples, half-set splits and calibration splits.
        workers: threads of the refinement and of the pairwise alignments.
        align: the search of the pairwise alignments.
    """

    min_members: int = 10
    max_members: int | None = 100
    iterations: int = 2
    calibration_quantile: float = 0.1
    calibration_subsets: int = 8
    calibration: str = "best_resolved"
    threshold: float | str = "auto"
    reference_resolution_factor: float = 2.0
    seed: int = 1
    workers: int = 1
    align: AlignSettings = field(default_factory=AlignSettings)

    def __post_init__(self) -> None:
        if self.min_members < 2:
            raise TomosiftError(f"min_members must be >= 2 (two half-sets), got "
                                f"{self.min_members}")
        if self.max_members is not None and self.max_members < self.min_members:
            raise TomosiftError(f"max_members ({self.max_members}) must be >= min_members "
                                f"({self.min_members})")
        if not 0.0 <= self.calibration_quantile <= 1.0:
            raise TomosiftError(f"calibration_quantile must be in [0, 1], got "
                                f"{self.calibration_quantile}")
        if self.calibration_subsets < 1:
            raise TomosiftError(f"calibration_subsets must be >= 1, got "
                                f"{self.calibration_subsets}")
        if self.calibration not in CALIBRATIONS:
            raise TomosiftError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got "
                                f"{self.calibration!r}")
        if isinstance(self.threshold, str):
            if self.threshold not in THRESHOLD_RULES:
                raise TomosiftError(f"threshold must be a number, auto or calibrated, got "
                                    f"{self.threshold!r}")
        elif self.calibration == "per_subset":
            raise TomosiftError("a fixed threshold is a same-structure ratio for every pair: "
                                "use it with calibration best_resolved or pooled, not "
                                "per_subset")
        elif not 0.0 < self.threshold < 2.0:
            raise TomosiftError(f"threshold must be in (0, 2) (a same-structure ratio; about 1 "
                                f"for one structure), got {self.threshold}")
        if self.reference_resolution_factor < 1.0:
            raise TomosiftError(f"reference_resolution_factor must be >= 1, got "
                                f"{self.reference_resolution_factor}")


@dataclass
class SubsetAverage:
    """One average: a subset's, or several merged.

    Attributes:
        halves: (2, n, n, n) float32 independent half-maps.
        coverage: (n, n, n // 2 + 1) float32 0/1 Fourier coverage of the average.
        particles: particles averaged.
        subsets: the subset numbers it holds.
    """

    halves: np.ndarray
    coverage: np.ndarray
    particles: int
    subsets: list[int]
    _prepared: Prepared | None = field(default=None, repr=False, compare=False)

    @property
    def average(self) -> np.ndarray:
        return (0.5 * (self.halves[0] + self.halves[1])).astype(np.float32)

    @functools.cached_property
    def half_fsc(self) -> np.ndarray:
        """(n // 2 + 1,) FSC between the half-maps (soft spherical mask); computed once: the
        half-maps do not change."""
        return masked_fsc(self.halves[0], self.halves[1])

    @functools.cached_property
    def resolved_shell(self) -> int:
        """The last shell whose half-set FSC is >= 0.143 (0 = none)."""
        return last_shell_above(self.half_fsc, RESOLVED_FSC)

    def prepared(self, settings: AlignSettings) -> Prepared:
        if self._prepared is None:
            self._prepared = prepare(self.average, self.coverage, settings)
        return self._prepared


def masked_fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n // 2 + 1,) FSC of two maps under the soft spherical mask of the FSC module."""
    return fsc_curve(a, b, soft_sphere_mask(a.shape[0]))[1]


def expected_correlation(half_fsc: np.ndarray) -> np.ndarray:
    """(S,) the full average's expected FSC with its true structure, ``sqrt(2F / (1 + F))``
    per shell from its half-set FSC ``F`` (0 where F <= 0)."""
    f = np.clip(np.asarray(half_fsc, dtype=np.float64), 0.0, 1.0)
    return np.sqrt(2.0 * f / (1.0 + f))


def agreement_ratio(fsc: np.ndarray, expected: np.ndarray, top_shell: int) -> float:
    """sum of ``fsc`` over shells 1 .. top_shell divided by the sum of ``expected`` there."""
    shells = slice(1, top_shell + 1)
    denominator = float(np.sum(expected[shells]))
    if top_shell < 1 or denominator <= 0:
        return 0.0
    return float(np.sum(fsc[shells])) / denominator


def _turned(volume: np.ndarray, alignment: Alignment) -> np.ndarray:
    return transform_volume(volume, alignment.rotation, alignment.shift_voxels)


def pair_ratio(first: SubsetAverage, second: SubsetAverage, settings: AlignSettings
               ) -> tuple[float, Alignment]:
    """(same-structure ratio, the alignment of ``second`` onto ``first``) over the shells
    both resolve."""
    alignment = align_prepared(first.prepared(settings), second.prepared(settings), settings)
    top = min(first.resolved_shell, second.resolved_shell)
    fsc = masked_fsc(first.average, _turned(second.average, alignment))
    expected = expected_correlation(first.half_fsc) * expected_correlation(second.half_fsc)
    return agreement_ratio(fsc, expected, top), alignment


def reference_score(structure: SubsetAverage, reference: np.ndarray,
                    settings: AlignSettings, band_limit: int | None = None) -> float:
    """The reference aligned onto the structure: the last shell of their FSC >= 0.5 over the
    last shell of the structure's half-set FSC >= 0.143 (1 = the reference explains the map
    to its own resolution). ``band_limit``: the last shell a band-limited reference holds;
    the structure's resolved shells count up to it only."""
    alignment = align_prepared(structure.prepared(settings), prepare(reference, None, settings),
                               settings)
    fsc = masked_fsc(structure.average, _turned(reference, alignment))
    resolved = structure.resolved_shell
    if band_limit is not None:
        resolved = min(resolved, band_limit)
    return last_shell_above(fsc, 0.5) / max(resolved, 1)


def merge_pair(first: SubsetAverage, second: SubsetAverage, alignment: Alignment
               ) -> SubsetAverage:
    """``second`` turned onto ``first`` and summed half by half with particle-count weights."""
    total = first.particles + second.particles
    halves = np.stack([(first.particles * a + second.particles * _turned(b, alignment)) / total
                       for a, b in zip(first.halves, second.halves, strict=True)])
    coverage = np.maximum(first.coverage, rotate_mask(second.coverage, alignment.rotation))
    return SubsetAverage(halves.astype(np.float32), coverage.astype(np.float32), total,
                         sorted(first.subsets + second.subsets))


@dataclass
class MergeResult:
    """The census of a set of subset averages.

    Attributes:
        structures: the merged averages, largest first.
        threshold: the merge threshold (:data:`FIXED_THRESHOLD` or the settings' fixed one;
            or the calibrated one: midway between the calibrated same-structure level and
            the median pair ratio, with ``pooled`` calibration the level itself; nan:
            nothing could be compared).
        same_level: the calibrated same-structure level.
        calibration_ratios: the ratios of the calibration pairs.
        pair_ratios: (A, A) the ratio of every pair of input averages (nan on the diagonal).
        merges: (first subsets, second subsets, ratio) in the order they merged.
        ratios_below: the ratios of the merges that would follow below the threshold, down
            to the median pair ratio (not made: they say how the count depends on the
            threshold, :meth:`structures_by_threshold`).
        followed_to: the lowest threshold the merges were followed to (the median pair
            ratio, or the threshold when that is lower; nan: nothing merged).
        levels: per input average, its own same-structure level (``per_subset``
            calibration: the ratio of its split, or ``same_level`` where it has none or one
            below ``same_level``: :func:`pair_levels`); empty otherwise.
        normalised: True when ``threshold``, the merge scores and ``ratios_below`` are
            normalised scores (``per_subset``), False when they are same-structure ratios.
        rule: which rule set ``threshold``, and why (:func:`fixed_threshold`).
        calibrated_threshold: the threshold the calibrated rule gives (measured whatever
            rule set ``threshold``; nan: nothing could be compared).
    """

    structures: list[SubsetAverage]
    threshold: float
    same_level: float
    calibration_ratios: np.ndarray
    pair_ratios: np.ndarray
    merges: list[tuple[list[int], list[int], float]]
    ratios_below: list[float] = field(default_factory=list)
    followed_to: float = float("nan")
    levels: list[float] = field(default_factory=list)
    normalised: bool = False
    rule: str = ""
    calibrated_threshold: float = float("nan")

    def structures_by_threshold(self) -> list[tuple[float, int]]:
        """(threshold, structures) steps: with any merge threshold in (the next step's
        threshold, this one], the census ends with this many structures; the first step
        holds every input average (no merge reaches a threshold above the highest ratio).
        Merging stops at the first merge whose ratio is below the threshold, so a step's
        threshold is the running minimum of the merge ratios."""
        count = len(self.structures) + len(self.merges)
        steps = [(float("inf"), count)]
        lowest = float("inf")
        for ratio in [r for _, _, r in self.merges] + list(self.ratios_below):
            count -= 1
            lowest = min(lowest, ratio)
            if lowest < steps[-1][0]:
                steps.append((lowest, count))
            else:
                steps[-1] = (steps[-1][0], count)
        return steps

    def structures_at(self, threshold: float) -> int | None:
        """How many structures a merge threshold would give; None below ``followed_to``
        (the merges were not followed that far)."""
        if not threshold >= self.followed_to:
            return None
        return [count for step, count in self.structures_by_threshold()
                if threshold <= step][-1]


def _map(function: Callable, items: Sequence, workers: int) -> list:
    if workers <= 1 or len(items) < 2:
        return [function(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


def calibration_ratios(pairs: Sequence[tuple[SubsetAverage, SubsetAverage]],
                       settings: CensusSettings) -> np.ndarray:
    """(P,) the ratio of each pair that is one structure by construction (nan for a pair
    that does not resolve :data:`MIN_RESOLVED_SHELLS` shells on both sides)."""
    def ratio(pair: tuple[SubsetAverage, SubsetAverage]) -> float:
        if min(pair[0].resolved_shell, pair[1].resolved_shell) < MIN_RESOLVED_SHELLS:
            return float("nan")
        return pair_ratio(pair[0], pair[1], settings.align)[0]

    return np.array(_map(ratio, list(pairs), settings.workers), dtype=np.float64)


def _level(ratios: np.ndarray, settings: CensusSettings) -> tuple[float, np.ndarray]:
    """(same-structure level, the finite ratios): the ``calibration_quantile`` of the
    calibration ratios (nan when none is finite)."""
    usable = ratios[np.isfinite(ratios)]
    if usable.size == 0:  # nothing reproducible enough to compare: nothing merges
        return float("nan"), usable
    return float(np.quantile(usable, settings.calibration_quantile)), usable


def pair_levels(own_ratios: np.ndarray, same_level: float) -> np.ndarray:
    """(A,) each average's own same-structure level: the ratio of its own split where it
    has one at or above the common ``same_level``, else ``same_level``. A split below the
    common level is taken for a failed refinement, as the calibration's own failures are:
    trusted, a level near the median pair ratio makes every pair of that subset look the
    same (normalised scores of 17 on fold 4, one structure of 74 subsets;
    docs/benchmarks.md, issue 20)."""
    own = np.asarray(own_ratios, dtype=np.float64)
    return np.where(np.isfinite(own) & (own >= same_level), own, same_level)


def normalised_score(ratio: float, level: float, median_ratio: float) -> float:
    """A pair's ratio on the scale 0 = the median pair ratio, 1 = ``level`` (the lower of
    the pair's own levels); the pair merges at :data:`NORMALISED_THRESHOLD`."""
    return (ratio - median_ratio) / (level - median_ratio)


def merge_threshold(same_level: float, pair_ratios: np.ndarray) -> float:
    """Midway between the same-structure level and the median of all pair ratios (the
    different-structure level); nan without a same-structure level or pairs."""
    finite = pair_ratios[np.isfinite(pair_ratios)]
    if not np.isfinite(same_level) or finite.size == 0:
        return float("nan")
    return 0.5 * (same_level + float(np.median(finite)))


def fixed_threshold(settings: CensusSettings, averages: Sequence[SubsetAverage]
                    ) -> tuple[float | None, str]:
    """(the fixed merge threshold, why) from ``settings.threshold`` and the averages to be
    compared; (None, why) where the calibrated threshold applies (module docstring)."""
    if not isinstance(settings.threshold, str):
        return float(settings.threshold), "fixed"
    if settings.threshold == "calibrated" or settings.calibration == "per_subset":
        return None, ""
    members = float(np.median([a.particles for a in averages])) if averages else 0.0
    if members >= FIXED_THRESHOLD_MIN_MEMBERS:
        return FIXED_THRESHOLD, (f"auto: fixed, the averages hold a median of {members:g} "
                                 f"members, >= {FIXED_THRESHOLD_MIN_MEMBERS}")
    return None, (f"auto: the averages hold a median of {members:g} members, fewer than the "
                  f"{FIXED_THRESHOLD_MIN_MEMBERS} the fixed {FIXED_THRESHOLD} was validated on")


def merge_averages(averages: Sequence[SubsetAverage],
                   calibration_pairs: Sequence[tuple[SubsetAverage, SubsetAverage]],
                   settings: CensusSettings,
                   progress: Callable[[str], None] | None = None,
                   owners: Sequence[int] | None = None) -> MergeResult:
    """Calibrate on ``calibration_pairs`` (two independent averages of one subset each),
    compare every pair of ``averages`` and merge agglomeratively (module docstring).
    Averages that resolve fewer than :data:`MIN_RESOLVED_SHELLS` shells stay single.

    ``owners`` (``per_subset`` calibration): the index in ``averages`` of the subset each
    calibration pair was split from, best-resolved first; the common level comes from the
    first ``calibration_subsets`` of them."""
    per_subset = settings.calibration == "per_subset"
    if per_subset and (owners is None or len(owners) != len(calibration_pairs)):
        raise TomosiftError("per_subset calibration needs the subset of every calibration "
                            "pair (owners)")
    all_ratios = calibration_ratios(calibration_pairs, settings)
    common = all_ratios[: settings.calibration_subsets] if per_subset else all_ratios
    same_level, calibration_used = _level(common, settings)
    n = len(averages)
    nodes: dict[int, SubsetAverage] = dict(enumerate(averages))
    comparable = {i for i, a in nodes.items() if a.resolved_shell >= MIN_RESOLVED_SHELLS
                  and np.isfinite(same_level)}
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)
             if i in comparable and j in comparable]
    if progress:
        progress(f"same-structure level {same_level:.3f} from {len(calibration_used)} "
                 f"calibration pairs; {len(pairs)} pairs to align")
    found = _map(lambda p: pair_ratio(nodes[p[0]], nodes[p[1]], settings.align), pairs,
                 settings.workers)
    scores = {pair: result for pair, result in zip(pairs, found, strict=True)}
    pair_ratios = np.full((n, n), np.nan)
    for (i, j), (ratio, _) in scores.items():
        pair_ratios[i, j] = pair_ratios[j, i] = ratio
    median = float(np.nanmedian(pair_ratios)) if pairs else float("nan")
    levels: dict[int, float] | None = None
    if per_subset:
        own = np.full(n, np.nan)
        for owner, ratio in zip(owners, all_ratios, strict=True):
            own[owner] = ratio
        level_of = pair_levels(own, same_level)
        levels = {i: float(level_of[i]) for i in range(n)}
        usable = np.isfinite(same_level) and np.isfinite(median) and same_level > median
        calibrated = NORMALISED_THRESHOLD if usable and pairs else float("nan")
        with_own = int(np.sum(level_of != same_level))
        calibrated_rule = (f"normalised, each pair held to its subsets' own levels ({with_own} "
                           f"of {n} subsets with their own)")
    elif settings.calibration == "pooled":
        calibrated = same_level if pairs else float("nan")
        calibrated_rule = (f"the same-structure level: {settings.calibration_quantile:g} "
                           f"quantile of every subset's split")
    else:
        calibrated = merge_threshold(same_level, pair_ratios[np.triu_indices(n, 1)])
        calibrated_rule = "midway to the median pair ratio"
    fixed, why = fixed_threshold(settings, [nodes[i] for i in sorted(comparable)])
    if fixed is not None and pairs:
        threshold, rule = fixed, why
    else:
        threshold, rule = calibrated, f"calibrated: {calibrated_rule}" + (
            f"; {why}" if why else "")
    if progress:
        progress(f"merge threshold {threshold:.3f} ({rule})")
    input_levels = [levels[i] for i in range(n)] if levels is not None else []
    merges, nodes, scores = _agglomerate(nodes, scores, comparable, threshold, settings,
                                         progress, levels, median)
    # on past the threshold, down to the different-structure level, on copies: how the count
    # would change with the threshold (how sure it is)
    floor = 0.0 if per_subset else median
    below, _, _ = (_agglomerate(dict(nodes), dict(scores), set(comparable), floor, settings,
                                None, dict(levels) if levels is not None else None, median)
                   if np.isfinite(threshold) and floor < threshold else ([], None, None))
    structures = sorted(nodes.values(), key=lambda a: (-a.particles, a.subsets[0]))
    return MergeResult(structures, threshold, same_level, calibration_used, pair_ratios,
                       merges, [ratio for _, _, ratio in below],
                       min(floor, threshold) if np.isfinite(floor) else threshold,
                       input_levels, per_subset, rule, calibrated)


def _agglomerate(nodes: dict[int, SubsetAverage],
                 scores: dict[tuple[int, int], tuple[float, Alignment]],
                 comparable: set[int], threshold: float, settings: CensusSettings,
                 progress: Callable[[str], None] | None = None,
                 levels: dict[int, float] | None = None, median: float = float("nan")
                 ) -> tuple[list[tuple[list[int], list[int], float]], dict, dict]:
    """Merge the pair with the highest score while it reaches ``threshold`` (module
    docstring); ``nodes``, ``scores``, ``comparable`` and ``levels`` are updated in place.
    The score is the pair ratio, or with ``levels`` its :func:`normalised_score` against the
    lower of the pair's levels (a merged structure keeps the lower of its two). Returns
    (the merges with their scores, the nodes, the scores) at the stop."""
    def score(pair: tuple[int, int], ratio: float) -> float:
        if levels is None:
            return ratio
        return normalised_score(ratio, min(levels[pair[0]], levels[pair[1]]), median)

    merges = []
    next_id = max(set(nodes) | comparable, default=-1) + 1  # ids never reused
    while scores and np.isfinite(threshold):
        (i, j), (ratio, alignment) = max(scores.items(),
                                         key=lambda item: score(item[0], item[1][0]))
        best = score((i, j), ratio)
        if best < threshold:
            break
        merged = merge_pair(nodes[i], nodes[j], alignment)
        merges.append((nodes[i].subsets, nodes[j].subsets, best))
        del nodes[i], nodes[j]
        if levels is not None:
            levels[next_id] = min(levels.pop(i), levels.pop(j))
        scores = {p: r for p, r in scores.items() if i not in p and j not in p}
        others = sorted(k for k in nodes if k in comparable)
        if merged.resolved_shell >= MIN_RESOLVED_SHELLS:
            comparable.add(next_id)
            found = _map(lambda k, new=merged: pair_ratio(nodes[k], new, settings.align),
                         others, settings.workers)
            scores.update({(k, next_id): r for k, r in zip(others, found, strict=True)})
        nodes[next_id] = merged
        next_id += 1
        if progress:
            progress(f"merged subsets {merges[-1][0]} + {merges[-1][1]} "
                     f"({'score' if levels is not None else 'ratio'} {best:.3f}); "
                     f"{len(nodes)} structures")
    return merges, nodes, scores


def reference_scores(structures: Sequence[SubsetAverage], references: dict[str, np.ndarray],
                     settings: CensusSettings, band_limits: dict[str, int] | None = None
                     ) -> np.ndarray:
    """(structures, references) the :func:`reference_score` of every structure with every
    reference (in the order of ``references``); nan for a structure that resolves too
    little to compare."""
    names = list(references)

    def row(structure: SubsetAverage) -> list[float]:
        if structure.resolved_shell < MIN_RESOLVED_SHELLS:
            return [float("nan")] * len(names)
        return [reference_score(structure, references[name], settings.align,
                                (band_limits or {}).get(name))
                for name in names]

    rows = _map(row, list(structures), settings.workers)
    return np.array(rows, dtype=np.float64).reshape(len(structures), len(names))


def nearest_of(scores: np.ndarray, names: Sequence[str]) -> list[tuple[str, float]]:
    """Per row of ``scores`` (:func:`reference_scores`), the best reference's name and score;
    ("", nan) for a row without a finite score."""
    nearest = []
    for row in scores:
        if not np.any(np.isfinite(row)):
            nearest.append(("", float("nan")))
            continue
        best = int(np.nanargmax(row))
        nearest.append((names[best], float(row[best])))
    return nearest


def nearest_references(structures: Sequence[SubsetAverage], references: dict[str, np.ndarray],
                       settings: CensusSettings, band_limits: dict[str, int] | None = None
                       ) -> list[tuple[str, float]]:
    """Per structure (the reference with the highest :func:`reference_score`, that score);
    ("", nan) without references or for a structure that resolves too little to compare.
    ``band_limits``: the last shell each band-limited reference holds (by name)."""
    if not references:
        return [("", float("nan"))] * len(structures)
    return nearest_of(reference_scores(structures, references, settings, band_limits),
                      list(references))


def is_novel(reference_score_value: float, settings: CensusSettings) -> bool:
    """True when the nearest reference does not explain the structure (nan: no reference)."""
    return not reference_score_value >= 1.0 / settings.reference_resolution_factor


def has_density(structure: SubsetAverage) -> bool:
    """Whether a structure's half-maps agree (FSC >= 0.143) on at least
    :data:`MIN_RESOLVED_SHELLS` shells: an average without is noise or a featureless blob
    (empty boxes, for one), which is neither known nor novel."""
    return structure.resolved_shell >= MIN_RESOLVED_SHELLS
