"""The model to chat with, and the prompt layout it was trained with.

A run folder is rebuilt by `lamm.training.export.load_for_inference`; Hydra overrides compose an
untrained model exactly as `lamm-train` would (`lamm.config.compose("train", ...)`). Either way the
template and system prompt come from the config's `data` node, so the chat renders prompts the way
that training run did (or would).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence


@dataclass
class ChatModel:
    """A model in eval mode plus the prompt layout to talk to it with."""

    model: Any
    name: str
    template: str  # a lamm.datasets.templates name, or "auto" (the tokenizer's chat template if it has one)
    system_prompt: str | None  # None: the template's default, as in a data config


def prompt_layout(data: Mapping[str, Any] | None) -> tuple[str, str | None]:
    """(template, system_prompt) a `data` config trains with; ("auto", "none") if it says nothing usable.

    A mixture trains with the layouts of its parts; the chat uses its first dataset's.
    """
    from lamm.datasets.templates import format_template

    data = dict(data or {})
    if data.get("name") == "mixture" and data.get("datasets"):
        return prompt_layout(data["datasets"][0])
    template = data.get("template") or format_template(str(data.get("name")))
    if template is None or template == "document":  # documents have no turns to chat in
        return "auto", "none"
    return template, data.get("system_prompt")


def load_chat_model(run: str | None = None, overrides: Sequence[str] = (),
                    config_dirs: Sequence[str | Path] = ()) -> ChatModel:
    """A trained run (folder or checkpoint), or an untrained model composed from Hydra overrides."""
    from lamm.plain_config import to_plain

    if run:
        from lamm.training.export import load_for_inference

        model, cfg = load_for_inference(run)
        name = "/".join(Path(run).resolve().parts[-2:])
    else:
        import torch

        from lamm.build import build_model
        from lamm.config import compose

        cfg = compose("train", list(overrides), config_dirs=config_dirs)
        torch.manual_seed(int(cfg.get("seed") or 0))  # the same random weights every time
        model = build_model(cfg.model).eval()
        name = "untrained " + str(cfg.model.llm.get("name", "model"))
    data = to_plain(cfg.get("data"))
    template, system_prompt = prompt_layout(data)  # type: ignore[arg-type]
    return ChatModel(model, name, template, system_prompt)
