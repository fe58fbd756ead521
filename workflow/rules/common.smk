# Config validation and the small functions that turn the config into targets and parameters.

import math
import re
from argparse import Namespace
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tomosift.config import load_yaml, validate_config
from tomosift.datasets import grid_point_tag, grid_points, imaging_params as config_imaging_params
from tomosift.datasets import plan_from_params, simulation_params as config_simulation_params
from tomosift.errors import TomosiftError
from tomosift.recipe import method_architecture, method_settings
from tomosift.simulate.tomography import SimulationSettings
from tomosift.structures import (
    find_local_structure,
    parse_structure_entries,
    pdb_mirror_dir,
    search_dirs,
)

CONFIG_SOURCE = " + ".join(
    str(path) for path in (workflow.config_settings.configfiles or workflow.configfiles)
) or "config"

try:
    validate_config(
        config,
        load_yaml(workflow.source_path("../schemas/config.schema.yaml")),
        source=CONFIG_SOURCE,
    )
    STRUCTURES = parse_structure_entries(config["structures"])
except TomosiftError as error:
    raise WorkflowError(str(error)) from None
try:
    for method in config["classification"]["methods"]:
        method_architecture(method, config["classification"]["models"])
except TomosiftError as error:
    raise WorkflowError(f"{CONFIG_SOURCE}: {error}") from None

SIM = config["simulation"]
CLASSIFY = config["classification"]
SOURCES = config["structure_sources"]
NAMES = [spec.name for spec in STRUCTURES]
SPEC_BY_NAME = {spec.name: spec for spec in STRUCTURES}
STRUCTURE_CACHE = Path(SOURCES["cache_dir"])
LOGS = "results/logs"


wildcard_constraints:
    name=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    dataset=r"(snr|dose)[0-9.e+-]+_tilt[0-9.]+",
    shard=r"\d{5}",
    pdb_id=r"[A-Za-z0-9_]+",
    method="|".join(re.escape(method) for method in CLASSIFY["methods"]),


# -- structures -----------------------------------------------------------------------------


def structure_file(wildcards):
    """The local structure file of a config entry, or its download target in the cache."""
    spec = SPEC_BY_NAME[wildcards.name]
    try:
        found = find_local_structure(
            spec.source,
            search_dirs(SOURCES["dirs"]),
            pdb_mirror_dir(SOURCES["pdb_mirror_dir"]),
            STRUCTURE_CACHE,
        )
    except TomosiftError as error:
        raise WorkflowError(str(error)) from None
    return str(found) if found else str(STRUCTURE_CACHE / f"{spec.source.lower()}.cif.gz")


def structure_source(wildcards):
    return SPEC_BY_NAME[wildcards.name].source


def density_params(wildcards):
    spec = SPEC_BY_NAME[wildcards.name]
    density = config["density"]
    return {
        "box_voxels": config["box_voxels"],
        "voxel_size_nm": config["voxel_size_nm"],
        "resolution_nm": density["resolution_nm"],
        "method": spec.method or density["method"],
        "assembly": spec.assembly or density["assembly"],
        "oversample": density["oversample"],
    }


def density_maps(wildcards=None):
    return expand("results/densities/{name}.mrc", name=NAMES)


# -- datasets -------------------------------------------------------------------------------


# Every (SNR or dose, tilt range) of the config, by dataset tag (snr0.1_tilt60, dose100_tilt60).
DATASETS = grid_points(config)


def grid_point_params(dataset):
    """Everything that defines one dataset, without its shard."""
    level, tilt = DATASETS[dataset]
    return config_simulation_params(config, NAMES, level, tilt)


N_SHARDS = math.ceil(
    plan_from_params(grid_point_params(next(iter(DATASETS)))).n_particles / SIM["shard_size"]
)


def shard_files(wildcards):
    return expand(
        "results/datasets/{dataset}/shards/shard-{shard:05d}.h5",
        dataset=wildcards.dataset,
        shard=range(N_SHARDS),
    )


def simulation_params(wildcards):
    return {
        **grid_point_params(wildcards.dataset),
        "shard_index": int(wildcards.shard),
        "shard_size": SIM["shard_size"],
    }


def imaging_params(wildcards=None):
    """The simulation settings shared by every grid point (tilt range set per dataset)."""
    return config_imaging_params(config)


def shard_runtime_min(wildcards):
    # About 0.01 s per subtomogram on one core; generous margin for slow nodes.
    return max(10, math.ceil(SIM["shard_size"] * 0.1 / 60))


