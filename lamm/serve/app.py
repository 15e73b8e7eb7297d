"""The FastAPI application: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`, the demo at `/`.

Every refusal is an OpenAI-style JSON error (`{"error": {"message", "type", "param"}}`) with a 4xx
status and a one-line message naming the field; an unexpected failure is a one-line 500, never a
stack trace, and the server goes on serving. With an API key, `/v1/*` and `/health` need
`Authorization: Bearer KEY` and the demo asks for the key as its password.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lamm.serve.batching import BatchQueue, Job, QueueFull, Result
from lamm.serve.conversation import Served, model_card, request_job
from lamm.serve.schema import ApiError, parse_chat_request

LOG = logging.getLogger("lamm.serve")
RETRY_AFTER_SECONDS = 1
PROTECTED = ("/v1", "/health")


def _error(err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is larger than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {int(declared):,} bytes, over this server's limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over this server's limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def create_app(served: Served, batcher: BatchQueue, api_key: str | None = None) -> FastAPI:
    """The API routes (the demo is mounted on top by `lamm.serve.demo.mount_demo`)."""
    app = FastAPI(title="lamm-serve", docs_url=None, redoc_url=None, openapi_url=None)
    prepare = ThreadPoolExecutor(1, thread_name_prefix="lamm-serve-prepare")  # renders requests one at a time

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if api_key is not None and path.startswith(PROTECTED):
            header = request.headers.get("authorization", "")
            if not header:
                return _error(ApiError(401, "missing API key: send the header 'Authorization: Bearer KEY'",
                                       "authorization", "authentication_error"))
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
                return _error(ApiError(401, "invalid API key in the Authorization header", "authorization",
                                       "authentication_error"))
        try:
            return await call_next(request)
        except ApiError as err:
            return _error(err)
        except Exception as exc:  # a bug: one line to the client, the traceback to the log, the server keeps serving
            LOG.exception("%s %s failed", request.method, path)
            message = f"internal error ({type(exc).__name__}); the server's log has the details"  # no paths to clients
            return _error(ApiError(500, message, None, "server_error"))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.model_id, "waiting": batcher.waiting.qsize(),
                "batches": batcher.batch_count, "largest_batch": batcher.largest_batch}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = model_card(served)
        return {"object": "list", "data": [{"id": card["id"], "object": "model", "created": 0, "owned_by": "lamm",
                                            **{k: v for k, v in card.items() if k != "id"}}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        with batcher.incoming():  # the batcher waits for this request's job rather than start without it
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                raise ApiError(415, f"the request's Content-Type must be application/json, got "
                               f"{content_type or 'none'!r}", "content-type")
            body = await _read_body(request, served.limits.max_body_bytes)
            try:
                decoded = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
            parsed = parse_chat_request(decoded, served.model_id, served.max_tokens_limit)
            loop = asyncio.get_running_loop()
            job = await loop.run_in_executor(prepare, request_job, served, parsed)
            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            job.sink = lambda kind, value: loop.call_soon_threadsafe(events.put_nowait, (kind, value))
            try:
                batcher.submit(job)
            except QueueFull as exc:
                return _error(ApiError(503, f"the server is busy ({exc}); retry in {RETRY_AFTER_SECONDS} s", None,
                                       "server_error"), {"Retry-After": str(RETRY_AFTER_SECONDS)})
        options = decoded.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        if parsed.stream:
            return StreamingResponse(_sse(job, events, served.model_id, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            while True:
                kind, value = await events.get()
                if kind == "error":
                    return _error(ApiError(500, value, None, "server_error"))
                if kind == "done":
                    return _completion(value, served.model_id)
        finally:  # a no-op once done; if the client went away, its row stops being decoded
            job.cancelled = True

    app.state.batcher = batcher
    app.state.served = served
    return app


def _completion(result: Result, model_id: str) -> dict[str, Any]:
    return {"id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason}],
            "usage": _usage(result)}


def _usage(result: Result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


async def _sse(job: Job, events: asyncio.Queue, model_id: str, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: a role delta, content deltas, a finish chunk, [DONE]."""
    cid, created = _completion_id(), int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield chunk({"content": value})
            elif kind == "error":
                yield f"data: {json.dumps(ApiError(500, value, None, 'server_error').body())}\n\n"
                break
            else:
                yield chunk({}, value.finish_reason)
                if include_usage:
                    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                            "choices": [], "usage": _usage(value)}
                    yield f"data: {json.dumps(body)}\n\n"
                break
    finally:  # normally a no-op; when the client went away mid-answer, its row stops being decoded
        job.cancelled = True
    yield "data: [DONE]\n\n"

