# Everything runs inside a virtual environment at .venv, created on first use.
#   make train   the main job: python train.py with its defaults (LeNet-5 on MNIST, our layers)
#   make test    build the extension, then run the test suite
#   make demo    our layers next to torch's on the same inputs
#   make bench   benchmarks/bench.py: our kernels against torch.nn.functional
#   make build   only build; custom_conv is installed in .venv (editable), so
#                `.venv/bin/python -c 'import custom_conv'` works from any directory
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
DEPS   := $(VENV)/.requirements-installed
INSTALLED := $(VENV)/.custom_conv-installed
# nvcc lives here on our machines; auto-detection picks /usr/local and fails.
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

.PHONY: build test train demo bench clean

$(DEPS): requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade -r requirements.txt
	touch $@

# Incremental: ninja only recompiles what changed (objects live in build/).
build: $(INSTALLED)
	$(PYTHON) setup.py build_ext --inplace

# Once per venv (again when the packaging changes): an editable install, built
# against the venv's torch without build isolation. It compiles in the same
# build/temp.* folder as the line above (see setup.py), so it reuses its objects.
$(INSTALLED): $(DEPS) pyproject.toml setup.py
	$(PYTHON) setup.py build_ext --inplace
	$(PYTHON) -m pip install --no-build-isolation --no-deps --no-index --editable .
	touch $@

test: build
	$(PYTHON) -m pytest -q tests

train: build
	$(PYTHON) train.py

demo: build
	$(PYTHON) demo.py

bench: build
	$(PYTHON) benchmarks/bench.py

clean:
	rm -rf build custom_conv/*.so custom_conv/_build_info.py