def figure_structures():
    chosen = config["figures"]["structures"] or NAMES[:1]
    unknown = [name for name in chosen if name not in SPEC_BY_NAME]
    if unknown:
        raise WorkflowError(f"config figures.structures: unknown structure(s) {', '.join(unknown)}")
    return chosen


# -- classification -------------------------------------------------------------------------


def method_params(wildcards):
    """The resolved settings of one method (see tomosift.recipe.method_settings)."""
    return method_settings(CLASSIFY, wildcards.method)


def classification_gpus(wildcards):
    """GPUs a training/evaluation job asks the scheduler for (none for the RIF-SVM)."""
    return 0 if wildcards.method == "rif-svm" else CLASSIFY["gpus"]


def training_runtime_min(wildcards):
    """A generous wall-time estimate: 0.5 s per training subtomogram per epoch on a CPU,
    0.02 s on a GPU."""
    n_particles = plan_from_params(grid_point_params(wildcards.dataset)).n_particles
    n_train = n_particles * (1 - SIM["test_fraction"])
    if wildcards.method == "rif-svm":
        return max(10, math.ceil(n_train * 0.05 / 60))
    epochs = method_params(wildcards)["epochs"]
    seconds = 0.02 if CLASSIFY["gpus"] else 0.5
    return max(10, math.ceil(n_train * epochs * seconds / 60))


def metric_files(wildcards=None):
    return expand(
        "results/classification/{dataset}/{method}/metrics.json",
        dataset=DATASETS,
        method=CLASSIFY["methods"],
    )


# -- discovery (leave-one-out) --------------------------------------------------------------

LOO = config["leave_one_out"]
# The dataset the experiment runs on names its folder, so that two experiments (say the paper's
# imaging and the realistic preset) share one results/ without overwriting each other's models.
LOO_TAG = grid_point_tag(SIM["noise_model"], LOO["noise_level"], LOO["tilt_max_deg"])
LOO_DIR = f"results/leave_one_out/{LOO_TAG}"
LOO_LOGS = f"{LOGS}/leave_one_out/{LOO_TAG}"
LOO_BENCHMARKS = f"results/benchmarks/leave_one_out/{LOO_TAG}"
LOO_CLASSES = LOO["classes"] or NAMES
# CNN feature sources -> the layer they read; one network per fold serves them all.
LOO_LAYER_OF = {"cnn": LOO["layer"], "logits": "logits", "hidden": "hidden",
                "embedding": "embedding"}
LOO_LAYERS = list(dict.fromkeys(LOO_LAYER_OF[s] for s in LOO["features"] if s in LOO_LAYER_OF))
LOO_MODELS = LOO["models"] if LOO_LAYERS else []
LOO_FREE = [source for source in LOO["features"] if source not in LOO_LAYER_OF]


def loo_feature_name(method, layer):
    """A CNN feature source's name in the outputs: the method for logits, else method-layer."""
    return method if layer == "logits" else f"{method}-{layer}"


# feature name -> (method, layer), for the CNN sources
LOO_CNN = {
    loo_feature_name(method, layer): (method, layer)
    for method in LOO_MODELS
    for layer in LOO_LAYERS
}
LOO_FEATURES = [*LOO_CNN, *LOO_FREE]
# Held-out folds: null = the paper's protocol, one network per left-out class.
LOO_FOLDS = LOO["folds"] or len(LOO_CLASSES)


def _check_leave_one_out():
    if LOO_TAG not in DATASETS:
        raise WorkflowError(
            f"{CONFIG_SOURCE}: leave_one_out noise_level {LOO['noise_level']:g} / tilt "
            f"{LOO['tilt_max_deg']:g} is not a grid point of simulation ({', '.join(DATASETS)})"
        )
    unknown = [name for name in LOO_CLASSES if name not in SPEC_BY_NAME]
    if unknown:
        raise WorkflowError(f"{CONFIG_SOURCE}: leave_one_out classes: unknown {', '.join(unknown)}")
    if LOO_FOLDS > len(LOO_CLASSES):
        raise WorkflowError(
            f"{CONFIG_SOURCE}: leave_one_out folds {LOO_FOLDS} is more than the "
            f"{len(LOO_CLASSES)} left-out classes"
        )
    if len(LOO_FEATURES) != len(set(LOO_FEATURES)):
        raise WorkflowError(f"{CONFIG_SOURCE}: leave_one_out: feature sources named twice "
                            f"({', '.join(LOO_FEATURES)})")
    try:
        for model in LOO_MODELS:
            method_settings(CLASSIFY, model)
    except TomosiftError as error:
        raise WorkflowError(f"{CONFIG_SOURCE}: leave_one_out models: {error}") from None
    return LOO_TAG


