# Two commands do all the set-up on a fresh machine:
#   make demo    # prepare the demo data, train the dual encoder with each pooling, report with 95% intervals
#   make test    # run the test suite
#   make serve   # after `make demo`: a search page over the demo's emoji test images (http://127.0.0.1:8000/)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-quick test test-slow serve

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/temde demo --out runs/demo

demo-quick: $(STAMP)
	$(BIN)/temde demo --quick --out runs/demo-quick

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# `make serve`: the demo's T-EMDE dual encoder (seed 0) over the emoji test split of the demo's data (the index holds
# exactly the cosine the model scores, so nothing is re-ranked). The index is rebuilt when the model is newer.
# Options: make serve SERVE_ARGS="--port 8080" SERVE_SPLIT=test_icons (see `temde serve --help`).
TEMDE_CACHE ?= $(HOME)/.cache/temde
DEMO_DATA := $(TEMDE_CACHE)/data/demo
DEMO_MODEL := runs/demo/runs/vse-small-temde-seed0/best.pt
SERVE_SPLIT ?= test_emoji
DEMO_INDEX := runs/demo/index-temde-seed0-$(SERVE_SPLIT)
SERVE_ARGS ?=

$(DEMO_MODEL):
	@echo "make serve: $@ not found: run \`make demo\` first (it trains the model this serves)" >&2; exit 2

$(DEMO_INDEX)/meta.json: $(DEMO_MODEL) | $(STAMP)
	$(BIN)/temde index build --checkpoint $(DEMO_MODEL) --data $(DEMO_DATA) --split $(SERVE_SPLIT) --out $(DEMO_INDEX) --force

serve: $(STAMP) $(DEMO_INDEX)/meta.json
	$(BIN)/temde serve --index $(DEMO_INDEX) $(SERVE_ARGS)
