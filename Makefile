# The two commands: `make run` (the pipeline on params.yaml) and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml or requirements-judges.txt changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run seeds test test-fast smoke rehearse bench

# pytest-xdist workers for `make test`; each gets its share of the cores (tests/conftest.py) and a
# test module stays on one worker. TEST_WORKERS=0 runs every test in one process.
TEST_WORKERS ?= 2

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-judges.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-judges.txt
	touch $(STAMP)

# The listening page's browser test drives Debian's Chromium and its driver: apt, as root, from
# the distribution's registry (no browser download from elsewhere). Without root the test skips,
# and says so; CI is root and must run it.
CHROMEDRIVER := /usr/bin/chromedriver

$(CHROMEDRIVER):
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "make: no chromium; as root: apt-get install chromium chromium-driver (the browser test skips)"; fi

run: $(STAMP)
	python -m pipeline.params  # every section at once: a typo in evaluate.* is not found an hour in
	dvc repro

# The default over training seeds 0, 1 and 2 (the workspace's, then DVC experiments in temporary
# copies): mean and spread of every headline score and target -> metrics/seeds.md.
seeds: run
	specldm seeds 0 1 2

test: $(STAMP) $(CHROMEDRIVER)
	ruff check pipeline tests benchmarks
	python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# After each edit: everything not marked slow (no training, DAG or process-per-stage runs).
test-fast: $(STAMP)
	ruff check pipeline tests benchmarks
	python -m pytest -q -m "not slow"

# The whole DAG on configs/tiny.yaml in a scratch clone of HEAD: a broken DAG cannot land.
smoke: $(STAMP)
	rm -rf .smoke && git clone -q . .smoke
	cd .smoke && specldm profile tiny && dvc repro && dvc metrics show
	rm -rf .smoke

# configs/paper-rehearsal.yaml in a scratch clone: the paper's geometry and code paths (512 px,
# SD v1.4's layout, AudioSet via yt-dlp, mixtures, 64x400 sampling) in amounts for 2 CPU cores.
rehearse: $(STAMP)
	rm -rf .rehearse && git clone -q . .rehearse
	cd .rehearse && specldm profile paper-rehearsal && python tests/rehearsal.py
	rm -rf .rehearse

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do python $$script || exit 1; done