LOO_DATASET = _check_leave_one_out() if LOO["enabled"] else None


def loo_fold_models(wildcards=None):
    """Every fold's network of every CNN method (planned at parse time, K per method)."""
    return expand(
        f"{LOO_DIR}/models/{{method}}/fold_{{fold}}.pt",
        method=LOO_MODELS,
        fold=range(1, LOO_FOLDS + 1),
    )


def loo_train_params(wildcards):
    """The method's resolved settings; the fold's classes are excluded at run time (read from
    folds.tsv). With embedding features, an embedding head of leave_one_out.embedding_dim
    unless the model variant sets its own."""
    settings = method_settings(CLASSIFY, wildcards.method)
    if "embedding" in LOO_LAYERS and settings.get("embedding_dim") is None:
        settings["embedding_dim"] = LOO["embedding_dim"]
    return settings


def loo_gpus(wildcards=None):
    return CLASSIFY["gpus"]


def loo_training_runtime_min(wildcards):
    return training_runtime_min(Namespace(dataset=LOO_DATASET, method=wildcards.method))


def loo_fold(wildcards):
    """The fold of a left-out class, from the checkpoint loo_folds's table (data-dependent:
    the folds are balanced by mass, which the density rules measure)."""
    from tomosift.discovery.folds import fold_of

    return fold_of(checkpoints.loo_folds.get().output[0], wildcards.name)


def _loo_fold_of(wildcards):
    """The fold in the wildcards (rule loo_novel_cluster), else the left-out class's."""
    return wildcards.get("fold") or loo_fold(wildcards)


def loo_features_file(wildcards):
    if wildcards.features in LOO_FREE:
        return f"{LOO_DIR}/features/{wildcards.features}.h5"
    return f"{LOO_DIR}/features/{wildcards.features}/fold_{_loo_fold_of(wildcards)}.h5"


def loo_clusters_file(wildcards):
    if wildcards.features in LOO_FREE:
        return f"{LOO_DIR}/clusters/{wildcards.features}.tsv"
    return f"{LOO_DIR}/clusters/{wildcards.features}/fold_{_loo_fold_of(wildcards)}.tsv"


def loo_novel_inputs(wildcards):
    """The most novel clusters of the left-out class's fold, each classified once."""
    return expand(
        f"{LOO_DIR}/novel/{wildcards.features}/fold_{loo_fold(wildcards)}/rank_{{rank}}/"
        "novel.json",
        rank=range(1, LOO["novelty_top"] + 1),
    )


def loo_recover_model(wildcards):
    """The fold's network behind CNN features (checked: it never saw the fold's classes)."""
    if wildcards.features in LOO_FREE:
        return []
    method, _ = LOO_CNN[wildcards.features]
    return f"{LOO_DIR}/models/{method}/fold_{loo_fold(wildcards)}.pt"


def loo_recovery_params(wildcards=None):
    keys = ("k", "iterations", "success_nm", "max_members", "novelty_top", "novelty_ranking",
            "strict_factor", "min_class_members")
    return {key: LOO[key] for key in keys} | {
        "classes": LOO["classes3d"],
        "seed": config["seed"],
    }


def loo_rows(wildcards=None):
    return expand(
        f"{LOO_DIR}/recovered/{{features}}/{{name}}/row.json",
        features=LOO_FEATURES,
        name=LOO_CLASSES,
    )


def loo_view_inputs(wildcards=None):
    """Feature and cluster files of the first fold, one per source (Figs. 2, S1)."""

    def first_fold(kind, suffix):
        return [
            f"{LOO_DIR}/{kind}/{f}.{suffix}" if f in LOO_FREE
            else f"{LOO_DIR}/{kind}/{f}/fold_1.{suffix}"
            for f in LOO_FEATURES
        ]

    return {"features": first_fold("features", "h5"), "clusters": first_fold("clusters", "tsv")}


def loo_targets():
    if not LOO["enabled"]:
        return []
    return [
        f"{LOO_DIR}/summary.tsv",
        f"{LOO_DIR}/successes.tsv",
        f"{LOO_DIR}/table_s2.html",
        f"{LOO_DIR}/figures/fig4_recovered.png",
        f"{LOO_DIR}/figures/figS1_cluster_sizes.png",
        f"{LOO_DIR}/figures/fig2_embedding.png",
    ]


