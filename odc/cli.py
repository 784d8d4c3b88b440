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


def _register_data(sub):
    p = sub.add_parser("data", help="list the data sets odc finds, or fetch EMNIST")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    ls = actions.add_parser("list", help="show which data sets are found where")
    ls.add_argument("--data", metavar="DIR", help="look in DIR first, as compile-and-train --data does")
    ls.set_defaults(func=lambda args: print(_data().describe_data(args.data)))
    fetch = actions.add_parser("fetch", help="download and unpack EMNIST (about 560 MB)")
    fetch.add_argument("dataset", choices=["emnist"])
    fetch.add_argument("--url", help="the zip archive to download (default: the official NIST archive)")
    fetch.add_argument("--sha256", metavar="HEX", help="its expected SHA-256 (required with --url)")
    fetch.add_argument("--dest", metavar="DIR",
                       help="unpack into DIR/emnist (default: $ODC_DATA_HOME or ~/.cache/odc/data)")
    fetch.set_defaults(func=lambda args: print(
        f"EMNIST unpacked into {_data().fetch_emnist(args.dest, args.url, args.sha256)}"))


def _data():
    from odc.runtime import data
    return data


COMMANDS = [_register_data]


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
