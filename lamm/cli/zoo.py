"""`lamm import FORMAT SRC OUT` and `lamm export --to FORMAT RUN OUT`: published checkpoints in and out."""
from __future__ import annotations

import argparse


def _import(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lamm.zoo.plan import parse_options
    from lamm.zoo.writer import import_checkpoint

    out = import_checkpoint(args.format, args.src, args.out, parse_options(args.option), verify=not args.no_verify)
    console = Console(soft_wrap=True)  # paths stay whole when piped
    console.print(f"imported {args.format} {args.src} -> {out}")
    console.print(f"  evaluate: lamm-eval checkpoint={out} benchmark=...\n  chat:     lamm-chat {out}\n"
                  f"  train:    lamm-train init_from={out} data=... data.path=...")
    return 0


def _export(args: argparse.Namespace) -> int:
    from lamm.zoo.plan import parse_options
    from lamm.zoo.writer import export_checkpoint

    out = export_checkpoint(args.to, args.run, args.out, parse_options(args.option))
    print(f"exported {args.run} as {args.to} -> {out}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser("import", help="turn a published checkpoint into a lamm run folder",
                         description="Formats: `lamm registry checkpoint_format`. OUT must be new or empty.")
    imp.add_argument("format", help="checkpoint format, e.g. hf_llava, llava_original, hf_blip2, openflamingo")
    imp.add_argument("src", help="the checkpoint file or folder")
    imp.add_argument("out", help="the new lamm run folder")
    imp.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="format option, repeatable (e.g. --option llm=PATH)")
    imp.add_argument("--no-verify", action="store_true",
                     help="skip rebuilding the model from the written folder (saves memory on big models)")
    imp.set_defaults(func=_import)
    exp = sub.add_parser("export", help="write a lamm run in another format (e.g. a Hugging Face LLaVA folder)",
                         description="Formats: `lamm registry export_format`. OUT must be new or empty.")
    exp.add_argument("--to", required=True, help="export format, e.g. hf_llava")
    exp.add_argument("run", help="the lamm run folder")
    exp.add_argument("out", help="the new output folder")
    exp.add_argument("--option", action="append", metavar="KEY=VALUE", help="format option, repeatable")
    exp.set_defaults(func=_export)
