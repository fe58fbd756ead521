# The two commands of the README: `make demo` and `make test`.
# Both create .venv on first use (Python 3.11+) and install tomosift with pinned dependencies.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
# Offline structure sources: the shared data beside the checkout, unless the caller set them.
ifneq ($(wildcard $(SHARED)/structures),)
export TOMOSIFT_STRUCTURE_DIRS ?= $(SHARED)/structures:$(SHARED)/maps
endif

.PHONY: demo test venv report clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml envs/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tomosift needs Python 3.11 or newer; set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r envs/requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

demo: venv
	$(BIN)/snakemake --cores all
	$(BIN)/snakemake --report results/report.html
	@echo
	@echo "Results:     results/"
	@echo "HTML report: results/report.html"

test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest -q
	$(BIN)/snakemake --lint
	$(BIN)/snakemake -n --quiet rules all
	$(BIN)/snakemake -n --quiet rules all --configfile config/paper.yaml
	$(BIN)/snakemake -n --quiet rules all --configfile config/benchmark22.yaml
	$(BIN)/snakemake -n --quiet rules all --configfile config/realistic.yaml
	$(BIN)/snakemake subdivide -n --quiet rules --configfile config/subdivide.yaml

clean:
	rm -rf results .snakemake
