# Two commands do all set-up on a fresh machine:
#   make demo   - venv, install, embedded Redis if none answers, example model, worker, 300 images
#   make test   - venv, install, ruff, mypy, unit + integration + e2e tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install constraints demo test lint typecheck unit deploy-check integration e2e bench soak clean

# constraints.txt pins what CI and the images install (see that file).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Pins the versions now in .venv, keeping the file's header; local labels (+cpu) dropped.
# torchvision (the cuda extra) does not install beside the CPU torch: its pin is kept as it was.
constraints: install
	{ grep '^#' constraints.txt; { $(BIN)/python -m pip freeze --exclude-editable | grep -v '^#' \
		| sed -E 's/\+[A-Za-z0-9.]+$$//'; grep '^torchvision==' constraints.txt; } | LC_ALL=C sort -f -t= -k1,1; } \
		> constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: install
	$(BIN)/inferq demo

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

deploy-check: install
	$(BIN)/pytest -q tests/deploy

integration: install
	$(BIN)/pytest -q tests/integration

e2e: install
	$(BIN)/pytest -q tests/e2e

test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider tests

bench: install
	$(BIN)/inferq bench --model shapes --out bench-out

soak: install
	$(BIN)/inferq soak --minutes 3

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench-out
