"""The umbrella `lamm` command: `lamm registry`, `lamm synth`, `lamm demo`, `lamm recipes`, `lamm import`,
`lamm export`, `lamm cache-features`."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _registry(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from lamm.registry import ALL_REGISTRIES

    table = Table(title="lamm registry")
    table.add_column("kind")
    table.add_column("names")
    for kind, registry in ALL_REGISTRIES.items():
        if args.kind and kind.replace(" ", "_") != args.kind.replace(" ", "_"):  # `checkpoint_format` too
            continue
        table.add_row(kind, ", ".join(registry.labelled_names()) or "-")  # plug-ins show their package
    Console().print(table)
    return 0


def _env(args: argparse.Namespace) -> int:
    """Where things come from: the facts to paste into a bug report."""
    import importlib.util
    import platform

    import lamm
    from lamm.llm.loaders import cache_dir

    hf_datasets = importlib.util.find_spec("datasets")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"lamm         {lamm.__version__} ({lamm.__file__})")
    print(f"lamm cache   {cache_dir()}")
    print(f"datasets     {hf_datasets.origin if hf_datasets else '(not installed)'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lamm.cli.demo import run_demo

    return run_demo(args.overrides)


def _synth_parser(sub: argparse._SubParsersAction) -> None:
    from lamm.datasets.synth.cli import add_arguments, run  # light: heavy imports happen in run()

    parser = sub.add_parser("synth", help="write the built-in offline datasets (LAMM format)")
    add_arguments(parser)
    parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lamm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("registry", help="list every registered component name per kind")
    reg.add_argument("kind", nargs="?", help="only this kind (encoder, projector, fusion, llm, ...)")
    reg.set_defaults(func=_registry)
    sub.add_parser("env", help="print versions and where packages resolve").set_defaults(func=_env)
    demo = sub.add_parser("demo", help="compose the default model, run a forward pass and generate")
    demo.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model/fusion=gated_xattn")
    demo.set_defaults(func=_demo)
    _synth_parser(sub)
    from lamm.cli.recipes import add_parser as add_recipes_parser  # light: heavy imports happen per subcommand

    add_recipes_parser(sub)
    from lamm.cli.zoo import add_parsers as add_zoo_parsers

    add_zoo_parsers(sub)
    from lamm.cli.features import add_parser as add_features_parser

    add_features_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lamm` console script."""
    from lamm.cli.errors import run_guarded

    args = build_parser().parse_args(argv)
    return run_guarded(f"lamm {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
