# Two promises: `make demo` and `make test` each do all set-up on a fresh machine and are safe to re-run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: setup system-packages demo test lint clean

setup: system-packages $(STAMP)

# Debian packages for the real peers used in tests (Orthanc, DCMTK, dicom3tools, chromium: the review
# page's browser; zsh: checks the zsh completion script) and docker-compose (validates
# deploy/docker-compose.yml; no Docker engine needed). Only as root.
system-packages:
	@if ! command -v Orthanc >/dev/null || ! command -v dcmqrscp >/dev/null || ! command -v dciodvfy >/dev/null \
	     || ! command -v docker-compose >/dev/null || ! command -v chromium >/dev/null \
	     || ! command -v zsh >/dev/null; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc dcmtk dicom3tools docker-compose chromium zsh; \
	  else echo "note: not root; install orthanc dcmtk dicom3tools docker-compose chromium zsh with apt-get for the full test suite" >&2; fi; \
	fi

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first (its pin lies in the local cache), then sam2 built against it, then the
	# project: the pins are pyproject.toml's (deploy/pins.py reads them).
	$(PIP) install -q $$($(PYTHON) deploy/pins.py torch torchvision)
	SAM2_BUILD_CUDA=0 $(PIP) install -q --no-build-isolation $$($(PYTHON) deploy/pins.py sam2)
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/sam2ct demo --workdir $(DEMO_DIR)

lint: setup
	$(VENV)/bin/ruff check flows sam2ct dicom_io db tests bench deploy

test: setup lint
	$(VENV)/bin/pytest -q -rs --durations=15

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
