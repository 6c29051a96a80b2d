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


def _demo(args: argparse.Namespace) -> int:
    from .train import demo

    demo.run(steps=args.steps, device=args.device, out_dir=args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastseq", description="Fast sequence-model kernels and models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, device, what was built, and the backend of each op")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_info)
    p = sub.add_parser("demo", help="train a character-level Transformer on tiny Shakespeare and print samples")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 5000 on a GPU, 300 on a CPU)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--out", default="runs/demo", help="folder for the log, the curve, the model and tokenizer")
    p.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
