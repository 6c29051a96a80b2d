# fastseq: the commands that do all set-up on a fresh machine.
#   make test        create .venv, install torch (CPU wheel), triton and the test tools, build
#                    fastseq._C, run the whole test suite
#   make lint        ruff (pyproject.toml's settings) over the whole tree; CI runs it before the tests
#   make demo        the main job: `fastseq info`, then `fastseq demo` (a character-level Transformer on
#                    tiny Shakespeare: progress, validation loss, a curve, samples)
#   make bench       the benchmark sweep (JSON under benchmarks/results/)
#   make gpu-window  the first command on a GPU machine (the lent H200), <= 7 minutes: the prebuilt extension,
#                    the machine's rates, the new kernels' correctness and speed, torch's CUDA backward
#                    precision, the `cuda` tests, the headline benchmarks (benchmarks/gpu_window.py); files in $OUT
#   make gpu-table   on a GPU machine, after gpu-window: the reproduction table at GPU-window scale (every
#                    row <= 2 minutes on an H200, <= 9 in all); carry build/data (make gpu-data) and build/prebuilt
#   make gpu-data    copy ../shared/data into build/data, for the device tool to carry to the GPU machine
#   make gpu-prebuild  build fastseq._C here for that machine's image (Python 3.12, torch 2.11 with CUDA
#                    13.0, sm_90a) into build/prebuilt, which the device tool carries; gpu-window loads it
#   make gpu-check   on a GPU machine with torch already there: build offline, run every test
#                    (the `cuda` ones too) and the full benchmark sweep; results and logs in one folder
#   make cmake-check compile kernels/ with nvcc through CMake (sm_80, sm_90a; ptxas report)
#   make image-check the GPU machines' Python 3.12, torch 2.11 (its CUDA 13.0 build) and Triton 3.6, on this
#                    CPU machine, in .venv-image (about 5 GB): builds fastseq._C with its CUDA kernels (nvcc)
#                    from a copy of the tree in build/image and runs every test there (Triton 3.6's
#                    ptxas allocates registers differently from 3.9's, so the AOT checks differ too)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TRITON_VERSION ?= 3.9.0
export FASTSEQ_DATA ?= $(abspath ../shared/data)
export MAX_JOBS ?= 2
TEST_JOBS ?= 2  # pytest-xdist workers: the suite is mostly single-threaded Python (the Triton interpreter)

SOURCES := setup.py pyproject.toml requirements-dev.txt $(wildcard csrc/*) $(wildcard kernels/*)

.PHONY: install test lint demo bench gpu-window gpu-table gpu-data gpu-prebuild gpu-check cmake-check image-check clean

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==$(TORCH_VERSION) triton==$(TRITON_VERSION) -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -p no:cacheprovider -n $(TEST_JOBS)

lint: install
	$(VENV)/bin/ruff check .

demo: install
	$(VENV)/bin/fastseq info
	$(VENV)/bin/fastseq demo

bench: install
	$(PY) -m fastseq.bench.sweep --out benchmarks/results

gpu-window:
	$(PYTHON) benchmarks/gpu_window.py

gpu-table:
	$(PYTHON) experiments/gpu_table.py

gpu-data:
	mkdir -p build/data && cp -r $(FASTSEQ_DATA)/. build/data/

gpu-check:
	bash benchmarks/gpu_check.sh

cmake-check:
	cmake -S . -B build/cmake -G Ninja
	cmake --build build/cmake --target fastseq_kernels

# The GPU machines' image, on this CPU machine. NumPy below 2.3: Triton 3.6's interpreter takes a
# 1-element array for an int, which 2.3 refuses.
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3) python3.12)
IMAGE_PY := $(CURDIR)/.venv-image/bin/python
$(IMAGE_PY):
	$(PYTHON312) -m venv .venv-image
	$(IMAGE_PY) -m pip install -q torch==2.11.0 triton==3.6.0 "numpy<2.3" -r requirements-dev.txt

# A copy of the tracked tree in build/$(1), with fastseq._C built there by the image's torch ($(2): how)
define image_build
	rm -rf build/$(1) && mkdir -p build/$(1)
	git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C build/$(1)
	cd build/$(1) && $(2)
	cd build/$(1) && $(IMAGE_PY) -c "import fastseq._C as C; i = C.build_info(); assert i['with_cuda'], i; print(i)"
endef

image-check: $(IMAGE_PY)
	$(call image_build,image,$(IMAGE_PY) -m pip install -q --no-build-isolation --no-deps -e .)
	cd build/image && $(IMAGE_PY) -m pytest -p no:cacheprovider

# build_ext in place, not an install: the venv's `import fastseq` stays image-check's
gpu-prebuild: $(IMAGE_PY)
	$(call image_build,prebuild,TORCH_CUDA_ARCH_LIST=9.0a $(IMAGE_PY) setup.py -q build_ext --inplace)
	rm -rf build/prebuilt && mkdir -p build/prebuilt
	strip --strip-debug -o build/prebuilt/$$(basename build/prebuild/fastseq/_C.*.so) build/prebuild/fastseq/_C.*.so
	$(IMAGE_PY) benchmarks/gpu_window.py --dry-run --out build/prebuild/dry-run
	ls -l build/prebuilt

clean:
	rm -rf build $(VENV) .venv-image fastseq/_C*.so *.egg-info .benchmarks
