"""`lamm-serve`: one process serving a model's web demo and its OpenAI-compatible API.

    lamm-serve runs/quickstart-prefix/<time>                # a run folder (or checkpoint=PATH)
    lamm-serve model/llm=tiny_random --port 8000            # an untrained model composed like lamm-train
    lamm-serve runs/... --host 0.0.0.0 --api-key "$KEY"     # reachable from other machines: set a key

Binds to 127.0.0.1 unless told otherwise. Heavy imports happen after argument parsing.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from typing import Sequence

EXTRA_HINT = "lamm-serve: error: serving needs the serve extra: pip install 'lamm[serve]'"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lamm-serve", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="*", metavar="RUN | OVERRIDE",
                   help="a run folder or checkpoint (also checkpoint=PATH), or overrides such as model/llm=tiny_random")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on the API, and KEY as the demo's password")
    p.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                   help="extra folder of configs for the overrides (like lamm-train --config-dir)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: from the run's name)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="requests decoded together (default 8)")
    p.add_argument("--queue-size", type=int, default=64, metavar="N",
                   help="requests waiting at most; beyond, 503 with Retry-After (default 64)")
    p.add_argument("--max-tokens", type=int, default=4096, metavar="N",
                   help="largest max_tokens a request may ask (default 4096; replies also stop at the context)")
    p.add_argument("--max-body-mb", type=float, default=32, metavar="MB", help="largest request body (default 32)")
    p.add_argument("--max-image-mb", type=float, default=16, metavar="MB", help="largest image, decoded (default 16)")
    p.add_argument("--max-image-pixels", type=int, default=16_000_000, metavar="N",
                   help="largest image in pixels (default 16,000,000)")
    p.add_argument("--no-demo", action="store_true", help="serve the API only")
    return p


def model_id(name: str) -> str:
    """A model id clients can type: the run's name with anything unusual replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9._/-]+", "-", name).strip("-") or "lamm"


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    args = _parser().parse_args(argv)
    try:
        import fastapi  # noqa: F401
        import gradio  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print(EXTRA_HINT, file=sys.stderr)
        return 2
    from lamm.cli.errors import run_guarded

    return run_guarded("lamm-serve", lambda: _serve(args))


def _fail(message: str) -> int:
    print(f"lamm-serve: error: {message}", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    from lamm.cli.chat import split_source

    try:
        run, overrides = split_source(args.source)
    except ValueError as exc:
        return _fail(str(exc))
    for flag in ("port", "max_batch", "queue_size", "max_tokens", "max_image_pixels"):
        if getattr(args, flag) < (0 if flag == "port" else 1):
            return _fail(f"--{flag.replace('_', '-')} must be at least {0 if flag == 'port' else 1}")
    if args.max_body_mb <= 0 or args.max_image_mb <= 0:
        return _fail("--max-body-mb and --max-image-mb must be positive")
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    import uvicorn

    from lamm.chat.loading import load_chat_model
    from lamm.cli.errors import reading_checkpoint
    from lamm.datasets.media import media_limits, set_media_limits
    from lamm.serve.app import create_app
    from lamm.serve.batching import BatchQueue
    from lamm.serve.conversation import Served, describe_recipe
    from lamm.serve.media import UploadLimits

    with reading_checkpoint(run):
        loaded = load_chat_model(run, overrides, args.config_dir)
    limits = UploadLimits(int(args.max_body_mb * 2**20), int(args.max_image_mb * 2**20), args.max_image_pixels)
    set_media_limits(dataclasses.replace(media_limits(), max_pixels=limits.max_image_pixels,
                                         max_file_bytes=limits.max_image_bytes))
    name = args.model_name or model_id(loaded.name)
    loaded.model.to(args.device)
    served = Served(loaded, name, args.device, limits, args.max_tokens, describe_recipe(run, overrides))
    session = served.session()  # the template renders (or fails) now, before the port opens
    batcher = BatchQueue(loaded.model, session.renderer.left, session.renderer.eos_ids, args.device,
                         args.max_batch, args.queue_size)
    app = create_app(served, batcher, args.api_key)
    if not args.no_demo:
        from lamm.serve.demo import mount_demo

        app = mount_demo(app, served, batcher, args.api_key)
    where = f"http://{args.host}:{args.port}"
    print(f"lamm-serve: {loaded.name} as model {name!r}; demo {where}/ , API {where}/v1 "
          f"({'API key required' if args.api_key else 'no API key'})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    batcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
