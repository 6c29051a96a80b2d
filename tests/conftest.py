"""Test set-up: without a GPU, Triton kernels run on the interpreter (set before Triton is imported);
tests marked `cuda` are skipped; every test gets a fresh random seed, printed so a failure can be rerun.
Backends are chosen by measurement as users get them, the choices kept in a file of this run's own. Parallel
workers (pytest-xdist) split the machine's cores between them."""
import os
import random
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# a choice cache of this process's own (each xdist worker too), unless the caller named one
if os.environ.get("FASTSEQ_CACHE", "") == os.environ.get("FASTSEQ_TEST_OWN_CACHE", ""):
    os.environ["FASTSEQ_CACHE"] = os.environ["FASTSEQ_TEST_OWN_CACHE"] = os.path.join(
        tempfile.mkdtemp(prefix="fastseq-tests-"), "choices.json")

# xdist workers share the cores: each gets its share of torch's threads (and so do the commands the tests
# start), else their thread pools oversubscribe the machine and wait on each other's descheduled threads
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = int(os.environ.get("FASTSEQ_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    print(f"seed={seed} (rerun with FASTSEQ_TEST_SEED={seed})")
    return seed
