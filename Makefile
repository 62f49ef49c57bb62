# Two set-up-free commands: `make benchmark METHOD=...` and `make test`.
PYTHON_SYS ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
METHOD  ?= medshift
DATASET ?= skull-sim
PRESET  ?= tiny
TASK    ?= sim2real
SEEDS   ?= 0 1 2
# `make benchmark` is a newcomer's first run: one seed unless SEEDS is given (three MedShift seeds take ~40 min
# on 2 cores); the tables' three seeds come from SEEDS="0 1 2" or `make sweep`, whose default stays three seeds.
BENCH_SEEDS = $(if $(filter command line environment%,$(origin SEEDS)),$(SEEDS),0)
JOBS    ?= 1
ARGS    ?=
RESULTS ?= results

.DEFAULT_GOAL := help
.PHONY: help setup frd benchmark test lint test-slow data preview collect rescore figures archive regress regress-update utility sweep weights perf clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(MAKE) --no-print-directory frd || echo "warning: FRD's optional packages did not install; frd is recorded unavailable (retry: make frd)"
	touch $@

frd:  ## install FRD's optional packages (pyradiomics builds from source: ~40 s with gcc)
	$(PY) -m pip install -q versioneer wheel
	$(PY) -m pip install -q --no-build-isolation pyradiomics==3.0.1
	$(PY) -m pip install -q frd-score==1.0.1

setup: $(VENV)/.installed  ## create .venv and install the project (done by the other targets on first use)

benchmark: $(VENV)/.installed  ## train + score METHOD (name|all) on DATASET/PRESET/TASK for SEEDS (default 0), then tables
	$(PY) -m benchmark run --method $(METHOD) --dataset $(DATASET) --preset $(PRESET) --task $(TASK) --seeds $(BENCH_SEEDS) --results-dir $(RESULTS) $(ARGS)
	$(PY) -m benchmark collect --results-dir $(RESULTS)

test: $(VENV)/.installed  ## lint, the fast CPU test suite, then the regression (what CI runs)
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory regress

lint: $(VENV)/.installed  ## ruff: pyflakes, pycodestyle, import order, bugbear
	$(PY) -m ruff check .

test-slow: $(VENV)/.installed  ## the slow tests kept out of CI
	$(PY) -m pytest -q -m slow

data: $(VENV)/.installed  ## generate DATASET/PRESET into the data cache
	$(PY) -m datasets generate --dataset $(DATASET) --preset $(PRESET)

preview: $(VENV)/.installed  ## montage PNG of DATASET/PRESET under results/figures/
	$(PY) -m datasets preview --dataset $(DATASET) --preset $(PRESET) --out results/figures/preview-$(DATASET)-$(PRESET).png

collect: $(VENV)/.installed  ## results/runs -> results/tables/summary.{csv,md,tex}
	$(PY) -m benchmark collect --results-dir $(RESULTS)

rescore: $(VENV)/.installed  ## add newly computable metrics (FRD, weights) to finished runs, no training
	$(PY) -m benchmark rescore --results-dir $(RESULTS)

figures: $(VENV)/.installed  ## records + saved samples -> results/figures/*.{png,pdf}
	$(PY) -m benchmark figures --results-dir $(RESULTS)

archive: $(VENV)/.installed  ## copy finished runs' records, config, samples to results/records (committed)
	$(PY) -m benchmark archive --results-dir $(RESULTS)

regress: $(VENV)/.installed  ## every method on micro vs results/reference/regress.json + invariants (CI)
	$(PY) -m benchmark regress

regress-update: $(VENV)/.installed  ## rewrite the regression reference and print what changed
	$(PY) -m benchmark regress --update

sweep: $(VENV)/.installed  ## METHOD x SEEDS x TASK as independent fits, JOBS at a time (ARGS: --vary k=a,b, --executor slurm ...)
	$(PY) -m benchmark sweep --method $(METHOD) --dataset $(DATASET) --preset $(PRESET) --task $(TASK) --seeds $(SEEDS) --results-dir $(RESULTS) --jobs $(JOBS) $(ARGS)

utility: $(VENV)/.installed  ## downstream utility of finished runs (METHOD, SEEDS; sim2real and dose): Dice of a segmenter on real images
	$(PY) -m benchmark utility --method $(METHOD) --dataset $(DATASET) --preset $(PRESET) --seeds $(SEEDS) --results-dir $(RESULTS)

weights: $(VENV)/.installed  ## fetch Inception + AlexNet weights into WEIGHTS_DIR (default: torch hub cache)
	$(PY) -m benchmark weights $(if $(WEIGHTS_DIR),--weights-dir $(WEIGHTS_DIR),)

perf: $(VENV)/.installed  ## scorer and translation throughput benchmark
	$(PY) -m benchmark perf

clean:  ## remove generated data and raw runs (keeps .venv and committed results)
	rm -rf data results/runs results/cache
