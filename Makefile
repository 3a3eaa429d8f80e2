# Everything runs from the project's own virtual environment, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make test` runs the test files in this many processes (pytest-xdist), one file per process at a time.
TEST_WORKERS ?= 2
PROMPTS ?= classname,a_photo_of,dataset,simple_imagenet,openai_imagenet

.DEFAULT_GOAL := help
.PHONY: help install java chromium slurm-packages slurm slurm-down assets demo explain test test-fast ui server server-user clean clean-store backup restore verify bench stress table

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) java chromium ## Create .venv/ and install the project with its dev extras (and Java, for the captioning metrics; Chromium, for the browser tests)

# pycocoevalcap (the captioning metrics) runs its PTB tokenizer and METEOR on Java: where none is on PATH, Debian's
# headless JRE is installed when apt-get can (as root); otherwise one line says what to install.
JRE := default-jre-headless
java:
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(JRE) (the captioning metrics run on Java)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q $(JRE) >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $(JRE) >/dev/null; }; \
	  else echo "no java on PATH: the captioning metrics need one (Debian/Ubuntu: sudo apt-get install $(JRE))"; fi; }

# The browser tests read every report page and the MLflow UI in Debian's headless Chromium (Playwright drives it): it
# is installed where apt-get can (as root); otherwise one line says what to install, and those tests skip saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (the browser tests render the report pages and the MLflow UI)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "no chromium on PATH: the browser tests will skip (Debian/Ubuntu: sudo apt-get install chromium)"; fi; }

