"""`temde <command>`: argument parsing only. Each command lives in its own module of this package,
which defines `register(subparsers)`; the parsed namespace carries the function to run as `args.run`."""
from __future__ import annotations

import argparse
import importlib
import sys

from temde.errors import TemdeError

# Sub-command modules, in the order `temde --help` lists them. Heavy imports stay inside each module's run().
COMMAND_MODULES = [
    "temde.cli.prepare",
    "temde.cli.train",
    "temde.cli.evaluate",
    "temde.cli.imports",
    "temde.cli.demo",
    "temde.cli.bench",
    "temde.cli.ablate",
    "temde.cli.index",
    "temde.cli.models",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temde", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command not built yet: leave it out of the parser
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except TemdeError as exc:
        print(f"temde {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"temde {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `temde ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
