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

.PHONY: setup demo test test-all lint format bench clean

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q -c requirements.lock -e ".[dev,bench]"
	touch $@

setup: $(VENV)/.installed

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
