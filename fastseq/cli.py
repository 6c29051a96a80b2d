"""The `fastseq` command."""
from __future__ import annotations

import argparse
import json
import sys


def _info(args: argparse.Namespace) -> int:
    from .diagnostics import collect, info

    if args.json:
        print(json.dumps(collect(), indent=2))
    else:
        info()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastseq", description="Fast sequence-model kernels and models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, device, what was built, and the backend of each op")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
