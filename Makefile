# fastseq: the commands that do all set-up on a fresh machine.
#   make test        create .venv, install torch (CPU wheel), triton and the test tools, build
#                    fastseq._C, run the whole test suite
#   make demo        the main job: `fastseq info`, then `fastseq demo` (a character-level Transformer on
#                    tiny Shakespeare: progress, validation loss, a curve, samples)
#   make bench       the benchmark sweep (JSON under benchmarks/results/)
#   make gpu-check   on a GPU machine with torch already there: build offline, run every test
#                    (the `cuda` ones too) and the benchmark sweep; results and logs in one folder
#   make cmake-check compile kernels/ with nvcc through CMake (sm_80, sm_90a; ptxas report)
#   make triton36-check  the ahead-of-time compile checks again under Triton 3.6, the GPU machines'
#                    (its ptxas allocates registers differently from Triton 3.9's), in .venv-triton3.6
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.9.0
export FASTSEQ_DATA ?= $(abspath ../shared/data)
export MAX_JOBS ?= 2

SOURCES := setup.py pyproject.toml requirements-dev.txt $(wildcard csrc/*) $(wildcard kernels/*)

.PHONY: install test demo bench gpu-check cmake-check triton36-check clean

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==$(TORCH_VERSION) triton==$(TRITON_VERSION) -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -p no:cacheprovider

demo: install
	$(VENV)/bin/fastseq info
	$(VENV)/bin/fastseq demo

bench: install
	$(PY) benchmarks/sweep.py

gpu-check:
	bash benchmarks/gpu_check.sh

cmake-check:
	cmake -S . -B build/cmake -G Ninja
	cmake --build build/cmake --target fastseq_kernels

triton36-check:
	$(MAKE) VENV=.venv-triton3.6 TRITON_VERSION=3.6.0 install
	.venv-triton3.6/bin/python -m pytest -p no:cacheprovider tests/test_compile_checks.py

clean:
	rm -rf build $(VENV) .venv-triton3.6 fastseq/_C*.so *.egg-info .benchmarks
