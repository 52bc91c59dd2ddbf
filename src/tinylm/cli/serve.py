"""``tinylm serve``: the playground of a trained run (tinylm.serve) until Ctrl-C."""

from __future__ import annotations

import argparse

from tinylm import runs, serve, settings
from tinylm.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="a local web page to sample from a trained run",
        description="Open the run in RUN_DIR and serve a page at http://HOST:PORT/ with a prompt "
        "box, temperature and top-k sliders, the probabilities of the next character as a bar "
        "chart, and samples marked new or copied. Bound to 127.0.0.1 (this machine only) unless "
        "--host says otherwise. Ctrl-C stops it.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (the -o of a run)")
    p.add_argument("--port", type=settings.NONNEG_INT.parse, default=8000, metavar="N",
                   help="port to listen on (default: 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 opens it to the "
                   "network)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.port > 65535:
        raise ConfigError(f"--port must be at most 65535, got {args.port}")
    opened = runs.open_run(args.run_dir)
    try:
        server = serve.make_server(serve.Playground(opened), args.host, args.port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    print(f"serving {args.run_dir} ({opened.kind}) at http://{host}:{port}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