# -- subdivision (tomograms -> picks -> subtomograms -> subsets) ----------------------------

SUB = config["subdivide"]
SUB_DIR = "results/subdivide"
SUB_SIM = SUB["simulated_tomograms"]


def _input_entries(entries, kind):
    """{name: entry} of the config's tomograms or particle files (name = file stem by default)."""
    named = {}
    for entry in entries:
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        name = entry.get("name") or Path(entry["path"]).name.split(".")[0]
        if name in named:
            raise WorkflowError(f"{CONFIG_SOURCE}: subdivide {kind}: two inputs named '{name}'")
        named[name] = entry
    return named


def _check_subdivide():
    """The subdivision's inputs by name and its model file, checked at parse time."""
    simulated = [f"simulated{i + 1:02d}" for i in range(SUB_SIM["count"])]
    tomograms = _input_entries(SUB["tomograms"], "tomograms")
    particles = _input_entries(SUB["particles"], "particles")
    names = [*simulated, *tomograms, *particles]
    if len(set(names)) != len(names):
        raise WorkflowError(f"{CONFIG_SOURCE}: subdivide: input names must be unique ({names})")
    if not names:
        raise WorkflowError(f"{CONFIG_SOURCE}: subdivide is enabled but has no tomograms, "
                            "particles or simulated_tomograms")
    unknown = [n for n in SUB_SIM["structures"] if n not in SPEC_BY_NAME]
    if unknown:
        raise WorkflowError(f"{CONFIG_SOURCE}: subdivide simulated_tomograms structures: "
                            f"unknown {', '.join(unknown)}")
    model = SUB["model"]
    if model is None:
        tag = grid_point_tag(SIM["noise_model"], SUB["noise_level"], SUB["tilt_max_deg"])
        if tag not in DATASETS:
            raise WorkflowError(f"{CONFIG_SOURCE}: subdivide noise_level {SUB['noise_level']:g} / "
                                f"tilt {SUB['tilt_max_deg']:g} is not a grid point of simulation")
        if SUB["method"] not in CLASSIFY["methods"] or SUB["method"] == "rif-svm":
            raise WorkflowError(f"{CONFIG_SOURCE}: subdivide method '{SUB['method']}' must be a "
                                "CNN of classification.methods")
        model = f"results/classification/{tag}/{SUB['method']}/model.pt"
    return simulated, tomograms, particles, model


if SUB["enabled"]:
    SUB_SIMULATED, SUB_TOMOGRAMS, SUB_PARTICLES, SUB_MODEL = _check_subdivide()
else:
    SUB_SIMULATED, SUB_TOMOGRAMS, SUB_PARTICLES, SUB_MODEL = [], {}, {}, None
SUB_PICKED = [*SUB_SIMULATED, *SUB_TOMOGRAMS]


def names_pattern(names):
    """A wildcard constraint matching exactly these names (never matches when empty)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


SUB_PICKED_PATTERN = names_pattern(SUB_PICKED)
SUB_PARTICLES_PATTERN = names_pattern(SUB_PARTICLES)


def sub_tomogram_file(wildcards):
    if wildcards.tomo in SUB_TOMOGRAMS:
        return SUB_TOMOGRAMS[wildcards.tomo]["path"]
    return f"{SUB_DIR}/tomograms/{wildcards.tomo}.mrc"


def sub_truth_file(wildcards):
    """The truth STAR of a simulated tomogram ([] for a real one)."""
    if wildcards.tomo in SUB_SIMULATED:
        return f"{SUB_DIR}/tomograms/{wildcards.tomo}_truth.star"
    return []


def sub_tomogram_structures(wildcards=None):
    return expand("results/densities/{name}.mrc", name=SUB_SIM["structures"] or NAMES)


def sub_simulation_params(wildcards):
    return {
        **{key: SUB_SIM[key] for key in ("size_voxels", "thickness_voxels", "dose_e_per_a2",
                                        "min_gap_nm")},
        "n_particles": SUB_SIM["particles"],
        "names": SUB_SIM["structures"] or NAMES,
        "imaging": config_imaging_params(config),
        "tilt_max_deg": SUB["tilt_max_deg"],
        "seed": config["seed"] * 1000 + SUB_SIMULATED.index(wildcards.tomo) + 1,
    }


def sub_polarity(wildcards):
    """How particles appear in a tomogram: simulated ones as the imaging makes them, the
    user's as their entry (or pick.polarity) says."""
    if wildcards.tomo in SUB_SIMULATED:
        settings = SimulationSettings.from_config(config_imaging_params(config),
                                                  SUB["tilt_max_deg"])
        return "dark" if settings.dark_particles else "white"
    return SUB_TOMOGRAMS[wildcards.tomo].get("polarity", SUB["pick"]["polarity"])


