"""OpenAI chat-completions requests: validated into plain data, every refusal naming the field it is about.

Only what lamm can honour is accepted: `text` and `image_url` content parts, roles that alternate
user/assistant after an optional leading system message, and the sampling fields `max_tokens`
(or `max_completion_tokens`), `temperature`, `top_p`, `seed`, `stop`, `stream`, `n` = 1. Fields the
protocol has but lamm ignores (`user`, `frequency_penalty`, ...) are accepted and ignored, as OpenAI's
own servers do with fields they do not use.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_IMAGES = 16  # per request, the whole conversation
MAX_STOP_SEQUENCES = 4


class ApiError(Exception):
    """A request the client can fix: HTTP status, one-line message, and the field (`param`) it is about."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, " ".join(message.split()), param, kind

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass
class ImagePart:
    """An `image_url` part, still encoded: its URL and where it sits in the request."""

    url: str
    param: str  # e.g. messages[0].content[1].image_url.url


@dataclass
class Message:
    role: str
    text: str
    images: list[ImagePart] = field(default_factory=list)
    param: str = ""  # messages[i]


@dataclass
class ChatRequest:
    """A validated chat-completions request."""

    model: str
    system: str | None
    messages: list[Message]  # user, assistant, ..., user
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    stream: bool


def _number(body: dict, key: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{key} must be a number, got {type(value).__name__}", key)
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ApiError(400, f"{key} must be in {bounds}, got {value:g}", key)
    return float(value)


def _integer(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key} must be an integer, got {type(value).__name__}", key)
    return value


def _content(message: dict, where: str, role: str) -> tuple[str, list[ImagePart]]:
    content = message.get("content")
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list) or not content:
        raise ApiError(400, f"{where}.content must be a string or a non-empty list of parts", f"{where}.content")
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise ApiError(400, f"{at} must be an object with a 'type'", at)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{at}.text must be a string", f"{at}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            if role != "user":
                raise ApiError(400, f"{at}: images are accepted in user messages only, not in a {role} message", at)
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise ApiError(400, f"{at}.image_url.url must be a non-empty string", f"{at}.image_url.url")
            images.append(ImagePart(url, f"{at}.image_url.url"))
        else:
            raise ApiError(400, f"{at}.type {kind!r} is not supported; lamm accepts 'text' and 'image_url' parts",
                           f"{at}.type")
    return "\n".join(texts), images


def parse_chat_request(body: Any, served_model: str, max_tokens_limit: int) -> ChatRequest:
    """Validate a decoded JSON body; ApiError (4xx) names the first field that is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model", served_model)
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model")
    if model != served_model:
        raise ApiError(404, f"model {model!r} is not served here; GET /v1/models lists {served_model!r}", "model",
                       "not_found_error")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    system = None
    messages: list[Message] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with 'role' and 'content'", where)
        role = message.get("role")
        if role in ("system", "developer"):
            if i != 0:
                raise ApiError(400, f"{where}.role: a {role} message may only come first", f"{where}.role")
            text, _ = _content(message, where, role)
            system = text
            continue
        if role not in ("user", "assistant"):
            raise ApiError(400, f"{where}.role must be 'system', 'user' or 'assistant', got {role!r}", f"{where}.role")
        expected = "user" if not messages or messages[-1].role == "assistant" else "assistant"
        if role != expected:
            raise ApiError(400, f"{where}.role: expected a {expected} message (roles alternate user, assistant, ...), "
                           f"got {role!r}", f"{where}.role")
        text, images = _content(message, where, role)
        messages.append(Message(role, text, images, where))
    if not messages or messages[-1].role != "user":
        raise ApiError(400, "messages must end with a user message", "messages")
    images = sum(len(m.images) for m in messages)
    if images > MAX_IMAGES:  # each decoded image becomes a tensor: bound the memory one request can take
        raise ApiError(400, f"messages: {images} images in one request, over this server's {MAX_IMAGES}", "messages")

    max_tokens = _integer(body, "max_completion_tokens")
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _integer(body, "max_tokens"), "max_tokens"
    if max_tokens is None:
        max_tokens = min(256, max_tokens_limit)
    elif not 1 <= max_tokens <= max_tokens_limit:
        raise ApiError(400, f"{key} must be between 1 and {max_tokens_limit} on this server, got {max_tokens}", key)
    n = _integer(body, "n")
    if n not in (None, 1):
        raise ApiError(400, f"n must be 1 (one answer per request), got {n}", "n")
    seed = _integer(body, "seed")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, "stop must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    return ChatRequest(model, system, messages, max_tokens, _number(body, "temperature", 0.0, 0.0, 2.0),
                       _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True), seed, stops, stream)
