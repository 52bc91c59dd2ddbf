"""``tinylm serve``: the playground of a trained run (tinylm.serve) until Ctrl-C."""

from __future__ import annotations

import argparse
import sys

from tinylm import runs, serve, settings
from tinylm.cli.common import add_command
from tinylm.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    p = add_command(
        sub, "serve", run, help="a local web page to sample from a trained run",
        description="Open the run in RUN_DIR and serve a page at http://HOST:PORT/ with a prompt "
        "box, temperature and top-k sliders, the probabilities of the next character as a bar "
        "chart, and samples marked new or copied. Bound to 127.0.0.1 (this machine only) unless "
        "--host says otherwise; it answers only requests addressed to it by that address (or "
        "localhost) from its own page, and each request's model work is bounded "
        f"({serve.MAX_CHARACTERS:,} characters, {serve.REQUEST_SECONDS:g} s). Ctrl-C stops it.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (the -o of a run)")
    p.add_argument("--port", type=settings.NONNEG_INT.parse, default=8000, metavar="N",
                   help="port to listen on (default: 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 opens it to the "
                   "network, with a warning)")


def run(args: argparse.Namespace) -> int:
    if args.port > 65535:
        raise ConfigError(f"--port must be at most 65535, got {args.port}")
    serve.check_host(args.host)  # before the run is opened: that may take a while
    opened = runs.open_run(args.run_dir)
    try:
        server = serve.make_server(serve.Playground(opened), args.host, args.port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    if not serve.is_loopback(args.host):
        print(f"tinylm: warning: --host {args.host} makes the playground reachable from the "
              "network: anyone who can reach this machine, and every web page their browsers "
              "open, can send it requests; leave --host out to keep it to this machine",
              file=sys.stderr, flush=True)
    print(f"serving {args.run_dir} ({opened.kind}) at http://{host}:{port}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
