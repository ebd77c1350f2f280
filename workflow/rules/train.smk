# The facial prior (StyleGAN2) and GFP-GAN training. GPU jobs: one at a time locally (profiles/default).


rule train_prior:
    input:
        "data/shards",
        "src/dlfp/stages/train_prior.py",
        "src/dlfp/train/prior.py",
        "src/dlfp/train/prior_metrics.py",
        "src/dlfp/train/engine",
        "src/dlfp/train/data.py",
        "src/dlfp/models/stylegan2.py",
    output:
        directory("models/prior"),
    params:
        seed=config["seed"],
        train_prior=config["train_prior"],
    resources:
        gpu=1,
    log:
        "logs/train_prior.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp train_prior --in data/shards --out models/prior --log logs/train_prior.log"


rule train:
    input:
        "data/shards",
        "data/pairs",
        "models/prior",
        "src/dlfp/stages/train.py",
        "src/dlfp/train/gfpgan.py",
        "src/dlfp/train/engine",
        "src/dlfp/train/data.py",
        "src/dlfp/losses",
        "src/dlfp/models/gfpgan.py",
    output:
        directory("models/gfpgan"),
    params:
        seed=config["seed"],
        presets=config["degrade"]["presets"],
        train=config["train"],
    resources:
        gpu=1,
    log:
        "logs/train.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp train --in data/shards --prior models/prior/prior.pth --pairs data/pairs --out models/gfpgan"
        " --log logs/train.log"
