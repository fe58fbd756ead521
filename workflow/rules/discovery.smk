# Stage 4: discovery. The leave-one-out experiment (paper Section 3.3): train without a class
# (or, with leave_one_out.folds, without a fold of classes), cluster the test split's features,
# classify and average the most enriched cluster, FSC against the true density. RIF and
# pose-normalised features need no training. Without the oracle, the most novel clusters of
# each fold are classified once (loo_novel_cluster) and scored for every class of the fold.
#
# The folds are balanced by mass, which only the density rules measure: the checkpoint
# loo_folds writes folds.tsv, each training reads its fold's classes from it at run time, and
# each recovery finds its class's fold in it. The K trainings per CNN method are planned at
# parse time (models/{method}/fold_{f}.pt, f = 1..K), all required by loo_summary.


wildcard_constraints:
    source="rif|posenorm",
    features="|".join(re.escape(f) for f in LOO_FEATURES) or "none",
    fold=r"[1-9][0-9]*",


checkpoint loo_folds:
    input:
        expand("results/densities/{name}.json", name=LOO_CLASSES),
    output:
        f"{LOO_DIR}/folds.tsv",
    log:
        f"{LOO_LOGS}/folds.log",
    params:
        classes=LOO_CLASSES,
        folds=LOO["folds"],
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/leave_one_out_folds.py"


rule loo_train:
    input:
        data=f"results/datasets/{LOO_DATASET}.h5",
        folds=f"{LOO_DIR}/folds.tsv",
    output:
        f"{LOO_DIR}/models/{{method}}/fold_{{fold}}.pt",
    log:
        f"{LOO_LOGS}/train/{{method}}/fold_{{fold}}.log",
    params:
        settings=loo_train_params,
        seed=config["seed"],
        checkpoint=f"results/checkpoints/leave_one_out/{LOO_TAG}/{{method}}/fold_{{fold}}.ckpt",
    threads: CLASSIFY["threads"]
    resources:
        gpu=loo_gpus,
        device=CLASSIFY["device"],
        mem_mb=8000,
        runtime=loo_training_runtime_min,
    benchmark:
        f"{LOO_BENCHMARKS}/train/{{method}}/fold_{{fold}}.tsv"
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/train.py"


rule loo_cnn_features:
    input:
        model=f"{LOO_DIR}/models/{{method}}/fold_{{fold}}.pt",
        data=f"results/datasets/{LOO_DATASET}.h5",
    output:
        [
            f"{LOO_DIR}/features/{loo_feature_name('{method}', layer)}/fold_{{fold}}.h5"
            for layer in LOO_LAYERS
        ],
    log:
        f"{LOO_LOGS}/features/{{method}}/fold_{{fold}}.log",
    wildcard_constraints:
        method="|".join(re.escape(m) for m in LOO_MODELS) or "none",
    params:
        source="cnn",
        layers=LOO_LAYERS,
    threads: CLASSIFY["threads"]
    resources:
        gpu=loo_gpus,
        device=CLASSIFY["device"],
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/features.py"


