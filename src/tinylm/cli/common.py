"""What the subcommands share: their registration, the one-line usage error and the
run-directory argument.

The lines a command prints come from tinylm.output, through ``CONSOLE``.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any, Callable

from tinylm.output import CONSOLE  # noqa: F401  (what the commands print through)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which defers it to a step boundary itself)."""


class UsageError(Exception):
    """A command line that cannot be parsed: printed as one line, exit code 2."""


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, wrapped at spaces only: a name such as mlp-classic or a flag such
    as --weight-decay inside a sentence is never cut at its hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))


class DefaultsHelpFormatter(HelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The same wrapping, each flag's help ending with its default."""


class Parser(argparse.ArgumentParser):
    """argparse prints usage plus a message; tinylm prints the one clear line only."""

    def __init__(self, *args: Any, formatter_class: type = HelpFormatter, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def add_command(sub: argparse._SubParsersAction, name: str,
                handler: Callable[[argparse.Namespace], int], *, help: str, description: str,
                **options: Any) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name``, which ``main`` runs as ``handler(args)``; its
    arguments are the caller's to add. ``options`` go to argparse (an epilog, a formatter)."""
    p = sub.add_parser(name, help=help, description=description, **options)
    p.set_defaults(handler=handler)
    return p


def add_run_dir(p: argparse.ArgumentParser, required: bool) -> None:
    """The run directory: ``-o DIR`` for train, which writes it; for the commands that read
    a run, a positional ``DIR`` as report and serve take it, ``-o DIR`` kept as an alias."""
    if not required:
        p.add_argument("-o", "--out-dir", default="out", metavar="DIR",
                       help="run directory (default: out/)")
        return
    p.add_argument("run_dir", nargs="?", default=None, metavar="DIR", help="the run directory")
    p.add_argument("-o", "--out-dir", default=None, metavar="DIR",
                   help="the run directory, as the positional DIR")
    p.set_defaults(needs_run_dir=True)


def run_dir_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Set ``args.out_dir`` from the positional DIR or -o; a usage error if neither or both."""
    if not getattr(args, "needs_run_dir", False):
        return
    given = [d for d in (args.run_dir, args.out_dir) if d is not None]
    if len(given) != 1 or (args.run_dir and args.out_dir and args.run_dir != args.out_dir):
        what = "no run directory given" if not given else "two run directories given"
        parser.error(f"{what}: name it once, as 'tinylm {args.command} DIR'")
    args.out_dir = given[0]
