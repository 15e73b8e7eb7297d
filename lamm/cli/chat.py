"""`lamm-chat`: talk to a trained run (or a model composed from overrides), several turns, any media.

    lamm-chat runs/quickstart-prefix/<time>                 # a run folder (or checkpoint=PATH)
    lamm-chat model/llm=smollm2_135m                        # an untrained model composed like lamm-train
    printf '/image cat.png\\nWhat is it?\\n' | lamm-chat runs/... --stats   # scripted, for batch use

Replies stream to stdout; notes and errors go to stderr; prompts are shown only on a terminal.
Heavy imports happen after argument parsing, so `lamm-chat --help` is instant.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence, TextIO

COMMANDS = {"/image": "image", "/video": "video", "/points": "pointcloud"}
HELP = """commands:
  /image PATH    attach an image to your next message (png, jpg, ...)
  /video PATH    attach a video (mp4, webm, ... or a folder of frames)
  /points PATH   attach a point cloud (.npy, .ply, .pcd)
  /reset         forget the conversation and every attached medium
  /help          this list
  /quit          leave (so does Ctrl-D)
anything else is your message (start it with // to begin it with /); media attached before it go with it."""
USER_PROMPT, MODEL_PROMPT = "you> ", "lamm> "


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lamm-chat", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Chat with a lamm model: a trained run folder, or Hydra overrides composing one like lamm-train.",
        epilog=HELP)
    p.add_argument("source", nargs="*", metavar="RUN | OVERRIDE",
                   help="a run folder or checkpoint (also checkpoint=PATH), or overrides such as model/llm=tiny_random")
    p.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                   help="extra folder of configs for the overrides (like lamm-train --config-dir)")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="longest reply (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default); >0 samples")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass when sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    p.add_argument("--template", default=None, help="prompt template (default: the one the run trained with)")
    p.add_argument("--system-prompt", default=None, metavar="TEXT",
                   help="system prompt: text, 'none', 'empty' or 'task' (default: the run's)")
    p.add_argument("--stats", action="store_true",
                   help="after each reply, print prompt tokens, media and placeholders to stderr")
    return p


def split_source(source: Sequence[str]) -> tuple[str | None, list[str]]:
    """(run folder, overrides): `key=value` items are overrides, except checkpoint=PATH."""
    run, overrides = None, []
    for item in source:
        if item.startswith("checkpoint="):
            item = item.split("=", 1)[1]
        elif not os.path.exists(item) and ("=" in item or (item.startswith("~") and not item.startswith("~/"))):
            overrides.append(item)  # key=value, +key=value, ~key (a folder may have "=" in its name: exists wins)
            continue
        if run is not None:
            raise ValueError(f"two runs given ({run}, {item}); chat with one at a time")
        run = item
    if run and overrides:
        raise ValueError(f"overrides ({' '.join(overrides)}) compose an untrained model; a run folder loads "
                         "its own config — give one or the other")
    if not run and not overrides:
        raise ValueError("nothing to chat with: give a run folder (lamm-chat runs/NAME/TIME) or overrides "
                         "(lamm-chat model/llm=smollm2_135m)")
    return run, overrides


def _read(interactive: bool, stdin: TextIO) -> str | None:
    """The next input line without its newline, or None at end of input."""
    if interactive:
        try:
            return input(USER_PROMPT)  # readline editing and history on a terminal
        except EOFError:
            print(file=sys.stdout)
            return None
    line = stdin.readline()
    return None if not line else line.rstrip("\r\n")


def _note(text: str) -> None:
    print(f"lamm-chat: {text}", file=sys.stderr, flush=True)


def chat_loop(session, options, stdin: TextIO, stdout: TextIO, interactive: bool, stats: bool) -> int:
    """Read lines until /quit or end of input; answer every message. Returns the exit code."""
    from lamm.chat.session import ChatError

    turn = 0
    while True:
        line = _read(interactive, stdin)
        if line is None:
            return 0
        text = line.strip()
        if not text:
            continue
        command, _, arg = text.partition(" ")
        try:
            if command in COMMANDS:
                ref = session.attach(COMMANDS[command], _unquote(arg.strip()))
                _note(f"attached {ref.modality} {ref.path} to your next message")
            elif command == "/reset":
                session.reset()
                turn = 0
                _note("conversation and media cleared")
            elif command in ("/quit", "/exit"):
                return 0
            elif command == "/help":
                print(HELP, file=sys.stderr, flush=True)
            elif command.startswith("/") and not command.startswith("//"):
                raise ChatError(f"unknown command {command}; /help lists the commands")
            else:
                text = text[1:] if text.startswith("//") else text  # "//" sends a message starting with "/"
                turn += 1
                if interactive:
                    stdout.write(MODEL_PROMPT)
                reply = session.reply(text, options, stdout)
                stdout.write("\n")
                stdout.flush()
                if reply.interrupted:
                    _note("reply interrupted")
                if stats:
                    media = " ".join(f"{m}={n}" for m, n in sorted(reply.media.items())) or "none"
                    holders = " ".join(f"{m}={n}" for m, n in sorted(reply.placeholders.items())) or "none"
                    _note(f"[turn {turn}] prompt {reply.prompt_tokens} tokens; media {media}; placeholders {holders}; "
                          f"reply {reply.new_tokens} tokens in {reply.seconds:.2f}s")
        except ChatError as exc:
            _note(f"error: {exc}")


def _unquote(path: str) -> str:
    if len(path) >= 2 and path[0] == path[-1] and path[0] in "'\"":
        return path[1:-1]
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    from lamm.cli.errors import run_guarded

    args = _parser().parse_args(argv)
    return run_guarded("lamm-chat", lambda: _chat(args))


def _chat(args: argparse.Namespace) -> int:
    try:
        run, overrides = split_source(args.source)
    except ValueError as exc:
        _note(f"error: {exc}")
        return 2
    if args.max_new_tokens < 1:
        _note("error: --max-new-tokens must be at least 1")
        return 2
    import warnings

    # Raised inside transformers/peft on every load, nothing a chat user can act on.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    from lamm.chat.loading import load_chat_model
    from lamm.chat.session import ChatError, ChatSession, GenerationOptions

    from lamm.cli.errors import reading_checkpoint

    with reading_checkpoint(run):  # failures: one line (lamm.cli.errors)
        loaded = load_chat_model(run, overrides, args.config_dir)
    template = args.template or loaded.template
    system_prompt = args.system_prompt if args.system_prompt is not None else loaded.system_prompt
    if args.template and args.system_prompt is None and template != loaded.template:
        system_prompt = None  # another template: its own default system prompt
    session = ChatSession(loaded.model.to(args.device), template, system_prompt, args.device)
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())
    modalities = ", ".join(sorted(loaded.model.media_specs())) or "text only"
    _note(f"{loaded.name} ({modalities}; template {session.template}); /help for commands")
    options = GenerationOptions(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    try:
        return chat_loop(session, options, sys.stdin, sys.stdout, interactive, args.stats)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except ChatError as exc:
        _note(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
