"""Serving a model over HTTP: an OpenAI-compatible chat-completions API and a gradio web demo, one process.

`schema` validates OpenAI requests, `media` decodes their `data:` URIs, `conversation` renders them through
lamm-chat's `ChatSession`, `batching` answers concurrent requests in one `generate` call, `app` is the
FastAPI application, `demo` the gradio page, `cli` the `lamm-serve` command; `launch` starts it as a child
process and `walkthrough` drives the demo in Chromium (tests, benchmark, screenshot). Needs `lamm[serve]`.
"""
