# Two commands: `make demo` and `make test` (`make test-fast` for the edit loop). Each installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
BROWSER_STAMP := .cache/browser-checked
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export CDK_DISABLE_VERSION_CHECK := 1
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: demo test test-fast test-torch test-scale install synth lint format clean

demo: $(STAMP)
	$(PY) -m fedstep local --dataset digits --clients 3 --rounds 5 --out runs/demo

# The suite's files run on TEST_WORKERS processes (pytest-xdist; a file's tests stay on one worker, so a module's
# local cloud serves them all); TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3

# The checkout's own modules compiled to bytecode first: with PYTHONDONTWRITEBYTECODE set (as on CI) every
# process the suite starts (CLIs, agents, Lambda invocations) would compile them again (about 0.1 s each).
test: $(STAMP) $(NODE_STAMP) $(BROWSER_STAMP)
	$(PY) -m compileall -q -j 0 fedstep client_agent lambdas infra > /dev/null
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

# The edit loop: the unit and contract tiers (no local cloud, no process, no synthesis; tests/conftest.py
# says which test is in which tier), in under 2 minutes. `pytest -m cloud` (or e2e, infra) runs another tier.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "unit or contract" --durations=10

# The PyTorch client example (examples/torch_trainer.py): installs the CPU build of torch (requirements-torch.txt),
# then runs its tests, which `make test` skips when torch is not installed.
test-torch: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-torch.txt
	$(PY) -m pytest tests/test_torch_trainer.py

# 200 clients in the local cloud, 3 rounds, and a 1 GiB model aggregated by slices with functions of less
# memory than the model (several minutes each; skipped by `make test`).
test-scale: $(STAMP) $(NODE_STAMP)
	FEDSTEP_SCALE=1 $(PY) -m pytest -q -s tests/test_scale.py tests/test_sliced_1gib.py

install: $(STAMP) $(NODE_STAMP)

# uv (pinned in requirements-bootstrap.txt) installs the pinned requirements into the venv: about 45 s where
# pip takes over 2 minutes. It compiles every module to bytecode as pip does, on every core (with
# PYTHONDONTWRITEBYTECODE set, as on CI, nothing would be compiled later: each process would compile
# TensorFlow again). uv reads UV_INDEX_URL (or uv.toml), not pip.conf.
$(STAMP): requirements.txt requirements-dev.txt requirements-bootstrap.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bootstrap.txt
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -r requirements-dev.txt
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $(STAMP)

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Chromium renders `fedstep report` in a test. Best effort: Debian's package when running as root
# with apt; otherwise that test checks the HTML and PNG files instead and says so.
$(BROWSER_STAMP):
	@mkdir -p .cache
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "no Chromium (not root, or no apt): the report test validates the HTML and PNGs instead"
	@touch $@

synth: $(STAMP) $(NODE_STAMP)
	npx cdk synth --quiet

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf cdk.out .cache runs .pytest_cache
