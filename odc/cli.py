"""The `odc` command line. User errors (`OdcError`) become a message on stderr and exit code 1."""
from __future__ import annotations

import argparse
import sys

import odc
from odc.errors import OdcError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # bad flags: exit 1 with a hint, like every other user error
        self.print_usage(sys.stderr)
        print(f"odc: error: {message}\nhint: run '{self.prog} --help'", file=sys.stderr)
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="odc", description="odc, a model compiler for deep learning")
    p.add_argument("--version", action="version", version=f"odc {odc.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for register in COMMANDS:
        register(sub)
    return p


COMMANDS = []


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except OdcError as e:
        print(str(e) if str(e).startswith(("error", "/")) or ": error:" in str(e) else f"error: {e}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
