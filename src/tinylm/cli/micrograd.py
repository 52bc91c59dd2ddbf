"""``tinylm micrograd``: the scalar-autograd demo (placeholder until the engine lands)."""

from __future__ import annotations

import argparse
from typing import Callable


def register(sub: argparse._SubParsersAction, add_run_dir: Callable) -> None:
    """Add the ``micrograd`` subcommand to the ``tinylm`` parser."""
