# Stage 1: structures (PDB IDs, PDB/mmCIF files, MRC maps) -> density maps on the simulation grid.


rule download_structure:
    output:
        f"{STRUCTURE_CACHE}/{{pdb_id}}.cif.gz",
    log:
        f"{LOGS}/download/{{pdb_id}}.log",
    params:
        url=None if SOURCES["offline"] else SOURCES["download_url"],
        timeout_s=SOURCES["download_timeout_s"],
        dirs=SOURCES["dirs"],
        mirror=SOURCES["pdb_mirror_dir"],
    resources:
        runtime=10,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/download_structure.py"


rule density:
    input:
        structure=structure_file,
    output:
        mrc="results/densities/{name}.mrc",
        stats="results/densities/{name}.json",
    log:
        f"{LOGS}/density/{{name}}.log",
    params:
        settings=density_params,
        source=structure_source,
    resources:
        mem_mb=2000,
        runtime=10,
    benchmark:
        "results/benchmarks/density/{name}.tsv"
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/density.py"


rule density_summary:
    input:
        stats=expand("results/densities/{name}.json", name=NAMES),
        maps=density_maps(),
    output:
        table=report(
            "results/densities/summary.tsv",
            caption="../report/density_summary.rst",
            category="1. Structures",
        ),
        montage=report(
            "results/densities/montage.png",
            caption="../report/density_montage.rst",
            category="1. Structures",
        ),
    log:
        f"{LOGS}/density_summary.log",
    params:
        voxel_size_nm=config["voxel_size_nm"],
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/density_summary.py"
