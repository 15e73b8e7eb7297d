"""A validated request -> the prompt row lamm-chat would build for the same conversation.

The messages are replayed into a fresh `lamm.chat.session.ChatSession`: each user message's images are
attached (decoded by the data pipeline's own loader, from the request's bytes) and the message rendered
by `ChatSession.conversation`, each assistant message recorded as the reply to it. So the API, the demo
and `lamm-chat` share one rendering (the training data pipeline's), token for token.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lamm.chat.loading import ChatModel
from lamm.chat.session import ChatError, ChatSession
from lamm.serve.batching import Job
from lamm.serve.media import UploadLimits, decode_image_uri
from lamm.serve.schema import ApiError, ChatRequest


@dataclass
class Served:
    """The model a server answers with, its prompt layout and limits."""

    chat: ChatModel
    model_id: str
    device: str = "cpu"
    limits: UploadLimits = UploadLimits()
    max_tokens_limit: int = 4096
    recipe: str = ""  # how the model was made: the run's recipe, or the overrides composing it

    def session(self, system_prompt: str | None = None) -> ChatSession:
        """A new conversation with the run's template (and system prompt unless one is given)."""
        system = self.chat.system_prompt if system_prompt is None else system_prompt
        return ChatSession(self.chat.model, self.chat.template, system, self.device)


def request_job(served: Served, request: ChatRequest) -> Job:
    """The job answering `request`; ApiError naming the message or part that cannot be rendered."""
    session = served.session(request.system)
    last = len(request.messages) - 1
    sample = None
    for i, message in enumerate(request.messages):
        if message.role == "assistant" and sample is not None:  # validated: it follows a user message
            session.record(sample, message.text)
            continue
        for image in message.images:
            data = decode_image_uri(image.url, image.param, served.limits)
            try:
                session.attach("image", image.param.removesuffix(".url"), data=data)
            except ChatError as exc:
                raise ApiError(400, str(exc), image.param) from None  # names the part
        try:
            sample = session.conversation(message.text)
        except ChatError as exc:
            raise ApiError(400, f"{message.param}.content: {exc}", f"{message.param}.content") from None
        if i == last:
            row = session.processed(sample)
            try:
                budget = session.new_token_budget(len(row.input_ids), request.max_tokens)
            except ChatError:
                raise ApiError(400, f"messages: the conversation is {len(row.input_ids)} tokens, the model's context "
                               f"is {session.context}", "messages") from None
            return Job(row, budget, request.temperature, request.top_p, request.seed, request.stop,
                       answer=session.renderer.template.reply)
    raise AssertionError("a validated request ends with a user message")


def describe_recipe(run: str | None, overrides: Sequence[str]) -> str:
    """The recipe a run folder (or checkpoint inside one) trained with, per its run.json; the overrides otherwise."""
    if not run:
        return "untrained: " + " ".join(overrides)
    for folder in [Path(run), *list(Path(run).parents)[:3]]:
        info = folder / "run.json"
        if info.is_file():
            data = json.loads(info.read_text())
            recipe = data.get("recipe") or {}
            # Values that look like paths stay private: /v1/models and the demo are seen by every client.
            shown = [str(a) for a in data.get("command", [])[1:]
                     if "=" in str(a) and not str(a).split("=", 1)[1].startswith(("/", ".", "~"))
                     and "/" not in str(a).split("=", 1)[1]]
            return recipe.get("name") or "overrides: " + " ".join(shown)
    return "unknown (no run.json)"


def model_card(served: Served) -> dict[str, Any]:
    """What /v1/models and the demo say about the model."""
    model = served.chat.model
    return {"id": served.model_id, "name": served.chat.name, "fusion": type(model.fusion).__name__,
            "modalities": sorted(model.media_specs()), "template": served.chat.template, "recipe": served.recipe}
