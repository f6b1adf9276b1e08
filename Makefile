# ComfyUI-MOVA developer entry points.
#   make venv   create .venv and install the ComfyUI host + pack deps + browser tooling (idempotent)
#   make test   every test, including the real-host (`host`) and browser (`browser`) ones
#   make demo   run the image-to-video+audio workflow through a real ComfyUI; prints the mp4 path
#   make gpu-check  on a machine with a GPU: one table of PASS/FAIL rows (bench/gpu_check.py; < 8 min)
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv test test-fast demo gpu-check clean-artifacts

venv:
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	bash scripts/install_host.sh $(VENV) --with-browser

# -m "" overrides the default marker filter in pyproject.toml, so host and browser tests run.
# pytest exits 5 when it collected no test: that is a failure here, like any non-zero code.
test: venv
	$(PYTHON) -m pytest tests -m "" -ra $(PYTEST_ARGS); \
	code=$$?; \
	if [ $$code -eq 5 ]; then echo "make test: pytest collected no tests (exit 5) - failing" >&2; fi; \
	exit $$code

# Fast unit tests only (no server, no browser).
test-fast:
	$(PYTHON) -m pytest tests -ra $(PYTEST_ARGS)

demo: venv
	$(PYTHON) scripts/demo.py --venv $(VENV)

# The first thing to run on a GPU machine; GPU_CHECK_ARGS e.g. "--quick" or "--checkpoint models/mova/MOVA-360p".
gpu-check: venv
	$(PYTHON) -m bench.gpu_check $(GPU_CHECK_ARGS)

clean-artifacts:
	rm -rf tests/artifacts demo-output
