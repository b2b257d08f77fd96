"""Entry point: `--pid1` inside the VM, `--fd N` (a connected socket) as a host subprocess."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shuru-agent")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pid1", action="store_true", help="set up the VM, then serve the port")
    mode.add_argument("--fd", type=int, help="serve an inherited, connected socket")
    args = parser.parse_args(argv)

    if args.pid1:
        from . import pid1

        return pid1.main()

    from .agent import Agent

    Agent(args.fd, reconnectable=False).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
