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
    "temde.cli.compare",
    "temde.cli.bench",
    "temde.cli.ablate",
    "temde.cli.index",
    "temde.cli.serve",
    "temde.cli.models",
]


DESCRIPTION = ("Image-caption retrieval with T-EMDE: train SAF/SGR/VSE models whose global pooling is a trainable "
               "EMDE sketch (or SGRAF's attention, GPO, ... for comparison), evaluate them with confidence "
               "intervals, and search images by text.")
EPILOG = ("Start with `temde demo --quick` (prepares real emoji drawings once, trains the dual encoder with each "
          "pooling, prints every comparison with its 95% interval). `temde COMMAND --help` describes each "
          "command. Downloads and cached features go to $TEMDE_CACHE (default ~/.cache/temde).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temde", description=DESCRIPTION, epilog=EPILOG)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as given, for messages that print a command to run next
    try:
        result = args.run(args)
    except TemdeError as exc:
        print(f"temde {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # On a line of its own: a progress bar may hold the cursor at the end of its line.
        print(f"\ntemde {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `temde ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
