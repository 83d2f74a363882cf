# Everything runs inside a virtual environment at .venv, created on first use.
#   make train   the main job: python train.py with its defaults (LeNet-5 on MNIST, our layers)
#   make test    build the extension, then run the test suite
#   make demo    our layers next to torch's on the same inputs
#   make bench   benchmarks/bench.py: our kernels against torch.nn.functional
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
DEPS   := $(VENV)/.requirements-installed
# nvcc lives here on our machines; auto-detection picks /usr/local and fails.
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

.PHONY: build test train demo bench clean

$(DEPS): requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade -r requirements.txt
	touch $@

# Incremental: ninja only recompiles what changed (objects live in build/).
build: $(DEPS)
	$(PYTHON) setup.py build_ext --inplace

test: build
	$(PYTHON) -m pytest -q tests

train: build
	$(PYTHON) train.py

demo: build
	$(PYTHON) demo.py

bench: build
	$(PYTHON) benchmarks/bench.py

clean:
	rm -rf build custom_conv/*.so
