"""``tinylm report``: one HTML page about any runs (tinylm.report), written atomically."""

from __future__ import annotations

import argparse
from pathlib import Path

from tinylm import report
from tinylm.cli.common import add_command
from tinylm.errors import ConfigError
from tinylm.io import atomic_write_text


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    p = add_command(
        sub, "report", run, help="write one self-contained HTML page about one or more runs",
        description="Read the run directories given (any kind of run, also one still training) "
        "and write one HTML file with everything inline, no network needed: the train and val "
        "loss curves of every run overlaid (with a log-scaled step axis to switch to), the "
        "settings side by side with the differences highlighted, the final val and test loss "
        "and perplexity, the samples marked new or copied, the n-gram grid as a heat map, and "
        "the pictures the runs drew (bigram, loss, diagnostics).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (the -o of a run)")
    p.add_argument("-o", "--output", default="report.html", metavar="FILE",
                   help="the HTML file to write (default: report.html); an existing file is "
                   "replaced only if it is an earlier report")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"-o {str(out)!r} is a directory; give the HTML file to write")
    if out.exists() and not report.is_report(out):
        raise ConfigError(f"{str(out)!r} exists and is not a tinylm report: it is left alone; "
                          "choose another -o")
    views = [report.read_run(path) for path in args.runs]
    atomic_write_text(out, report.render(views))
    for view in views:  # names from the runs, escaped: they may hold terminal escapes
        print(f"{report.printable(view.name)}: {report.printable(view.model)} "
              f"({report.printable(view.kind)}), {view.records:,} records"
              + "".join(f"; {report.printable(note)}" for note in view.notes))
    print(f"wrote {report.printable(str(out))} ({out.stat().st_size / 1024:.0f} KB, "
          "self-contained)")
    return 0
