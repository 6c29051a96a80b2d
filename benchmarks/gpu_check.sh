#!/usr/bin/env bash
# One command for a GPU machine (torch, triton, nvcc, ninja and pytest already installed; no network):
# build fastseq offline, run the whole test suite (the `cuda` tests too) and the benchmark sweep.
# Everything lands in one folder: $GPU_CHECK_DIR, else $OUT (the device tool's), else ./gpu-check.
# At most 12 files: build.log info.txt tests.log bench.log {lstm,additive-attention,attention,models}-*.{json,png}
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${GPU_CHECK_DIR:-${OUT:-gpu-check}}
PY=${PYTHON:-python3}
mkdir -p "$DIR"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
status=0

{ nvidia-smi; nvcc --version; $PY -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('triton', triton.__version__)"; } > "$DIR/info.txt" 2>&1
echo "== build"
start=$(date +%s)
if ! $PY -m pip install --no-build-isolation --no-deps -e . > "$DIR/build.log" 2>&1; then
  tail -60 "$DIR/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
$PY -m fastseq info 2>&1 | tee -a "$DIR/info.txt"
echo "== tests"
$PY -m pytest -q -p no:cacheprovider -rfEs 2>&1 | tee "$DIR/tests.log" | tail -25 || status=1
grep -qE "(failed|error)" <(tail -1 "$DIR/tests.log") && status=1
echo "== benchmarks"
$PY -m fastseq.bench.sweep --out "$DIR" 2>&1 | tee "$DIR/bench.log" | tail -40 || status=1
exit $status
