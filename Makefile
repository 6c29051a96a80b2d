# fastseq: the commands that do all set-up on a fresh machine.
#   make test        create .venv, install torch (CPU wheel), triton and the test tools, build
#                    fastseq._C, run the whole test suite
#   make demo        the main job: `fastseq info`, then `fastseq demo` (a character-level Transformer on
#                    tiny Shakespeare: progress, validation loss, a curve, samples)
#   make bench       the benchmark sweep (JSON under benchmarks/results/)
#   make gpu-check   on a GPU machine with torch already there: build offline, run every test
#                    (the `cuda` ones too) and the benchmark sweep; results and logs in one folder
#   make cmake-check compile kernels/ with nvcc through CMake (sm_80, sm_90a; ptxas report)
#   make image-check the GPU machines' torch 2.11 (its CUDA 13.0 build) and Triton 3.6, on this CPU
#                    machine, in .venv-image (about 5 GB): builds fastseq._C with its CUDA kernels (nvcc)
#                    from a copy of the tree in build/image and runs every test there (Triton 3.6's
#                    ptxas allocates registers differently from 3.9's, so the AOT checks differ too)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.9.0
export FASTSEQ_DATA ?= $(abspath ../shared/data)
export MAX_JOBS ?= 2

SOURCES := setup.py pyproject.toml requirements-dev.txt $(wildcard csrc/*) $(wildcard kernels/*)

.PHONY: install test demo bench gpu-check cmake-check image-check clean

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

# NumPy below 2.3: Triton 3.6's interpreter takes a 1-element array for an int, which 2.3 refuses.
IMAGE_PY := $(CURDIR)/.venv-image/bin/python
image-check:
	test -x $(IMAGE_PY) || $(PYTHON) -m venv .venv-image
	$(IMAGE_PY) -m pip install -q torch==2.11.0 triton==3.6.0 "numpy<2.3" -r requirements-dev.txt
	rm -rf build/image && mkdir -p build/image
	git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C build/image
	cd build/image && $(IMAGE_PY) -m pip install -q --no-build-isolation --no-deps -e .
	cd build/image && $(IMAGE_PY) -c "import fastseq._C as C; i = C.build_info(); assert i['with_cuda'], i; print(i)"
	cd build/image && $(IMAGE_PY) -m pytest -p no:cacheprovider

clean:
	rm -rf build $(VENV) .venv-image fastseq/_C*.so *.egg-info .benchmarks
