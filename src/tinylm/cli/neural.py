"""``tinylm train/sample/eval/diagnose`` for the neural models (placeholder)."""

from __future__ import annotations

import argparse
from typing import Callable

from tinylm.errors import ConfigError


def add_train_arguments(group: argparse._ArgumentGroup) -> None:
    """Add the neural-network flags of ``tinylm train``."""


def register_diagnose(sub: argparse._SubParsersAction, add_run_dir: Callable) -> None:
    """Add the ``diagnose`` subcommand."""


def train(args: argparse.Namespace) -> int:
    raise ConfigError(f"model {args.model!r} is not available yet")


def sample(args: argparse.Namespace) -> int:
    raise ConfigError("neural runs are not available yet")


def evaluate(args: argparse.Namespace) -> int:
    raise ConfigError("neural runs are not available yet")
