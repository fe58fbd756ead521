"""``tomosift census``: how many distinct structures a subdivision holds, which are known and
which are new (the comparison and merging: :mod:`tomosift.discovery.census`).

Reads a subdivision folder (``clusters.tsv``, ``subdivide.json`` naming its dataset,
``subsets/all.star``) and writes to ``out_dir``:

- ``subsets/subset_<sss>_half1.mrc``, ``_half2.mrc``, ``_coverage.npy``, ``.json``: each
  subset's half-averages, and ``subset_<sss>_a_*``, ``_b_*`` the two independent averages of
  each calibration subset (reused by a rerun with the same members, dataset, iterations and
  seed, when newer than ``clusters.tsv``);
- ``census.tsv``: one row per structure (``structure``, ``subsets``, ``particles``,
  ``resolution_nm`` (half-set FSC 0.143), ``nearest_reference``, ``reference_score``,
  ``novel``, ``resolved``: whether its half-maps agree on at least 2 Fourier shells; a
  structure without resolved density, such as an average of empty boxes, is never novel);
- ``members.tsv``: one row per particle of the subdivision (``index``, ``subset``,
  ``structure``; 0 for the members of subsets too small to average);
- ``unresolved.tsv``: the subsets too small to average (``subset``, ``members``);
- ``structures/structure_<nnn>.mrc`` with ``_half1``/``_half2`` and ``.star`` (the members'
  rows of ``subsets/all.star``, ``rlnClassNumber`` = structure);
- ``reference_scores.tsv`` (with references): the reference score of every structure
  (rows) with every reference (columns), the nearest being ``census.tsv``'s;
- ``census.png`` (central slices, novel structures marked), ``similarity.png`` and
  ``similarity.tsv`` (the same-structure ratio of every pair of averaged subsets),
  ``census.json`` (calibration and merges);
- ``structures_by_threshold.tsv`` and ``.png``: how many structures each merge threshold
  would give (the merges followed on past the threshold, on copies, down to the median pair
  ratio): how sure the count is. With ``per_subset`` calibration the thresholds are
  normalised scores (0 = the median pair ratio, 1 = the pair's own level; merged at 0.5).

References are MRC maps at the data's voxel size, or ``training``: the class averages stored
in the model file (:mod:`tomosift.classify.class_averages`; the model is ``model_path``, else
the one the subdivision's feature files name), or a model file given as a reference. Each
20³ average is brought to the data's voxel size by zero-padding its spectrum and to its box
by centring; it holds nothing beyond its own Nyquist shell, so a structure's reference score
against it counts the structure's resolved shells only up to that shell (the band limit).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tomosift.discovery.census import (
    CensusSettings,
    MergeResult,
    SubsetAverage,
    has_density,
    is_novel,
    merge_averages,
    nearest_of,
    reference_scores,
)
from tomosift.errors import TomosiftError

REFERENCE_SUFFIXES = (".mrc", ".map", ".mrcs")
#: The reference that names the class averages of the model the subdivision used.
TRAINING = "training"
#: Model files given as references.
MODEL_SUFFIXES = (".pt", ".pth")


@dataclass
class References:
    """Reference maps on the data's grid (name -> (box,)*3 map), the band limit (the last
    Fourier shell they hold, in the data's box) of those that have one, and where the
    model-file references came from."""

    maps: dict[str, np.ndarray]
    band_limits: dict[str, int]
    models: list[str]


@dataclass
class CensusResult:
    """What :func:`census` found: the table rows, the merge result and the output files."""

    table: object  # pandas.DataFrame, the rows of census.tsv
    merged: MergeResult
    unresolved: list[int]
    files: dict


def _data_path(folder: Path, data_path: str | os.PathLike | None) -> Path:
    if data_path is not None:
        return Path(data_path)
    made_from = folder / "subdivide.json"
    candidates = []
    if made_from.is_file():
        named = Path(json.loads(made_from.read_text())["data"])
        candidates += [named, folder / named]
    candidates.append(folder / "particles.h5")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TomosiftError(f"{folder}: its dataset was not found (subdivide.json names "
                        f"{candidates[0]}); give it with --data")


def read_references(paths: list[str | os.PathLike], voxel_size_nm: float, box: int
                    ) -> dict[str, np.ndarray]:
    """Reference maps (files or folders of MRC maps), name (file stem) -> (box,)*3 map, each
    centred in or cut to the data's box; a voxel size other than the data's is refused."""
    from tomosift.discovery.particles import same_voxel
    from tomosift.io import listed_files, read_mrc

    files = listed_files(paths, lambda p: p.suffix in REFERENCE_SUFFIXES,
                         "reference maps (.mrc, .map)")
    references = {}
    for path in files:
        volume, voxel = read_mrc(path)
        if not same_voxel(voxel, voxel_size_nm):
            raise TomosiftError(f"{path}: voxel size {voxel:.4g} nm differs from the "
                                f"subdivided data's {voxel_size_nm:.4g} nm")
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise TomosiftError(f"{path}: not a cubic map (shape {volume.shape})")
        references[path.stem] = _fit_box(np.asarray(volume, dtype=np.float32), box)
    return references


def subdivision_model(folder: str | os.PathLike) -> Path:
    """The model file the subdivision's features were computed with: the ``model`` its
    feature files (``features.h5``, ``features/*.h5``) record, checked against their
    ``model_sha256``; refused in one line when not recorded, gone or changed."""
    import h5py

    folder = Path(folder)
    recorded = set()
    for path in [folder / "features.h5", *sorted((folder / "features").glob("*.h5"))]:
        if path.is_file():
            with h5py.File(path, "r") as h5:
                if "model" in h5.attrs:
                    recorded.add((str(h5.attrs["model"]), str(h5.attrs.get("model_sha256"))))
    if len(recorded) != 1:
        why = "no feature file records it" if not recorded else "its feature files name several"
        raise TomosiftError(f"{folder}: --references {TRAINING} needs the subdivision's model, "
                            f"and {why}; give it with --model")
    named, sha = recorded.pop()
    model = Path(named)
    if not model.is_file():
        raise TomosiftError(f"{model}: the subdivision's model file is gone; give it with "
                            f"--model")
    from tomosift.subdivide.shards import file_sha256

    if file_sha256(model) != sha:
        raise TomosiftError(f"{model}: changed since the subdivision's features were "
                            f"computed; give the model with --model")
    return model


def training_references(model_path: str | os.PathLike, voxel_size_nm: float, box: int
                        ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """A model file's class averages on the data's grid (name -> (box,)*3 map: its spectrum
    zero-padded to the data's voxel size, then centred in or cut to ``box``) and each one's
    band limit, the last shell of the data's box it holds; a model without averages is
    refused in one line naming the file."""
    from tomosift.classify.class_averages import fourier_resize, stored_averages
    from tomosift.classify.modelfile import load_model

    averages, reference_voxel = stored_averages(load_model(model_path), model_path)
    if not averages:
        raise TomosiftError(f"{model_path}: the model file holds no class average but the "
                            f"empty class's")
    size = next(iter(averages.values())).shape[0]
    exact = size * reference_voxel / voxel_size_nm
    resized = round(exact)
    if resized < 2 or abs(resized - exact) > 1e-3 * exact:
        raise TomosiftError(f"{model_path}: its class averages ({size}³ at "
                            f"{reference_voxel:.4g} nm) cannot be resampled to the data's "
                            f"{voxel_size_nm:.4g} nm voxels (a {exact:.3f}-voxel box)")
    band = int(np.floor(min(size, resized) / 2 * box / resized + 1e-6))
    maps = {name: _fit_box(fourier_resize(volume, resized), box)
            for name, volume in averages.items()}
    return maps, dict.fromkeys(maps, band)


def resolve_references(entries: list[str | os.PathLike], voxel_size_nm: float, box: int,
                       folder: str | os.PathLike,
                       model_path: str | os.PathLike | None = None) -> References:
    """The references of a census (module docstring): MRC files and folders, ``training``
    (the class averages of ``model_path``, else of the subdivision's model) and model
    files."""
    maps, band_limits, models, files = {}, {}, [], []
    for entry in entries:
        if str(entry) == TRAINING:
            model = Path(model_path) if model_path is not None else subdivision_model(folder)
        elif Path(entry).suffix in MODEL_SUFFIXES and Path(entry).is_file():
            model = Path(entry)
        else:
            files.append(entry)
            continue
        found, limits = training_references(model, voxel_size_nm, box)
        maps.update(found)
        band_limits.update(limits)
        models.append(str(model))
    for name, volume in read_references(files, voxel_size_nm, box).items():
        maps[name] = volume
        band_limits.pop(name, None)
    return References(maps, band_limits, models)


def _fit_box(volume: np.ndarray, box: int) -> np.ndarray:
    """Centre-crop or zero-pad a cube to ``box`` voxels (centre n // 2 kept on box // 2)."""
    n = volume.shape[0]
    out = np.zeros((box,) * 3, dtype=np.float32)
    src = slice(max(0, n // 2 - box // 2), max(0, n // 2 - box // 2) + min(n, box))
    dst = slice(max(0, box // 2 - n // 2), max(0, box // 2 - n // 2) + min(n, box))
    out[dst, dst, dst] = volume[src, src, src]
    return out


def _subset_average(data: Path, out: Path, number: int, members: np.ndarray,
                    settings: CensusSettings, newer_than: float, progress: bool,
                    part: str = "") -> tuple[SubsetAverage, float]:
    """The subset's half-averages (of ``members``; ``part`` names a calibration group of
    it), computed or reused from ``out/subsets``."""
    import hashlib

    from tomosift.io import atomic_path, read_mrc, write_mrc, write_text
    from tomosift.subdivide.averages import average_members

    stem = out / "subsets" / f"subset_{number:03d}{part}"
    halves_paths = [stem.with_name(f"{stem.name}_half{h}.mrc") for h in (1, 2)]
    coverage_path = stem.with_name(f"{stem.name}_coverage.npy")
    made_from_path = stem.with_name(f"{stem.name}.json")
    made_from = json.dumps({"data": str(data), "iterations": settings.iterations,
                            "seed": settings.seed,
                            "members": hashlib.sha256(np.asarray(members, dtype=np.int64)
                                                      .tobytes()).hexdigest()})
    if (made_from_path.is_file() and made_from_path.read_text() == made_from
            and all(p.is_file() and p.stat().st_mtime >= newer_than
                    for p in (*halves_paths, coverage_path))):
        halves = [read_mrc(p) for p in halves_paths]
        voxel = halves[0][1]
        return SubsetAverage(np.stack([h[0] for h in halves]).astype(np.float32),
                             np.load(coverage_path), len(members), [number]), voxel
    result, voxel = average_members(data, members, settings.iterations, settings.seed,
                                    settings.workers, progress)
    for path, half in zip(halves_paths, result.half_maps[0], strict=True):
        write_mrc(path, half, voxel)
    coverage = result.observed(0)
    with atomic_path(coverage_path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, coverage)
    write_text(made_from_path, made_from)  # last: the others are complete
    return SubsetAverage(result.half_maps[0].astype(np.float32), coverage, len(members),
                         [number]), voxel


def census(subdivision_dir: str | os.PathLike, out_dir: str | os.PathLike,
           references: list[str | os.PathLike] | None = None,
           settings: CensusSettings | None = None,
           data_path: str | os.PathLike | None = None, progress: bool = True,
           model_path: str | os.PathLike | None = None) -> CensusResult:
    """Average every subset large enough, merge the subsets of one structure and compare
    the structures with the references (:func:`resolve_references`; ``model_path``: the
    model of ``training``); writes the files of the module docstring."""
    import pandas as pd

    from tomosift.discovery.fsc import compute_fsc, soft_sphere_mask
    from tomosift.subdivide.averages import seeded_members
    from tomosift.subdivide.shards import data_geometry

    settings = settings or CensusSettings()
    folder, out = Path(subdivision_dir), Path(out_dir)
    clusters_tsv = folder / "clusters.tsv"
    if not clusters_tsv.is_file():
        raise TomosiftError(f"{folder}: no clusters.tsv: not a subdivision folder (run "
                            f"tomosift subdivide first)")
    table = pd.read_csv(clusters_tsv, sep="\t")
    indices = table["index"].to_numpy(dtype=np.int64)
    subsets = table["cluster"].to_numpy(dtype=np.int64)
    numbers, sizes = np.unique(subsets, return_counts=True)
    eligible = [int(n) for n, s in zip(numbers, sizes, strict=True) if s >= settings.min_members]
    unresolved = [int(n) for n in numbers if int(n) not in eligible]
    if not eligible:
        raise TomosiftError(f"{clusters_tsv}: no subset has {settings.min_members} members to "
                            f"average (the largest has {sizes.max()}); lower the minimum "
                            f"(--min-members, subdivide.census.min_members)")
    data = _data_path(folder, data_path)
    geometry = data_geometry(data)
    voxel = geometry["voxel_size_nm"]
    # references checked before the long averaging, when the dataset names its voxel size
    reference_set = (resolve_references(list(references or []), voxel, geometry["box"],
                                        folder, model_path)
                     if voxel is not None else None)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else None
    averages = []
    for count, number in enumerate(eligible, 1):
        members = seeded_members(indices[subsets == number], settings.max_members,
                                 settings.seed, number)
        if say:
            say(f"averaging subset {number} ({count}/{len(eligible)}, {len(members)} members)")
        average, voxel = _subset_average(data, out, number, members, settings,
                                         clusters_tsv.stat().st_mtime, False)
        averages.append(average)
    calibration_pairs, owners = [], []
    for number in _calibration_subsets(eligible, averages, settings):
        owners.append(eligible.index(number))
        members = seeded_members(indices[subsets == number], settings.max_members,
                                 settings.seed, number)
        groups = np.array_split(np.random.default_rng([settings.seed, number, 2])
                                .permutation(members), 2)
        if say:
            say(f"calibration: subset {number} as two independent averages of "
                f"{len(groups[0])} and {len(groups[1])} members")
        calibration_pairs.append(tuple(
            _subset_average(data, out, number, np.sort(group), settings,
                            clusters_tsv.stat().st_mtime, False, part)[0]
            for group, part in zip(groups, ("_a", "_b"), strict=True)))
    box = averages[0].halves.shape[-1]
    if reference_set is None:
        reference_set = resolve_references(list(references or []), voxel, box, folder,
                                           model_path)
    reference_maps = reference_set.maps
    merged = merge_averages(averages, calibration_pairs, settings, progress=say,
                            owners=owners)
    # band-limited references (class averages): the structure's resolved shells are counted
    # up to their band limit only (tomosift.discovery.census.reference_score)
    scores = reference_scores(merged.structures, reference_maps, settings,
                              reference_set.band_limits)
    nearest = (nearest_of(scores, list(reference_maps)) if reference_maps
               else [("", float("nan"))] * len(merged.structures))
    size_of = dict(zip(numbers.tolist(), sizes.tolist(), strict=True))
    rows, structure_of = [], {}
    for number, (structure, (name, score)) in enumerate(
            zip(merged.structures, nearest, strict=True), 1):
        for subset in structure.subsets:
            structure_of[subset] = number
        resolution = compute_fsc(structure.halves[0], structure.halves[1], voxel,
                                 soft_sphere_mask(box)).resolution_0143_nm
        rows.append({"structure": number, "subsets": ",".join(map(str, structure.subsets)),
                     "particles": sum(size_of[s] for s in structure.subsets),
                     "resolution_nm": round(resolution, 3),
                     "nearest_reference": name,
                     "reference_score": round(score, 3) if np.isfinite(score) else np.nan,
                     "novel": has_density(structure)
                     and (is_novel(score, settings) if reference_maps else True),
                     "resolved": has_density(structure)})
    frame = pd.DataFrame(rows)
    files = _write_outputs(out, folder, frame, merged, structure_of, unresolved, indices,
                           subsets, size_of, voxel, settings, eligible, reference_set, scores)
    return CensusResult(frame, merged, unresolved, files)


def _calibration_subsets(eligible: list[int], averages: list[SubsetAverage],
                         settings: CensusSettings) -> list[int]:
    """The best-resolved subsets (most shells at half-set FSC >= 0.143, then the largest)
    with at least 2 x ``min_members`` averaged members (at most ``calibration_subsets``), or
    with at least 4 when none has that many.

    Best-resolved, not largest: split into two, a subset that mixes structures gives two
    averages that disagree (each refinement follows its own part of the mixture), which says
    nothing about how two averages of one structure agree; and a mixture resolves less than
    one structure does. The largest subsets of a subdivision are often its mixtures
    (docs/benchmarks.md, issue 20).

    With ``per_subset`` or ``pooled`` calibration every subset with 2 x ``min_members`` is
    split (ranked the same way: with ``per_subset`` the first ``calibration_subsets`` set the
    common level)."""
    ranked = sorted(zip(eligible, averages, strict=True),
                    key=lambda item: (-item[1].resolved_shell, -item[1].particles, item[0]))
    for least in (2 * settings.min_members, 4):
        chosen = [n for n, a in ranked if a.particles >= least]
        if chosen:
            if settings.calibration in ("per_subset", "pooled"):
                return chosen
            return chosen[: settings.calibration_subsets]
    return []


def summary_lines(frame, unresolved: list[int], merged: MergeResult) -> list[str]:
    """A few lines for the terminal and the log."""
    threshold = merged.threshold
    novel = int(frame["novel"].sum())
    blank = int((~frame["resolved"]).sum())
    averaged = sum(len(s.split(",")) for s in frame["subsets"])
    lines = [f"{len(frame)} structures ({novel} novel, {blank} without resolved density) in "
             f"{averaged} subsets; "
             f"{len(unresolved)} subsets too small to average; merge threshold "
             f"{threshold:.3f}" + (" (normalised score)" if merged.normalised else "")]
    if not np.isfinite(threshold):
        lines.append("warning: no subset average resolves 2 Fourier shells at half-set FSC "
                     "0.143: nothing could be compared, each subset is its own structure")
        return lines
    lines.append(f"threshold rule: {merged.rule}")
    calibrated = merged.calibrated_threshold
    if np.isfinite(calibrated) and calibrated != threshold:
        count = merged.structures_at(calibrated)
        lines.append(f"the calibrated threshold would be {calibrated:.3f}: " + (
            f"{count} structures" if count is not None else "below the median pair ratio"))
    spread = [(t, merged.structures_at(t)) for t in (threshold + 0.1, threshold - 0.1)]
    lines.append("with the threshold 0.1 higher / lower: " + " / ".join(
        f"{count} structures" if count is not None else "below the median pair ratio"
        for _, count in spread) + " (structures_by_threshold.tsv)")
    return lines


def _write_outputs(out: Path, folder: Path, frame, merged: MergeResult, structure_of: dict,
                   unresolved: list[int], indices: np.ndarray, subsets: np.ndarray,
                   size_of: dict, voxel: float,
                   settings: CensusSettings, order: list[int],
                   references: References | None = None,
                   scores: np.ndarray | None = None) -> dict:
    import pandas as pd

    from tomosift.io import write_mrc, write_star, write_text

    files = {"census": out / "census.tsv", "members": out / "members.tsv",
             "unresolved": out / "unresolved.tsv", "gallery": out / "census.png",
             "similarity": out / "similarity.png", "made_from": out / "census.json",
             "by_threshold": out / "structures_by_threshold.tsv",
             "by_threshold_plot": out / "structures_by_threshold.png",
             "structures": []}
    write_text(files["census"], frame.to_csv(sep="\t", index=False, na_rep="nan"))
    members = pd.DataFrame({"index": indices, "subset": subsets,
                            "structure": [structure_of.get(int(s), 0) for s in subsets]})
    write_text(files["members"], members.to_csv(sep="\t", index=False))
    write_text(files["unresolved"], pd.DataFrame(
        {"subset": unresolved, "members": [size_of[s] for s in unresolved]},
        dtype=np.int64).to_csv(sep="\t", index=False))
    blocks = _read_all_star(folder / "subsets" / "all.star", len(subsets))
    for number, structure in enumerate(merged.structures, 1):
        stem = out / "structures" / f"structure_{number:03d}"
        write_mrc(stem.with_suffix(".mrc"), structure.average, voxel)
        for h, half in enumerate(structure.halves, 1):
            write_mrc(stem.with_name(f"{stem.name}_half{h}.mrc"), half, voxel)
        files["structures"].append(stem.with_suffix(".mrc"))
        if blocks is not None:
            rows = blocks["particles"][np.isin(subsets, structure.subsets)].copy()
            rows["rlnClassNumber"] = number
            write_star(stem.with_suffix(".star"),
                       {**blocks, "particles": rows.reset_index(drop=True)})
    files["similarity_table"] = out / "similarity.tsv"
    matrix = pd.DataFrame(merged.pair_ratios, index=pd.Index(order, name="subset"),
                          columns=[str(s) for s in order])
    write_text(files["similarity_table"], matrix.round(4).to_csv(sep="\t", na_rep="nan"))
    if references is not None and references.maps and scores is not None:
        files["reference_scores"] = out / "reference_scores.tsv"
        write_text(files["reference_scores"], pd.DataFrame(
            scores, index=pd.Index(frame["structure"], name="structure"),
            columns=list(references.maps)).round(4).to_csv(sep="\t", na_rep="nan"))
    steps = merged.structures_by_threshold()
    write_text(files["by_threshold"], pd.DataFrame(
        {"threshold": [round(t, 4) for t, _ in steps], "structures": [c for _, c in steps]}
    ).to_csv(sep="\t", index=False))
    _plot_gallery(files["gallery"], frame, merged.structures, voxel)
    _plot_by_threshold(files["by_threshold_plot"], merged)
    _plot_similarity(files["similarity"], merged, structure_of, order)
    made_from = {"settings": {k: v for k, v in asdict(settings).items() if k != "align"},
                 "threshold": merged.threshold,
                 "rule": merged.rule,
                 "calibrated_threshold": merged.calibrated_threshold,
                 "same_level": merged.same_level,
                 "calibration_ratios": [round(float(r), 4) for r in merged.calibration_ratios],
                 "merges": [{"first": a, "second": b, "ratio": round(r, 4)}
                            for a, b, r in merged.merges],
                 "ratios_below_threshold": [round(r, 4) for r in merged.ratios_below],
                 "followed_to": merged.followed_to,
                 "scale": "normalised score" if merged.normalised else "same-structure ratio"}
    if merged.levels:
        made_from["subset_levels"] = {str(number): round(level, 4)
                                      for number, level in zip(order, merged.levels,
                                                               strict=True)}
    if references is not None and references.models:
        made_from["class_average_references"] = {"models": references.models,
                                                 "band_limits": references.band_limits}
    write_text(files["made_from"], json.dumps(made_from, indent=1) + "\n")
    return files


def _read_all_star(path: Path, n_rows: int) -> dict | None:
    """The blocks of the subdivision's ``subsets/all.star`` (its particle rows in the order
    of ``clusters.tsv``), or None without it."""
    if not path.is_file():
        return None
    import starfile

    blocks = starfile.read(path, always_dict=True)
    if "particles" not in blocks or len(blocks["particles"]) != n_rows:
        raise TomosiftError(f"{path}: does not list the {n_rows} particles of clusters.tsv "
                            f"beside it")
    return blocks


def _plot_gallery(path: Path, frame, structures: list[SubsetAverage], voxel: float) -> None:
    from tomosift.plots import density_montage

    names = [f"S{row.structure}: {row.particles} particles\n{row.resolution_nm:.1f} nm, "
             + ("NOVEL" if row.novel else f"~ {row.nearest_reference}" if row.resolved
                else "no density")
             for row in frame.itertuples()]
    density_montage(names, [s.average for s in structures], voxel, path)


def _plot_similarity(path: Path, merged: MergeResult, structure_of: dict, order: list[int]
                     ) -> None:
    import matplotlib.pyplot as plt

    from tomosift.plots import save_figure

    ranks = sorted(range(len(order)), key=lambda i: (structure_of[order[i]], order[i]))
    matrix = merged.pair_ratios[np.ix_(ranks, ranks)]
    size = max(4.0, 0.12 * len(order) + 2.0)
    figure, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.1, interpolation="nearest")
    labels = [f"{order[i]} (S{structure_of[order[i]]})" for i in ranks]
    if len(labels) <= 40:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    figure.colorbar(image, ax=ax, label="same-structure ratio")
    rule = ("each pair's own level" if merged.normalised
            else f">= {merged.threshold:.2f}")
    ax.set_title(f"subset pairs, grouped by structure (same at {rule})", fontsize=9)
    save_figure(figure, path)


def _plot_by_threshold(path: Path, merged: MergeResult) -> None:
    """Structures against the merge threshold (followed down to the median pair ratio),
    the threshold used, the calibrated one where another rule set it, and the calibration
    pairs' ratios as ticks."""
    import matplotlib.pyplot as plt

    from tomosift.plots import save_figure

    steps = merged.structures_by_threshold()
    figure, ax = plt.subplots(figsize=(5.5, 3.5), layout="constrained")
    finite = [(t, c) for t, c in steps if np.isfinite(t)]
    top = max([1.05] + [t + 0.02 for t, _ in finite])
    thresholds = [top] + [t for t, _ in finite]
    counts = [steps[0][1]] + [c for _, c in finite]
    if np.isfinite(merged.followed_to):
        thresholds.append(merged.followed_to)
        counts.append(counts[-1])
    ax.step(thresholds, counts, where="post", color="black")
    if np.isfinite(merged.threshold):
        ax.axvline(merged.threshold, color="tab:red", label=f"threshold {merged.threshold:.2f}")
    calibrated = merged.calibrated_threshold
    if np.isfinite(calibrated) and calibrated != merged.threshold:
        ax.axvline(calibrated, color="tab:gray", linestyle="--",
                   label=f"calibrated threshold {calibrated:.2f}")
    if merged.calibration_ratios.size and not merged.normalised:
        ax.plot(merged.calibration_ratios, np.full(merged.calibration_ratios.size, 0.0), "|",
                color="tab:blue", markersize=12, label="calibration pairs (one structure)")
    ax.set_xlabel("merge threshold (normalised score: 0 = median pair, 1 = the pair's own "
                  "level)" if merged.normalised else "merge threshold (same-structure ratio)")
    ax.set_ylabel("structures")
    ax.set_ylim(bottom=0)
    ax.invert_xaxis()
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("how the count depends on the threshold", fontsize=9)
    save_figure(figure, path)