rule loo_free_features:
    input:
        data=f"results/datasets/{LOO_DATASET}.h5",
    output:
        f"{LOO_DIR}/features/{{source}}.h5",
    log:
        f"{LOO_LOGS}/features/{{source}}.log",
    params:
        source="{source}",
        layer=LOO["layer"],
    threads: LOO["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    benchmark:
        f"{LOO_BENCHMARKS}/features/{{source}}.tsv"
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/features.py"


rule loo_cnn_clusters:
    input:
        f"{LOO_DIR}/features/{{features}}/fold_{{fold}}.h5",
    output:
        f"{LOO_DIR}/clusters/{{features}}/fold_{{fold}}.tsv",
    log:
        f"{LOO_LOGS}/clusters/{{features}}/fold_{{fold}}.log",
    params:
        k=LOO["k"],
        seed=config["seed"],
    threads: LOO["threads"]
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/test_clusters.py"


rule loo_free_clusters:
    input:
        f"{LOO_DIR}/features/{{source}}.h5",
    output:
        f"{LOO_DIR}/clusters/{{source}}.tsv",
    log:
        f"{LOO_LOGS}/clusters/{{source}}.log",
    params:
        k=LOO["k"],
        seed=config["seed"],
    threads: LOO["threads"]
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/test_clusters.py"


rule loo_novel_cluster:
    input:
        data=f"results/datasets/{LOO_DATASET}.h5",
        features=loo_features_file,
        clusters=loo_clusters_file,
        folds=f"{LOO_DIR}/folds.tsv",
    output:
        f"{LOO_DIR}/novel/{{features}}/fold_{{fold}}/rank_{{rank}}/novel.json",
    log:
        f"{LOO_LOGS}/novel/{{features}}/fold_{{fold}}/rank_{{rank}}.log",
    wildcard_constraints:
        rank=r"[1-9][0-9]*",
    params:
        settings=loo_recovery_params,
        out_dir=f"{LOO_DIR}/novel/{{features}}/fold_{{fold}}/rank_{{rank}}",
    threads: LOO["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    benchmark:
        f"{LOO_BENCHMARKS}/novel/{{features}}/fold_{{fold}}/rank_{{rank}}.tsv"
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/leave_one_out_novel.py"


rule loo_recover:
    input:
        data=f"results/datasets/{LOO_DATASET}.h5",
        features=loo_features_file,
        clusters=loo_clusters_file,
        model=loo_recover_model,
        folds=f"{LOO_DIR}/folds.tsv",
        truth="results/densities/{name}.mrc",
        novel=loo_novel_inputs,
    output:
        row=f"{LOO_DIR}/recovered/{{features}}/{{name}}/row.json",
        average=f"{LOO_DIR}/recovered/{{features}}/{{name}}/oracle/average_on_truth.mrc",
        fsc=report(
            f"{LOO_DIR}/recovered/{{features}}/{{name}}/oracle/fsc.png",
            caption="../report/loo_fsc.rst",
            category="4. Discovery",
            subcategory="FSC against the truth",
            labels={"features": "{features}", "left out": "{name}"},
        ),
    log:
        f"{LOO_LOGS}/recover/{{features}}/{{name}}.log",
    params:
        settings=loo_recovery_params,
        out_dir=f"{LOO_DIR}/recovered/{{features}}/{{name}}",
        reference_dir=f"{LOO_DIR}/references/{{name}}",
    threads: LOO["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    benchmark:
        f"{LOO_BENCHMARKS}/recover/{{features}}/{{name}}.tsv"
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/leave_one_out.py"


rule loo_summary:
    input:
        unpack(loo_view_inputs),
        rows=loo_rows(),
        models=loo_fold_models(),
        folds=f"{LOO_DIR}/folds.tsv",
    output:
        summary=report(
            f"{LOO_DIR}/summary.tsv",
            caption="../report/loo_summary.rst",
            category="4. Discovery",
            labels={"view": "Table S2 (TSV)"},
        ),
        successes=report(
            f"{LOO_DIR}/successes.tsv",
            caption="../report/loo_successes.rst",
            category="4. Discovery",
            labels={"view": "successes per feature source"},
        ),
        html=report(
            f"{LOO_DIR}/table_s2.html",
            caption="../report/loo_summary.rst",
            category="4. Discovery",
            labels={"view": "Table S2"},
        ),
        fig4=report(
            f"{LOO_DIR}/figures/fig4_recovered.png",
            caption="../report/loo_fig4.rst",
            category="4. Discovery",
            labels={"view": "Fig. 4: true vs recovered"},
        ),
        figS1=report(
            f"{LOO_DIR}/figures/figS1_cluster_sizes.png",
            caption="../report/loo_figS1.rst",
            category="4. Discovery",
            labels={"view": "Fig. S1: cluster sizes"},
        ),
        fig2=report(
            f"{LOO_DIR}/figures/fig2_embedding.png",
            caption="../report/loo_fig2.rst",
            category="4. Discovery",
            labels={"view": "Fig. 2: t-SNE"},
        ),
    log:
        f"{LOO_LOGS}/summary.log",
    params:
        feature_names=LOO_FEATURES,
        criterion=LOO["criterion"],
        embedding_points=LOO["embedding_points"],
        seed=config["seed"],
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/leave_one_out_summary.py"
