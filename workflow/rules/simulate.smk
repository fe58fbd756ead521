# Stage 2: tilt-series simulation -> one HDF5 dataset per (SNR, tilt range), made in shards.


rule simulate_shard:
    input:
        maps=density_maps(),
    output:
        "results/datasets/{dataset}/shards/shard-{shard}.h5",
    log:
        f"{LOGS}/simulate/{{dataset}}/shard-{{shard}}.log",
    params:
        simulation=simulation_params,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=shard_runtime_min,
    benchmark:
        "results/benchmarks/simulate/{dataset}/shard-{shard}.tsv"
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/simulate_shard.py"


rule join_dataset:
    input:
        shards=shard_files,
    output:
        dataset="results/datasets/{dataset}.h5",
        summary=report(
            "results/datasets/{dataset}.txt",
            caption="../report/dataset_summary.rst",
            category="2. Simulated datasets",
            labels={"dataset": "{dataset}"},
        ),
    log:
        f"{LOGS}/join/{{dataset}}.log",
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/join_dataset.py"


rule figure_snr_tilt_grid:
    input:
        density="results/densities/{name}.mrc",
    output:
        report(
            "results/figures/snr_tilt_grid_{name}.png",
            caption="../report/snr_tilt_grid.rst",
            category="2. Simulated datasets",
            labels={"figure": "SNR x tilt grid", "structure": "{name}"},
        ),
    log:
        f"{LOGS}/figures/snr_tilt_grid_{{name}}.log",
    params:
        noise_model=SIM["noise_model"],
        noise_levels=SIM["snr"] if SIM["noise_model"] == "snr" else SIM["dose_e_per_a2"],
        tilts=SIM["tilt_max_deg"],
        imaging=imaging_params,
        seed=config["seed"],
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/figure_snr_tilt_grid.py"


rule figure_ctf:
    input:
        density=f"results/densities/{NAMES[0]}.mrc",
    output:
        report(
            "results/figures/ctf_power_spectrum.png",
            caption="../report/ctf_power_spectrum.rst",
            category="2. Simulated datasets",
            labels={"figure": "CTF power spectrum"},
        ),
    log:
        f"{LOGS}/figures/ctf_power_spectrum.log",
    params:
        imaging=imaging_params,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/figure_ctf.py"


rule figure_missing_wedge:
    output:
        report(
            "results/figures/missing_wedge.png",
            caption="../report/missing_wedge.rst",
            category="2. Simulated datasets",
            labels={"figure": "Fourier coverage"},
        ),
    log:
        f"{LOGS}/figures/missing_wedge.log",
    params:
        tilts=SIM["tilt_max_deg"],
        imaging=imaging_params,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/figure_missing_wedge.py"
