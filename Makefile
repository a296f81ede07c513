# The README's commands. `make demo` and `make test` each install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Offline data for development and CI: the shared checkout beside the repository, only where it exists (a data
# directory that is set but missing is an error). Elsewhere `make demo` first downloads what it needs.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/.),)
export IM_PIPELINE_DATA_DIR ?= $(SHARED_DATA)
endif
# The registered data sets configs/demo.yaml trains and tests on (`im-pipeline data fetch` checks their sha256);
# `make demo DATA_MIRROR=URL` fetches them from a mirror laid out like the data directory.
DEMO_DATA := paper_lima paper_dolly_3k
DATA_MIRROR ?=

.PHONY: setup setup-locked demo test test-all lint format clean

# requirements.lock pins every package with the sha256 of its PyPI files. `make setup` installs the lock's versions
# and markers as *constraints* with the hashes stripped ($(VENV)/constraints.txt), because pip refuses hashes in a
# constraints file, and because a CPU build of torch (download.pytorch.org/whl/cpu, or a local wheel) is the same
# version with other hashes than PyPI's CUDA build: a torch installed first is kept. `make setup-locked` installs
# exactly the lock with every hash checked (PyPI's files: on Linux the CUDA build of torch), then the package
# without dependencies.
$(VENV)/constraints.txt: requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	sed -e '/^[[:space:]]*--hash=/d' -e 's/[[:space:]]*\\$$//' requirements.lock > $@

$(VENV)/.installed: pyproject.toml $(VENV)/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q -c $(VENV)/constraints.txt -e ".[dev,bench]"
	touch $@

setup: $(VENV)/.installed

setup-locked:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q --require-hashes -r requirements.lock
	$(PIP) install -q --no-deps -e ".[dev,bench]"
	touch $(VENV)/.installed

demo: setup
	$(VENV)/bin/im-pipeline data fetch $(DEMO_DATA) $(if $(DATA_MIRROR),--mirror $(DATA_MIRROR))
	$(VENV)/bin/im-pipeline run configs/demo.yaml

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "" 

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