def sub_pick_params(wildcards):
    settings = {k: v for k, v in SUB["pick"].items() if k not in ("tolerance_voxels",
                                                                    "defocus_um")}
    return {**settings, "polarity": sub_polarity(wildcards)}


def sub_defocus_um(wildcards):
    """A tomogram's defocus for the CTF correction: its entry's, else pick.defocus_um (None:
    the MRC header's, as simulated tomograms record it)."""
    entry = SUB_TOMOGRAMS.get(wildcards.tomo, {})
    return entry.get("defocus_um", SUB["pick"]["defocus_um"])


def sub_structure_stats(wildcards=None):
    """The summary rows (JSON, with the mass) of the simulated tomograms' structures."""
    return expand("results/densities/{name}.json", name=SUB_SIM["structures"] or NAMES)


def sub_particle_source(wildcards):
    return SUB_PARTICLES[wildcards.tomo]["path"]


def sub_particle_tomograms(wildcards):
    """The tomograms STAR of a 2D-stack particles file ([] when not given)."""
    return SUB_PARTICLES[wildcards.tomo].get("tomograms") or []


def sub_datasets(wildcards=None):
    return expand(f"{SUB_DIR}/particles/{{tomo}}.h5", tomo=[*SUB_PICKED, *SUB_PARTICLES])


def sub_feature_shards(wildcards=None):
    return expand(f"{SUB_DIR}/features/shard-{{shard:05d}}.h5", shard=range(SUB["shards"]))


def sub_pick_scores(wildcards=None):
    return expand(f"{SUB_DIR}/picks/{{tomo}}_scores.tsv", tomo=SUB_SIMULATED)


def sub_pick_mass_tables(wildcards=None):
    return expand(f"{SUB_DIR}/picks/{{tomo}}_by_mass.tsv", tomo=SUB_SIMULATED)


def census_settings(threads):
    """The keyword arguments of tomosift.discovery.census.CensusSettings from the config."""
    census = SUB["census"]
    keys = ("min_members", "max_members", "calibration_quantile", "calibration_subsets",
            "calibration", "threshold", "reference_resolution_factor")
    return {**{key: census[key] for key in keys}, "iterations": SUB["average_iterations"],
            "seed": config["seed"], "workers": threads}


def census_references(wildcards=None):
    """The census's reference files: the config's maps, with ``training`` (alone or in the
    list) standing for the subdivision's model file, whose class averages are the
    references."""
    references = SUB["census"]["references"]
    references = [references] if isinstance(references, str) else references
    return [SUB_MODEL if entry == "training" else entry for entry in references]


def sub_targets():
    if not SUB["enabled"]:
        return []
    targets = [f"{SUB_DIR}/summary.tsv", f"{SUB_DIR}/cluster_sizes.png",
               f"{SUB_DIR}/embedding.png"]
    if SUB["averages"]:
        targets.append(f"{SUB_DIR}/averages.png")
    if SUB["census"]["enabled"]:
        targets.append(f"{SUB_DIR}/census/census.tsv")
    if SUB_SIMULATED:
        targets += [f"{SUB_DIR}/picking.tsv", f"{SUB_DIR}/picking_by_mass.tsv",
                    f"{SUB_DIR}/picking_by_mass.png"]
    return targets


# -- targets --------------------------------------------------------------------------------


def all_targets():
    return [
        "results/densities/summary.tsv",
        "results/densities/montage.png",
        *expand("results/datasets/{dataset}.h5", dataset=DATASETS),
        *expand("results/datasets/{dataset}.txt", dataset=DATASETS),
        *expand("results/figures/snr_tilt_grid_{name}.png", name=figure_structures()),
        "results/figures/ctf_power_spectrum.png",
        "results/figures/missing_wedge.png",
        "results/table1.tsv",
        "results/table1.html",
        "results/figures/table1_heatmap.png",
        *loo_targets(),
        *sub_targets(),
    ]
