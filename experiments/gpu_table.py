"""The reproduction table at GPU-window scale on a lent GPU machine: every row of benchmarks/reproduce.py
sized to <= 2 minutes on one H200, the whole table one command of <= 9 minutes.

    FASTSEQ_COMMIT=<sha> python experiments/gpu_table.py [--out DIR] [--rows ...]      (or: make gpu-table)

The data sets do not live on that machine: `make gpu-data` copies ../shared/data into build/data, which
the device tool carries with build/prebuilt (the extension, as for gpu_window). It writes four files to
--out (default $OUT): log, window.json (the steps), reproduction-cuda-gpu.json and reproduction-cuda-gpu.md.
Each row is written as it finishes, so a run stopped by its timeout keeps the rows it finished; the run
folders (checkpoints, models) go to a temporary folder that does not come back.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_window import PY, ROOT, Window, build  # noqa: E402
from reproduce import ROWS  # noqa: E402

DATA = os.path.join(ROOT, "build", "data")
TIMEOUT = 9 * 60 - 40  # seconds: nine minutes in all with the start and the prebuilt check


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "gpu-table"))
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    window = Window(args.out, dry_run=False, deadline_s=TIMEOUT + 40)
    if not os.path.isdir(DATA) and not os.environ.get("FASTSEQ_DATA"):
        window.step("table", None, note=f"no data: run `make gpu-data` and carry build/data ({DATA} is missing)")
        return 1
    env = {"FASTSEQ_DATA": os.environ.get("FASTSEQ_DATA") or DATA, "PYTHONUNBUFFERED": "1"}
    build(window, gpu=True)
    command = [PY, "experiments/reproduce.py", "--scale", "gpu", "--out", args.out,
               "--runs", tempfile.mkdtemp(prefix="fastseq-runs-"), "--rows", *args.rows]
    ok = window.step("table", command, env=env, budget=TIMEOUT)
    window.log.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
