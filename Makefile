# bikebench: every target creates the virtual environment when it is missing.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SCALE ?= smoke
EXECUTOR ?= local
PARALLELISM ?= 2
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup test bench table6 table6-worlds paper rehearse check bless bless-paper tune world mlflow-ui optuna-dashboard slurm-up slurm-down clean-results

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null || true

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@# Install the pinned torch pair only when no torch is importable (a cluster brings its own CUDA torch).
	@if ! $(BIN)/python -c "import torch, torchvision" 2>/dev/null; then \
		echo "installing $(TORCH_PIN)"; $(BIN)/pip install -q --no-compile $(TORCH_PIN); fi
	$(BIN)/pip install -q --no-compile -e ".[dev]"
	@# pip compiles the ~15,700 installed modules one by one; compileall does it on every core (32 s against
	@# ~60 s on 2), so no job compiles its imports where PYTHONDONTWRITEBYTECODE is set. A few of torch's test
	@# files are newer Python than this one and fail to compile, as they do under pip: not an error.
	@$(BIN)/python -m compileall -qq -j 0 $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") || true
	@touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m pytest -q benchmarks --benchmark-enable --benchmark-only --benchmark-columns=min,mean,max,rounds $(PYTEST_ARGS)

world: setup
	$(BIN)/bikebench world build

# LAMBDA_FROM=<study name | study dir | best.json>: the fused cells also at the study's λ (from cached scores)
table6: setup
	$(BIN)/bikebench table6 --scale $(SCALE) --executor $(EXECUTOR) --parallelism $(PARALLELISM) $(if $(LAMBDA_FROM),--lambda-from $(LAMBDA_FROM))

# Table 6 on the worlds of WORLD_SEEDS (issue #15's miniature check: does a change keep the paper's ablation
# directions on every world?): seed 0 in results/, seed N in results/world-seed<N>/ (a results directory holds
# one world); then the worlds' directions side by side (`bikebench directions`, also in
# results/directions_worlds.md and .json): which hold on every world, which on some, which on none. ~10 min a seed on 2 cores.
WORLD_SEEDS ?= 0 1 2
table6-worlds: setup
	@set -e; dir() { if [ "$$1" = 0 ]; then echo results; else echo results/world-seed$$1; fi; }; \
	dirs=""; for s in $(WORLD_SEEDS); do \
		$(BIN)/bikebench table6 --world-seed $$s --results $$(dir $$s) --scale smoke --executor $(EXECUTOR) --parallelism $(PARALLELISM) $(ARGS); \
		dirs="$$dirs $$(dir $$s)"; done; \
	$(BIN)/bikebench directions $$dirs --out results/directions_worlds.md

# every table of the paper (1-6, A.3, the text's numbers, the zoo): results/paper.md, results/paper.html
paper: setup
	$(BIN)/bikebench paper --scale $(SCALE) --executor $(EXECUTOR) --parallelism $(PARALLELISM)

# Table 6 against its blessed baseline; every table too once `make paper` has written results/paper_results.json
PAPER_BASELINE ?= results/baselines/paper_smoke.json
check: setup
	$(BIN)/bikebench check
	@if [ -f results/paper_results.json ]; then \
		echo "$(BIN)/bikebench check --results results/paper_results.json --baseline $(PAPER_BASELINE)"; \
		$(BIN)/bikebench check --results results/paper_results.json --baseline $(PAPER_BASELINE); \
	else echo "no results/paper_results.json: run make paper, and make check compares every table too"; fi

# Re-bless the smoke baseline: Table 6 at the default seed (make table6) and at the training seeds
# SEEDS (same world, results/seeds/<s>/); each cell's tolerance = 2 x its std over the seeds.
SEEDS ?= 1 2
bless: table6
	@for s in $(SEEDS); do \
		$(BIN)/bikebench table6 --scale smoke --executor $(EXECUTOR) --parallelism $(PARALLELISM) --no-track \
			--results results/seeds/$$s --world-root results/world seed=$$s || exit 1; done
	$(BIN)/bikebench check --bless --spread $(foreach s,$(SEEDS),results/seeds/$(s)/table6_results.json)

# Re-bless the every-table baseline the same way: make paper at the default seed and at SEEDS
bless-paper: paper
	@for s in $(SEEDS); do \
		$(BIN)/bikebench paper --scale smoke --executor $(EXECUTOR) --parallelism $(PARALLELISM) --no-track \
			--results results/seeds/$$s --world-root results/world seed=$$s || exit 1; done
	$(BIN)/bikebench check --bless --results results/paper_results.json --baseline $(PAPER_BASELINE) \
		--spread $(foreach s,$(SEEDS),results/seeds/$(s)/paper_results.json)

# the study reads the cached scores of Table 6's BIKE run: table6 first (finished runs are skipped)
# WORKERS=N runs N study workers as one job array (EXECUTOR=local by default; slurm on a cluster)
tune: table6
	$(BIN)/bikebench tune sweeps/lambda_k.yaml $(if $(WORKERS),--workers $(WORKERS) --executor $(EXECUTOR))

# Table 6 at full scale rehearsed on this CPU against synthetic data (docs/rehearse.md); e.g.
# REHEARSE_ARGS="--backbone ViT-B-32" (what CI runs), EXECUTOR=slurm (the `make slurm-up` cluster)
rehearse: setup
	$(BIN)/bikebench rehearse table6 --executor $(EXECUTOR) $(REHEARSE_ARGS)

# the MLflow UI of results/ (PORT=5000); prints the link that opens each experiment's runs view (docs/mlflow.md)
PORT ?= 5000
mlflow-ui: setup
	$(BIN)/bikebench ui --results results --port $(PORT)

# STUDY=<name>: serve that study's Optuna storage (pip install -e ".[dashboard]"); the same PORT
optuna-dashboard: setup
	@test -n "$(STUDY)" || { echo "usage: make optuna-dashboard STUDY=<study name under results/studies>"; exit 2; }
	@$(BIN)/python -c "import optuna_dashboard" 2>/dev/null || $(BIN)/pip install -q -e ".[dashboard]"
	$(BIN)/optuna-dashboard --host 127.0.0.1 --port $(PORT) $$($(BIN)/python -c "from harness.tuning.mlflow_log import study_storage_url; print(study_storage_url('results', '$(STUDY)'))")

slurm-up:
	bash scripts/slurm_up.sh

slurm-down:
	bash scripts/slurm_down.sh

# everything the commands wrote under results/ (and under the results/world-seed<N>/ of `make table6-worlds`)
# except the worlds (minutes to rebuild) and the committed files
clean-results:
	@for d in results results/world-seed*; do [ -d "$$d" ] || continue; echo "cleaning $$d"; \
		( cd "$$d" && rm -rf runs cache studies submitit figures mlflow.db mlartifacts mlruns seeds \
			table6_*.json table*.md table*.tex table*.html table*_results*.json table*_missing.json paper.md paper.html paper_results.json ); done