# The SLURM launcher's fault tests run on a one-node SLURM cluster inside this machine (as root): Debian's packages,
# installed where apt-get can; otherwise one line says what to install, and those tests skip saying why.
SLURM_PACKAGES := slurm-wlm munge slurmdbd mariadb-server
slurm-packages:
	@command -v slurmctld >/dev/null 2>&1 && command -v slurmdbd >/dev/null 2>&1 && command -v mariadbd >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(SLURM_PACKAGES) (the SLURM launcher's tests run on a one-node cluster)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q $(SLURM_PACKAGES) >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $(SLURM_PACKAGES) >/dev/null; }; \
	  else echo "no SLURM here: the SLURM launcher's tests will skip (Debian/Ubuntu, as root: apt-get install $(SLURM_PACKAGES))"; fi; }

slurm: $(STAMP) slurm-packages ## A one-node SLURM cluster in outputs/slurm/ to try the SLURM launcher (as root; prints the SLURM_CONF to export)
	$(PY) -m pipeline.lab.slurm action=up $(ARGS)

slurm-down: $(STAMP) ## Stop the one-node SLURM cluster's daemons (by their pids)
	$(PY) -m pipeline.lab.slurm action=down $(ARGS)

assets: $(STAMP) ## Build the bundled synthetic dataset and tiny checkpoint if missing
	$(PY) -m pipeline.offline --outputs outputs

comma := ,
empty :=
space := $(empty) $(empty)
# The bundled tiny model's training run, a checkpoint every 300 steps in step order (expanded when the recipe runs,
# after `assets`).
CHECKPOINTS = $(shell ls -d $(CURDIR)/outputs/models/tiny-clip-run/checkpoints/step_*.pt | sort -V | paste -sd, -)
# `make demo` says what each step does and about how long is left: the times measured on a busy 2-core machine,
# 9 min in all the first time (6 of them training the tiny model, once), 1.5 min after (README gives them).
ASSETS_BUILT = test -f outputs/models/tiny-clip.pt -a -f outputs/models/tiny-clip-run/checkpoints/step_1500.pt -a -d outputs/data/shapes

demo: $(STAMP) ## Sweep the tiny model over the synthetic data with 5 prompt sets, its k-shot linear probes and its training checkpoints, check CLIP_benchmark's published results against open_clip's table, then draw its relevance maps; write each sweep's report.html and each table's page
	@$(ASSETS_BUILT) && echo "==> [1/8] the offline assets: built already" || echo "==> [1/8] building the offline assets, once: the synthetic datasets (seconds), then training the tiny CLIP for 1500 steps (about 6 min on 2 busy cores; its bar shows the time left). About 9 min left in all."
	@$(MAKE) --no-print-directory assets
	@echo "==> [2/8] sweep: the tiny model with 5 prompt sets (about 30 s; about 3 min left)"
	$(PY) -m pipeline -m model=tiny dataset=shapes prompts=$(PROMPTS)
	@echo "==> [3/8] sweep: its linear probes, 1 to 16 shots and the full probe, 3 seeds (about 1 min; about 2.5 min left)"
	$(PY) -m pipeline -m model=tiny dataset=shapes head=linear_probe head.k_shot=1,2,4,8,16,null head.seed=0,1,2
	@echo "==> [4/8] sweep: the 5 checkpoints of its training run (about 20 s; about 1.5 min left)"
	$(PY) -m pipeline -m model=tiny dataset=shapes prompts=dataset model.pretrained=$(CHECKPOINTS)
	@echo "==> [5/8] table: every result with its interval (about 10 s; about 1 min left)"
	$(PY) -m pipeline.aggregate intervals=true
	@echo "==> [6/8] table: each prompt set against prompts=dataset, paired (about 10 s)"
	$(PY) -m pipeline.aggregate layout=compare baseline=prompts:dataset
	@echo "==> [7/8] does it reproduce? CLIP_benchmark's published results against open_clip's table (a few seconds)"
	$(PY) -m pipeline.aggregate layout=reproduction reference=openclip results_dir=$(CURDIR)/pipeline/reports/published/clip_benchmark_benchmark.csv
	@echo "==> [8/8] relevance maps of 4 checkpoints on 6 images (about 30 s)"
	@$(MAKE) --no-print-directory explain
	@echo "Sweep reports: $$(ls -d $(CURDIR)/outputs/multirun/*/*/report.html | tail -4 | tr '\n' ' ')"
	@echo "Table pages: $(CURDIR)/outputs/tables/index.html"

# Four checkpoints of the bundled model's training run, in training order: the grid's columns.
EXPLAIN_MODELS = $(subst $(space),$(comma),$(foreach step,300 600 900 1500,$(CURDIR)/outputs/models/tiny-clip-run/checkpoints/step_$(step).pt))
EXPLAIN_IMAGES ?= 6
explain: assets ## Relevance maps of the tiny model over training on the first EXPLAIN_IMAGES shapes test images, each for its class prompt: the grid of images x checkpoints (relevance.png) in the sweep's folder
	$(PY) -m pipeline -m explain=relevance explain.images=$(EXPLAIN_IMAGES) model=tiny dataset=shapes model.pretrained=$(EXPLAIN_MODELS)
	@echo "Relevance grid: $$(ls -d $(CURDIR)/outputs/multirun/*/*/relevance.png | tail -1)"

test: assets java chromium slurm-packages ## Run every test, the slow end-to-end ones included (TEST_WORKERS processes, a test file each)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: assets java ## Run the fast unit tests only
	$(PY) -m pytest -m "not slow"

PORT ?= 5000
ui: $(STAMP) ## Serve the MLflow UI on the local store and print (and open) its runs view (PORT=5000)
	$(PY) -m pipeline.lab.ui port=$(PORT) $(ARGS)

server: $(STAMP) ## The lab's MLflow tracking server: PostgreSQL backend, proxied artifacts, on 127.0.0.1:5000 (ARGS=key=value ...)
	$(PY) -m pipeline.lab.server $(ARGS)

server-user: $(STAMP) ## Add a user to the running lab server: ARGS="name=NAME role=worker" (EDIT) or role=reader (READ)
	$(PY) -m pipeline.lab.users $(ARGS)

# What `make clean` may remove: only what the project regenerates. The tracking store (mlflow.db, mlartifacts/),
# the lab server's folder (server/: its database, artifacts, users and keys) and backups/ are never touched.
OUTPUTS ?= outputs
# The logs of the commands that run in outputs/ (Hydra names each after its module), and the browser tests' screenshots.
LOGS = mlflow-ui.log ui.log backup.log restore.log verify.log erase.log
REGENERATED = multirun runs tables data models data_cache plot_cache reference_wheels test_artifacts $(LOGS)
clean: ## Remove what the project regenerates (sweeps, tables, bundled assets, download caches); never the store or the server's folder
	rm -rf $(addprefix $(OUTPUTS)/,$(REGENERATED))

clean-store: $(STAMP) ## Delete the local store (ARGS=server=true: the lab server's folder): says what would go; CONFIRM=yes deletes it
	$(PY) -m pipeline.lab.erase confirm=$(if $(filter yes,$(CONFIRM)),true,false) $(ARGS)

backup: $(STAMP) ## One archive of the local store (ARGS=server=true: the lab server's) in outputs/backups/, consistent while jobs write
	$(PY) -m pipeline.lab.backup $(ARGS)

restore: $(STAMP) ## Restore FILE=archive into an empty store (outputs/, or folder=DIR; a server's into its folder)
	$(PY) -m pipeline.lab.restore file=$(FILE) $(if $(folder),to=$(folder)) $(ARGS)

verify: $(STAMP) ## Check every cached artifact against its checksum; failures are listed and never served again
	$(PY) -m pipeline.store.verify $(ARGS)

stress: $(STAMP) ## The lab server under load: 10 rounds of 8 parallel jobs against make server with authentication (about 30 min)
	$(PY) -m pipeline.bench --only lab --rounds 10

bench: $(STAMP) ## Speed figures against references measured in the same run: sweep, cached rerun, 80-template classifier, image embedding, open_clip's table, store size, open_clip's suite cached, tables over 50k results (~20 min on 2 cores)
	$(PY) -m pipeline.bench

MODELS ?= vit_b_32_openai,vit_b_32_laion2b
SUITE ?= datacomp38
# The protocol each suite's published tables were made with (the suite presets select the same one).
PROTOCOL = $(if $(filter datacomp38,$(SUITE)),datacomp,clip_benchmark)
table: $(STAMP) ## Sweep MODELS over SUITE (default datacomp38): open_clip's 38-dataset table (datacomp38) and the blog's tables in outputs/
	$(PY) -m pipeline -m suite=$(SUITE) model=$(MODELS) $(ARGS)
	$(if $(filter datacomp38,$(SUITE)),$(PY) -m pipeline.aggregate layout=openclip38 prompts=dataset output=$(CURDIR)/outputs/openclip38.csv)
	$(PY) -m pipeline.aggregate layout=blog prompts=dataset protocol=$(PROTOCOL) metric=acc1
	$(PY) -m pipeline.aggregate layout=blog prompts=dataset protocol=$(PROTOCOL) metric=mean_per_class_recall
