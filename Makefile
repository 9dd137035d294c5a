# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-no-bf16 lint typecheck docs unit bench bench-quality tables clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/simclr train --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers on two cores; a test file stays on one worker (the torchrun tests share a port).
unit: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

# The manual (mkdocs.yml): --strict turns a broken link or anchor into a failure (not with -q,
# which hides the warnings that --strict counts).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d .cache/site

test: lint typecheck docs unit

# The suite as on a CPU without native bf16 (precision=auto's float32 branch), on any machine.
test-no-bf16: $(STAMP)
	SIMCLR_NATIVE_BF16=0 $(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

# The docs' tables from benchmarks/results/ (the suite checks they match).
tables: $(STAMP)
	$(BIN)/python benchmarks/tables.py

# lightly, the benchmark's peer, lives in its own environment: the project never depends on it.
# A .pth file lends it torch, torchvision and simclr from $(VENV) (no second multi-GB torch).
BENCH_VENV  := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): $(STAMP)
	test -x $(BENCH_VENV)/bin/python || $(BIN)/python -m venv $(BENCH_VENV)
	$(BIN)/python -c "import sysconfig; print('import site; site.addsitedir(%r)' % sysconfig.get_paths()['purelib'])" \
		> "$$($(BENCH_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_simclr_venv.pth"
	$(BENCH_VENV)/bin/python -m pip install -q lightly
	$(BENCH_VENV)/bin/python -c "import lightly, simclr, torch"
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench.py --lightly-python $(BENCH_VENV)/bin/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs .mypy_cache .ruff_cache .pytest_cache

# Pretrain + evaluate MNIST and the CIFAR-10 JPEG subset within a CPU budget (needs ../shared).
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py
