# Stage 5: the user's path. Tomograms (simulated with their truth, or the user's) are picked by
# a difference of Gaussians, subtomograms are cut out (RELION particle files are imported
# instead), all inputs are joined into one dataset, CNN features are scattered over shards and
# gathered into k-means subsets, one RELION 5 STAR file each, and the largest subsets are
# averaged without references.


wildcard_constraints:
    tomo=names_pattern([*SUB_PICKED, *SUB_PARTICLES]),


rule simulate_tomogram:
    input:
        maps=sub_tomogram_structures,
    output:
        tomogram=f"{SUB_DIR}/tomograms/{{tomo}}.mrc",
        truth=f"{SUB_DIR}/tomograms/{{tomo}}_truth.star",
    log:
        f"{LOGS}/subdivide/simulate/{{tomo}}.log",
    params:
        settings=sub_simulation_params,
    threads: 1
    resources:
        mem_mb=6000,
        runtime=60,
    benchmark:
        f"results/benchmarks/subdivide/simulate/{{tomo}}.tsv"
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/simulate_tomogram.py"


rule pick:
    input:
        tomogram=sub_tomogram_file,
    output:
        picks=f"{SUB_DIR}/picks/{{tomo}}.star",
    log:
        f"{LOGS}/subdivide/pick/{{tomo}}.log",
    params:
        settings=sub_pick_params,
        defocus_um=sub_defocus_um,
        tilt_max_deg=SUB["tilt_max_deg"],
        box_voxels=config["box_voxels"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/pick.py"


rule pick_scores:
    input:
        picks=f"{SUB_DIR}/picks/{{tomo}}.star",
        truth=sub_truth_file,
        structures=sub_structure_stats,
    output:
        scores=f"{SUB_DIR}/picks/{{tomo}}_scores.tsv",
        by_mass=f"{SUB_DIR}/picks/{{tomo}}_by_mass.tsv",
    log:
        f"{LOGS}/subdivide/pick_scores/{{tomo}}.log",
    params:
        tolerance_voxels=SUB["pick"]["tolerance_voxels"],
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/pick_scores.py"


rule picking_summary:
    input:
        scores=sub_pick_scores,
        by_mass=sub_pick_mass_tables,
    output:
        table=report(
            f"{SUB_DIR}/picking.tsv",
            caption="../report/subdivide_picking.rst",
            category="Subdivision",
        ),
        by_mass=report(
            f"{SUB_DIR}/picking_by_mass.tsv",
            caption="../report/subdivide_picking_by_mass.rst",
            category="Subdivision",
        ),
        plot=report(
            f"{SUB_DIR}/picking_by_mass.png",
            caption="../report/subdivide_picking_by_mass.rst",
            category="Subdivision",
        ),
    log:
        f"{LOGS}/subdivide/picking_summary.log",
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/picking_summary.py"


rule extract:
    wildcard_constraints:
        tomo=SUB_PICKED_PATTERN,
    input:
        tomogram=sub_tomogram_file,
        picks=f"{SUB_DIR}/picks/{{tomo}}.star",
        truth=sub_truth_file,
    output:
        f"{SUB_DIR}/particles/{{tomo}}.h5",
    log:
        f"{LOGS}/subdivide/extract/{{tomo}}.log",
    params:
        box_voxels=config["box_voxels"],
        voxel_size_nm=config["voxel_size_nm"],
        tilt_max_deg=SUB["tilt_max_deg"],
        polarity=sub_polarity,
        tolerance_voxels=SUB["pick"]["tolerance_voxels"],
        seed=config["seed"],
        **SUB["extract"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/extract.py"


rule import_particles:
    wildcard_constraints:
        tomo=SUB_PARTICLES_PATTERN,
    input:
        source=sub_particle_source,
        tomograms=sub_particle_tomograms,
    output:
        f"{SUB_DIR}/particles/{{tomo}}.h5",
    log:
        f"{LOGS}/subdivide/import/{{tomo}}.log",
    params:
        polarity=lambda wc: SUB_PARTICLES[wc.tomo].get("polarity", "white"),
        tilt_max_deg=SUB["tilt_max_deg"],
        seed=config["seed"],
        dtype=SUB["extract"]["dtype"],
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/import_particles.py"


rule join_particles:
    input:
        sub_datasets,
    output:
        f"{SUB_DIR}/particles.h5",
    log:
        f"{LOGS}/subdivide/join.log",
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/join_particles.py"


rule subdivide_features:
    input:
        model=SUB_MODEL or [],
        data=f"{SUB_DIR}/particles.h5",
        datasets=sub_datasets,
    output:
        f"{SUB_DIR}/features/shard-{{shard}}.h5",
    log:
        f"{LOGS}/subdivide/features/shard-{{shard}}.log",
    params:
        n_shards=SUB["shards"],
        batch_size=SUB["batch_size"],
        workers=SUB["workers"],
    threads: SUB["threads"]
    resources:
        gpu=CLASSIFY["gpus"],
        device=CLASSIFY["device"],
        mem_mb=4000,
        runtime=60,
    benchmark:
        f"results/benchmarks/subdivide/features/shard-{{shard}}.tsv"
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/subdivide_features.py"


rule subdivide_cluster:
    input:
        features=sub_feature_shards,
        data=f"{SUB_DIR}/particles.h5",
        datasets=sub_datasets,
    output:
        summary=report(
            f"{SUB_DIR}/summary.tsv",
            caption="../report/subdivide_summary.rst",
            category="Subdivision",
        ),
        clusters=report(
            f"{SUB_DIR}/clusters.tsv",
            caption="../report/subdivide_clusters.rst",
            category="Subdivision",
        ),
        subsets=report(
            directory(f"{SUB_DIR}/subsets"),
            patterns=["{name}.star"],
            caption="../report/subdivide_subsets.rst",
            category="Subdivision",
        ),
        text=f"{SUB_DIR}/summary.txt",
        made_from=f"{SUB_DIR}/subdivide.json",
        sizes=report(
            f"{SUB_DIR}/cluster_sizes.png",
            caption="../report/subdivide_sizes.rst",
            category="Subdivision",
        ),
        embedding=report(
            f"{SUB_DIR}/embedding.png",
            caption="../report/subdivide_embedding.rst",
            category="Subdivision",
        ),
    log:
        f"{LOGS}/subdivide/cluster.log",
    params:
        out_dir=lambda wildcards, output: Path(output.summary).parent,
        k=SUB["k"],
        seed=config["seed"],
        embedding_points=SUB["embedding_points"],
    threads: SUB["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/subdivide_cluster.py"


rule subdivide_averages:
    input:
        clusters=f"{SUB_DIR}/clusters.tsv",
        data=f"{SUB_DIR}/particles.h5",
        datasets=sub_datasets,
    output:
        averages=directory(f"{SUB_DIR}/averages"),
        montage=report(
            f"{SUB_DIR}/averages.png",
            caption="../report/subdivide_averages.rst",
            category="Subdivision",
        ),
    log:
        f"{LOGS}/subdivide/averages.log",
    params:
        out_dir=lambda wildcards, output: Path(output.montage).parent,
        clusters=SUB["averages"],
        max_members=SUB["average_members"],
        iterations=SUB["average_iterations"],
        seed=config["seed"],
    threads: SUB["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/subdivide_averages.py"


rule subdivide_census:
    input:
        clusters=f"{SUB_DIR}/clusters.tsv",
        made_from=f"{SUB_DIR}/subdivide.json",
        data=f"{SUB_DIR}/particles.h5",
        references=census_references,
    output:
        census=report(
            f"{SUB_DIR}/census/census.tsv",
            caption="../report/subdivide_census.rst",
            category="Census",
        ),
        members=f"{SUB_DIR}/census/members.tsv",
        unresolved=f"{SUB_DIR}/census/unresolved.tsv",
        made_from=f"{SUB_DIR}/census/census.json",
        gallery=report(
            f"{SUB_DIR}/census/census.png",
            caption="../report/subdivide_census_gallery.rst",
            category="Census",
        ),
        similarity=report(
            f"{SUB_DIR}/census/similarity.png",
            caption="../report/subdivide_census_similarity.rst",
            category="Census",
        ),
        by_threshold=report(
            f"{SUB_DIR}/census/structures_by_threshold.png",
            caption="../report/subdivide_census_by_threshold.rst",
            category="Census",
        ),
        structures=directory(f"{SUB_DIR}/census/structures"),
    log:
        f"{LOGS}/subdivide/census.log",
    params:
        subdivision=lambda wildcards, input: Path(input.clusters).parent,
        out_dir=lambda wildcards, output: Path(output.census).parent,
        settings=lambda wildcards, threads: census_settings(threads),
    threads: SUB["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/subdivide_census.py"


rule subdivide:
    input:
        sub_targets(),
