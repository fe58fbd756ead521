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
LOO_DIR = "results/leave_one_out"
LOO_CLASSES = LOO["classes"] or NAMES
LOO_MODELS = LOO["models"] if "cnn" in LOO["features"] else []
LOO_FREE = [source for source in LOO["features"] if source != "cnn"]
LOO_FEATURES = [*LOO_MODELS, *LOO_FREE]


def _check_leave_one_out():
    tag = grid_point_tag(SIM["noise_model"], LOO["noise_level"], LOO["tilt_max_deg"])
    if tag not in DATASETS:
        raise WorkflowError(
            f"{CONFIG_SOURCE}: leave_one_out noise_level {LOO['noise_level']:g} / tilt "
            f"{LOO['tilt_max_deg']:g} is not a grid point of simulation ({', '.join(DATASETS)})"
        )
    unknown = [name for name in LOO_CLASSES if name not in SPEC_BY_NAME]
    if unknown:
        raise WorkflowError(f"{CONFIG_SOURCE}: leave_one_out classes: unknown {', '.join(unknown)}")
    try:
        for model in LOO_MODELS:
            method_settings(CLASSIFY, model)
    except TomosiftError as error:
        raise WorkflowError(f"{CONFIG_SOURCE}: leave_one_out models: {error}") from None
    return tag


LOO_DATASET = _check_leave_one_out() if LOO["enabled"] else None


def loo_train_params(wildcards):
    """The method's resolved settings, with the left-out class excluded from training."""
    return {**method_settings(CLASSIFY, wildcards.method), "exclude_classes": [wildcards.name]}


def loo_gpus(wildcards=None):
    return CLASSIFY["gpus"]


def loo_training_runtime_min(wildcards):
    return training_runtime_min(Namespace(dataset=LOO_DATASET, method=wildcards.method))


def loo_features_file(wildcards):
    if wildcards.features in LOO_FREE:
        return f"{LOO_DIR}/features/{wildcards.features}.h5"
    return f"{LOO_DIR}/features/{wildcards.features}/without_{wildcards.name}.h5"


def loo_clusters_file(wildcards):
    if wildcards.features in LOO_FREE:
        return f"{LOO_DIR}/clusters/{wildcards.features}.tsv"
    return f"{LOO_DIR}/clusters/{wildcards.features}/without_{wildcards.name}.tsv"


def loo_recovery_params(wildcards=None):
    keys = ("k", "iterations", "success_nm", "max_members", "novelty_top")
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
    """Feature and cluster files of the first left-out class, one per source (Figs. 2, S1)."""
    first = Namespace(name=LOO_CLASSES[0])
    return {
        "features": [loo_features_file(Namespace(**vars(first), features=f)) for f in LOO_FEATURES],
        "clusters": [loo_clusters_file(Namespace(**vars(first), features=f)) for f in LOO_FEATURES],
    }


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
    ]
