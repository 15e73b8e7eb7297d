"""`lamm recipes list | show NAME | cp NAME DEST | validate FILE...`: find, read, fork and check recipes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from lamm.recipes.catalog import RUNNERS, list_recipes

    table = Table(title="lamm recipes", caption="lamm recipes show NAME | cp NAME DEST | validate FILE")
    for column in ("kind", "name", "description"):
        table.add_column(column, overflow="fold")
    for recipe in list_recipes(args.config_dir, args.kind):
        table.add_row(f"{recipe.kind} ({RUNNERS[recipe.kind]})", escape(recipe.name), escape(recipe.description))
    Console().print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from lamm.recipes.catalog import find_recipe
    from lamm.recipes.hashing import sha256_file

    recipe = find_recipe(args.name, args.config_dir)
    # The YAML goes to stdout byte for byte (so `show NAME > file` keeps the hash); facts go to stderr.
    print(f"# {recipe.kind} {recipe.name}: {recipe.path} (sha256 {sha256_file(recipe.path)})", file=sys.stderr)
    sys.stdout.write(recipe.path.read_text(encoding="utf-8"))
    sys.stdout.flush()
    return 0


def _cp(args: argparse.Namespace) -> int:
    from lamm.recipes.catalog import RUNNERS, copy_recipe, find_recipe

    recipe = find_recipe(args.name, args.config_dir)
    dest = copy_recipe(args.name, args.dest, args.config_dir)
    group = recipe.kind
    print(f"copied {group} {recipe.name} to {dest}; edit it, check it with `lamm recipes validate {dest}`, "
          f"run it with `{RUNNERS[group]} {group}={dest}`")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from lamm.recipes.catalog import find_recipe
    from lamm.recipes.validate import validate_file

    failed = 0
    for target in args.files:
        path, kind = Path(target), args.kind
        if not path.is_file() and not target.endswith((".yaml", ".yml")):
            recipe = find_recipe(target, args.config_dir)  # a recipe name works too
            path, kind = recipe.path, kind or recipe.kind
        try:
            report = validate_file(path, kind, args.config_dir, trusted=args.trust_recipe)
        except UnicodeDecodeError as exc:  # the reader names no file; this line does
            failed += 1
            print(f"{path}:1: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8", file=sys.stderr)
            continue
        if report.ok:
            needs = f"; set on the command line: {', '.join(report.needs)}" if report.needs else ""
            print(f"{path}: ok ({report.kind}, sha256 {report.sha256[:12]}{needs})")
        else:
            failed += 1
            for problem in report.problems:
                print(str(problem), file=sys.stderr)
    return 2 if failed else 0


def _one_line_errors(func):
    """File-system errors (an existing DEST, an unreadable file) as one line and exit code 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
            print(f"lamm recipes: error: {exc}", file=sys.stderr)
            return 2
    return run


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `lamm recipes` and its subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help="also look for recipes in DIR/experiment and DIR/benchmark (repeatable)")
    parser = sub.add_parser("recipes", help="list, show, copy and validate experiment and benchmark recipes")
    cmds = parser.add_subparsers(dest="recipes_command", required=True)
    lst = cmds.add_parser("list", parents=[common], help="every recipe: kind, name, description")
    lst.add_argument("--kind", choices=("experiment", "benchmark"))
    lst.set_defaults(func=_one_line_errors(_list))
    show = cmds.add_parser("show", parents=[common], help="print a recipe's YAML (path and sha256 on stderr)")
    show.add_argument("name", help="e.g. quickstart, shapes_ppl, experiment/lamm_2d")
    show.set_defaults(func=_one_line_errors(_show))
    cp = cmds.add_parser("cp", parents=[common], help="copy a recipe to edit (never overwrites)")
    cp.add_argument("name")
    cp.add_argument("dest", help="a new .yaml file, or a folder (created if needed) to hold NAME.yaml")
    cp.set_defaults(func=_one_line_errors(_cp))
    val = cmds.add_parser("validate", parents=[common],
                          help="check recipe files without building anything (exit 2 on problems)")
    val.add_argument("files", nargs="+", metavar="FILE", help="recipe files (or recipe names)")
    val.add_argument("--kind", choices=("experiment", "benchmark"), help="default: from the folder or the keys")
    val.add_argument("--trust-recipe", action="store_true", help="do not refuse _target_ and resolver calls")
    val.set_defaults(func=_one_line_errors(_validate))
