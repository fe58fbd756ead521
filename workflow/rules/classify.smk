# Stage 3: train and test every classifier on every dataset -> the paper's Table 1.


rule train:
    input:
        data="results/datasets/{dataset}.h5",
        shards=shard_files,
    output:
        "results/classification/{dataset}/{method}/model.pt",
    log:
        f"{LOGS}/train/{{dataset}}/{{method}}.log",
    params:
        # only this method's resolved settings: adding a method or changing threads or the
        # device does not retrain the others
        settings=method_params,
        seed=config["seed"],
        checkpoint="results/checkpoints/{dataset}/{method}.ckpt",
    threads: CLASSIFY["threads"]
    resources:
        gpu=classification_gpus,
        device=CLASSIFY["device"],
        mem_mb=8000,
        runtime=training_runtime_min,
    benchmark:
        "results/benchmarks/train/{dataset}/{method}.tsv"
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/train.py"


rule evaluate:
    input:
        model="results/classification/{dataset}/{method}/model.pt",
        data="results/datasets/{dataset}.h5",
        shards=shard_files,
    output:
        metrics="results/classification/{dataset}/{method}/metrics.json",
        confusion=report(
            "results/classification/{dataset}/{method}/confusion.png",
            caption="../report/confusion.rst",
            category="3. Classification",
            subcategory="Confusion matrices",
            labels={"dataset": "{dataset}", "method": "{method}"},
        ),
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{method}}.log",
    threads: CLASSIFY["threads"]
    resources:
        gpu=classification_gpus,
        device=CLASSIFY["device"],
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/evaluate.py"


rule table1:
    input:
        metrics=metric_files(),
    output:
        table=report(
            "results/table1.tsv",
            caption="../report/table1.rst",
            category="3. Classification",
            labels={"table": "Table 1 (TSV)"},
        ),
        html=report(
            "results/table1.html",
            caption="../report/table1.rst",
            category="3. Classification",
            labels={"table": "Table 1"},
        ),
        heatmap=report(
            "results/figures/table1_heatmap.png",
            caption="../report/table1_heatmap.rst",
            category="3. Classification",
            labels={"table": "Table 1 heat map"},
        ),
    log:
        f"{LOGS}/table1.log",
    conda:
        "../../envs/tomosift.yaml"
    script:
        "../scripts/table1.py"
