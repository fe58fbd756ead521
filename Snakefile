# tomosift: deep-learning subdivision of cryo-electron subtomograms (after Xu et al. 2017).
# A table of contents: the stages live in workflow/rules/, the science in workflow/src/tomosift.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/densities.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/discovery.smk"
include: "workflow/rules/subdivide.smk"


rule all:
    input:
        all_targets(),
    default_target: True
