"""``tinylm recipes``: the named training protocols (tinylm.recipes) and what each sets."""

from __future__ import annotations

import argparse

from tinylm import settings
from tinylm.api import SETTINGS
from tinylm.cli.common import add_command
from tinylm.recipes import RECIPES, recipe_names


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``recipes`` subcommand."""
    p = add_command(sub, "recipes", run, help="list the training recipes and what each sets",
                    description="List the named training protocols of 'tinylm train --recipe "
                    "NAME' and every setting each of them fixes; explicit flags override them.")
    p.add_argument("name", nargs="?", choices=recipe_names(), help="show this recipe only")


def run(args: argparse.Namespace) -> int:
    for name in [args.name] if args.name else recipe_names():
        recipe = RECIPES[name]
        print(f"{name}: {recipe.about}")
        kinds = {f.name: settings.spec(f)["kind"] for cls in SETTINGS
                 for f in settings.setting_fields(cls)}
        flags = [f"{settings.flag_of(key)} {settings.show(value, kinds.get(key))}"
                 for key, value in recipe.settings.items()]
        print("  " + " ".join(flags))
    return 0
