"""lamm-serve's OpenAI-compatible API, driven by the real `openai` client against the real console script.

One server per module (a tiny untrained model with image and point-cloud encoders, an API key, small
upload limits); answers are compared with the real `lamm-chat`'s, concurrent ones with sequential ones.
"""
from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lamm.testing import TINY_ENCODERS

openai = pytest.importorskip("openai", reason="the serve extra is not installed (pip install 'lamm[serve]')")
pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'lamm[serve]')")

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
KEY = "test-key-123"
LIMITS = ["--max-body-mb", "1", "--max-image-mb", "0.25", "--max-image-pixels", "1000000", "--max-tokens", "64"]


def png_uri(seed: int, size: tuple[int, int] = (40, 40)) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_file(uri: str, path: Path) -> Path:
    path.write_bytes(base64.b64decode(uri.split(",", 1)[1]))
    return path


def user(text: str, *uris: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text},
                                         *({"type": "image_url", "image_url": {"url": u}} for u in uris)]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """The server, a lamm-chat for the same model and the model in this process, started together (they overlap)."""
    from lamm.chat.loading import load_chat_model
    from lamm.serve.launch import start_server

    root = tmp_path_factory.mktemp("serve")
    conf = root / "conf" / "model" / "encoder"
    conf.mkdir(parents=True)
    encoders = {"image": TINY_ENCODERS["small_cnn"], "pointcloud": TINY_ENCODERS["point_bert"]}
    (conf / "tiny_image_points.yaml").write_text(yaml.safe_dump(encoders))
    overrides, config_dir = ["model/llm=tiny_random", "model/encoder=tiny_image_points"], str(root / "conf")
    source = [*overrides, "--config-dir", config_dir]
    server = start_server([*source, *LIMITS, "--no-demo"], root / "server.log", KEY, env=ENV, wait=False)
    chat = subprocess.Popen([str(BIN / "lamm-chat"), *source, "--max-new-tokens", "12"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=root)
    try:
        loaded = load_chat_model(None, overrides, [config_dir])  # the same seed and overrides as the server's
        server.wait_ready()
        yield {"root": root, "server": server, "chat": chat, "loaded": loaded}
    finally:
        chat.kill()
        server.stop()


@pytest.fixture(scope="module")
def server(setup):
    return setup["server"]


@pytest.fixture(scope="module")
def loaded(setup):
    return setup["loaded"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(client) -> str:
    [model] = client.models.list().data
    return model.id


def post(server, body: bytes | str, headers: dict | None = None) -> tuple[int, dict]:
    """A raw POST /v1/chat/completions: (status, JSON body). A server may answer 413 before the whole body is sent."""
    data = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **(headers or {})}
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    try:
        connection.putrequest("POST", "/v1/chat/completions")
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            if value:
                connection.putheader(name, value)
        connection.endheaders()
        try:
            connection.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early: the answer is waiting
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_answers_equal_lamm_chats_over_two_turns_with_one_and_two_images(setup, client, model_id) -> None:
    """The real lamm-chat, piped the same conversation, prints the API's answers (history and media included)."""
    root, chat = setup["root"], setup["chat"]
    first, second, third = png_uri(1), png_uri(2), png_uri(3, (24, 56))
    script = (f"/image {image_file(first, root / 'a.png')}\nwhat is in the picture?\n"
              f"/image {image_file(second, root / 'b.png')}\n/image {image_file(third, root / 'c.png')}\n"
              "and in these two?\n")
    turn1 = client.chat.completions.create(model=model_id, messages=[user("what is in the picture?", first)],
                                           max_tokens=12)
    answer1 = turn1.choices[0].message.content
    turn2 = client.chat.completions.create(
        model=model_id, max_tokens=12,
        messages=[user("what is in the picture?", first), {"role": "assistant", "content": answer1},
                  user("and in these two?", second, third)])
    answer2 = turn2.choices[0].message.content
    out, err = chat.communicate(script, timeout=120)
    assert chat.returncode == 0, err[-2000:]
    assert answer1 and answer2 and turn1.usage.completion_tokens == 12
    assert re.fullmatch(re.escape(answer1) + r"\s*\n" + re.escape(answer2) + r"\s*\n", out), (out, answer1, answer2)
    assert turn2.usage.prompt_tokens > 2 * turn1.usage.prompt_tokens  # three images and two turns of text


def test_streamed_answer_arrives_in_pieces_and_equals_the_whole_one(client, model_id) -> None:
    messages = [user("describe it", png_uri(4))]
    whole = client.chat.completions.create(model=model_id, messages=messages, max_tokens=16)
    stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(pieces) > 3 and "".join(pieces).strip() == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sampling_seed_and_stop(client, model_id, loaded) -> None:
    """A seeded sampled answer replays and equals lamm-chat's session for that seed; `stop` cuts the answer."""
    from lamm.chat.session import ChatSession, GenerationOptions

    kwargs = {"model": model_id, "messages": [user("tell me a story")], "max_tokens": 10, "temperature": 1.3,
              "top_p": 0.9, "seed": 7}
    once, again = (client.chat.completions.create(**kwargs).choices[0].message.content for _ in range(2))
    session = ChatSession(loaded.model, loaded.template, loaded.system_prompt)
    local = session.reply("tell me a story", GenerationOptions(10, 1.3, 0.9, seed=7)).text
    assert once == again == local
    greedy = client.chat.completions.create(model=model_id, messages=[user("stop here")], max_tokens=16)
    text = greedy.choices[0].message.content
    cut = text[len(text) // 2:len(text) // 2 + 2]
    assert cut.strip(), text
    stopped = client.chat.completions.create(model=model_id, messages=[user("stop here")], max_tokens=16, stop=[cut])
    assert stopped.choices[0].message.content == text[:text.index(cut)].strip()
    assert stopped.choices[0].finish_reason == "stop"


def test_models_and_health(server, client, model_id) -> None:
    card = client.models.list().data[0].model_dump()
    assert card["id"] == model_id == "untrained-tiny_random" and card["modalities"] == ["image", "pointcloud"]
    request = urllib.request.Request(f"{server.url}/health", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"


def _corpus(model_id: str) -> list[tuple[str, dict | bytes | str, dict, int, str]]:
    """(case, body, extra headers, status, text the message or param must name)."""
    good = {"model": model_id, "messages": [user("hi")], "max_tokens": 4}

    def with_image(url: str) -> dict:
        return {**good, "messages": [user("look", url)]}

    corrupt = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(200)).decode()
    huge = "data:image/png;base64," + "A" * 600_000  # ~450 KB decoded: over the 0.25 MB image limit
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 1000)).save(buffer, "PNG")  # 1.2 Mpx, over the 1 Mpx limit, in a 4 KB file
    many_pixels = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return [
        ("malformed JSON", '{"model": "x", "messages": [', {}, 400, "not valid JSON"),
        ("not an object", "[1, 2]", {}, 400, "JSON object"),
        ("unknown role", {**good, "messages": [{"role": "robot", "content": "hi"}]}, {}, 400, "messages[0].role"),
        ("assistant first", {**good, "messages": [{"role": "assistant", "content": "hi"}]}, {}, 400, "messages[0].role"),
        ("no messages", {**good, "messages": []}, {}, 400, "messages"),
        ("http URL", with_image("http://169.254.169.254/latest/meta-data"), {}, 400, "messages[0].content[1].image_url.url"),
        ("file URL", with_image("file:///etc/passwd"), {}, 400, "messages[0].content[1].image_url.url"),
        ("local path", with_image("/etc/passwd"), {}, 400, "messages[0].content[1].image_url.url"),
        ("huge base64", with_image(huge), {}, 413, "messages[0].content[1].image_url.url"),
        ("not base64", with_image("data:image/png;base64,@@@not-base64@@@"), {}, 400, "messages[0].content[1].image_url.url"),
        ("corrupt image", with_image(corrupt), {}, 400, "messages[0].content[1].image_url"),
        ("zero-size image", with_image("data:image/png;base64,"), {}, 400, "messages[0].content[1].image_url.url"),
        ("too many pixels", with_image(many_pixels), {}, 400, "messages[0].content[1].image_url"),
        ("video in an image part", with_image("data:video/mp4;base64,AAAAIGZ0eXBpc29t"), {}, 400,
         "messages[0].content[1].image_url.url"),
        ("unsupported part type", {**good, "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}, {}, 400,
         "messages[0].content[0].type"),
        ("image in an assistant message", {**good, "messages": [user("a"), {"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": png_uri(0)}}]}, user("b")]}, {}, 400, "messages[1].content[0]"),
        ("placeholder in the text", {**good, "messages": [user("look: <image>")]}, {}, 400, "messages[0].content"),
        ("unknown model", {**good, "model": "gpt-4o"}, {}, 404, "model"),
        ("max_tokens negative", {**good, "max_tokens": -1}, {}, 400, "max_tokens"),
        ("max_tokens huge", {**good, "max_tokens": 10**9}, {}, 400, "max_tokens"),
        ("temperature out of range", {**good, "temperature": 7}, {}, 400, "temperature"),
        ("stream not a boolean", {**good, "stream": "yes"}, {}, 400, "stream"),
        ("too many images", {**good, "messages": [user("look", *[corrupt] * 17)]}, {}, 400, "messages"),
        ("missing API key", good, {"Authorization": ""}, 401, "authorization"),
        ("wrong API key", good, {"Authorization": "Bearer nope"}, 401, "authorization"),
        ("oversized body", {**good, "padding": "x" * (1 << 20)}, {}, 413, "request body"),
        ("Content-Type not JSON", good, {"Content-Type": "text/plain"}, 415, "content-type"),
    ]


def test_bad_requests_get_one_line_4xx_naming_the_field_and_the_server_keeps_serving(server, client, model_id) -> None:
    corpus = _corpus(model_id)
    assert len(corpus) >= 15
    for case, body, headers, status, names in corpus:
        raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
        got, answer = post(server, raw, headers)
        error = answer.get("error", {})
        message = error.get("message", "")
        assert got == status, (case, got, answer)
        assert message and "\n" not in message and "Traceback" not in message, (case, answer)
        assert names in message or names == error.get("param"), (case, answer)
    ok = client.chat.completions.create(model=model_id, messages=[user("still there?", png_uri(6))], max_tokens=4)
    assert ok.choices[0].message.content is not None and ok.usage.completion_tokens > 0


def test_32_concurrent_requests_are_batched_and_equal_sequential_answers(server, client, model_id) -> None:
    prompts = [(f"question {i}: " + "more words " * i, png_uri(10 + i)) for i in range(4)]
    prompts += [(f"text only {i} " + "and " * (2 * i), None) for i in range(4)]

    def messages(text: str, uri: str | None) -> list[dict]:
        return [user(text, uri)] if uri else [{"role": "user", "content": text}]

    expected = [client.chat.completions.create(model=model_id, messages=messages(*p), max_tokens=12)
                .choices[0].message.content for p in prompts]
    asynchronous = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)

    async def all_at_once():
        return await asyncio.gather(*(asynchronous.chat.completions.create(
            model=model_id, messages=messages(*prompts[i % len(prompts)]), max_tokens=12) for i in range(32)))

    answers = [r.choices[0].message.content for r in asyncio.run(all_at_once())]
    assert answers == [expected[i % len(prompts)] for i in range(32)]
    request = urllib.request.Request(f"{server.url}/health", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["largest_batch"] > 1


def test_in_process_app_without_a_key_and_a_full_queue_answers_503(loaded) -> None:
    """No --api-key: no header needed. A full waiting line: 503 with Retry-After, then service resumes."""
    from fastapi.testclient import TestClient

    from lamm.serve.app import create_app
    from lamm.serve.batching import BatchQueue, Job
    from lamm.serve.conversation import Served

    served = Served(loaded, "tiny")
    session = served.session()
    batcher = BatchQueue(loaded.model, session.renderer.left, session.renderer.eos_ids, max_batch=1, max_waiting=1)
    http = TestClient(create_app(served, batcher))
    assert http.get("/v1/models").json()["data"][0]["id"] == "tiny"
    release = threading.Event()
    row = session.processed(session.conversation("hello"))
    batcher.submit(Job(row, 2, sink=lambda kind, value: release.wait(30)))  # holds the worker
    deadline = time.monotonic() + 30
    while (batcher.waiting.qsize() or not batcher.batches) and time.monotonic() < deadline:
        time.sleep(0.01)
    batcher.submit(Job(row, 2))  # the line is full now
    busy = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]["message"]
    release.set()
    while batcher.waiting.qsize() and time.monotonic() < deadline + 30:  # the worker takes the waiting job
        time.sleep(0.01)
    answered = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] > 0
    batcher.close()


def test_lamm_serve_without_the_extra_or_a_model_says_what_to_do(monkeypatch, capsys) -> None:
    from lamm.serve.cli import main

    assert main([]) == 2
    assert capsys.readouterr().err.strip() == "lamm-serve: error: nothing to chat with: give a run folder " \
        "(lamm-chat runs/NAME/TIME) or overrides (lamm-chat model/llm=smollm2_135m)"
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if `pip install 'lamm[serve]'` had not run
    assert main(["model/llm=tiny_random"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lamm-serve: error: serving needs the serve extra: pip install 'lamm[serve]'"]


def test_with_a_key_the_demo_asks_for_it_as_its_password(loaded) -> None:
    from fastapi.testclient import TestClient

    from lamm.serve.app import create_app
    from lamm.serve.batching import BatchQueue
    from lamm.serve.conversation import Served
    from lamm.serve.demo import mount_demo

    served = Served(loaded, "tiny")
    session = served.session()
    batcher = BatchQueue(loaded.model, session.renderer.left, session.renderer.eos_ids)
    http = TestClient(mount_demo(create_app(served, batcher, KEY), served, batcher, KEY))
    assert http.get("/health").status_code == 401 and http.get("/config").status_code == 401
    assert http.post("/login", data={"username": "me", "password": "wrong"}).status_code >= 400
    assert http.post("/login", data={"username": "me", "password": KEY}).status_code == 200
    assert http.get("/config").status_code == 200  # the login's cookie opens the demo
    batcher.close()


def test_a_client_that_leaves_stops_its_decoding(loaded) -> None:
    """A cancelled job gets no more text and no answer, and the batch ends without it; the next job is answered."""
    import queue

    from lamm.serve.batching import BatchQueue, Job
    from lamm.serve.conversation import Served

    session = Served(loaded, "tiny").session()
    batcher = BatchQueue(loaded.model, session.renderer.left, session.renderer.eos_ids)
    row = session.processed(session.conversation("tell me everything"))
    events: list[str] = []
    leaving = Job(row, 60)
    leaving.sink = lambda kind, value: (events.append(kind), setattr(leaving, "cancelled", True))
    batcher.submit(leaving)
    answered: queue.Queue = queue.Queue()
    batcher.submit(Job(row, 3, sink=lambda kind, value: answered.put(value) if kind == "done" else None))
    result = answered.get(timeout=60)
    batcher.close()
    assert result.completion_tokens == 3 and events == ["text"] and batcher.batches  # one piece of text, then nothing


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_every_fusion_with_image_video_and_points_answers_and_previews(fusion, tmp_path) -> None:
    """Each fusion, all three modalities at once: rendered, batched and answered; the demo's previews build."""
    import queue

    from lamm.build import build_model
    from lamm.chat.loading import ChatModel
    from lamm.datasets.synth.video import video_codec, write_mp4
    from lamm.serve.batching import BatchQueue, Job
    from lamm.serve.conversation import Served
    from lamm.serve.demo import cloud_figure, modality_of, video_frames
    from lamm.testing import tiny_model_config

    codec = video_codec()
    if codec is None:
        pytest.skip("no mp4 encoder in this PyAV build")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    write_mp4(tmp_path / "clip.mp4", [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)], codec)
    np.save(tmp_path / "cloud.npy", rng.normal(size=(300, 3)).astype(np.float32))
    cfg = tiny_model_config(fusion=fusion)
    cfg["encoder"] = {"image": TINY_ENCODERS["small_cnn"], "video": TINY_ENCODERS["video"],
                      "pointcloud": TINY_ENCODERS["point_bert"]}
    served = Served(ChatModel(build_model(cfg).eval(), "tiny", "chat", "empty"), "tiny")
    session = served.session()
    for name in ("a.png", "clip.mp4", "cloud.npy"):
        session.attach(modality_of(name), str(tmp_path / name))
    assert len(video_frames(session, str(tmp_path / "clip.mp4"))) == TINY_ENCODERS["video"]["num_frames"]
    assert len(cloud_figure(np.load(tmp_path / "cloud.npy")).data[0].x) == 300
    rows = [session.processed(session.conversation("what do you see?")), session.processed(served.session().conversation("hi"))]
    batcher = BatchQueue(served.chat.model, session.renderer.left, session.renderer.eos_ids)
    answers: list[queue.Queue] = [queue.Queue(), queue.Queue()]
    for row, out in zip(rows, answers):
        batcher.submit(Job(row, 5, sink=lambda kind, value, out=out: out.put((kind, value)) if kind != "text" else None))
    results = [out.get(timeout=60) for out in answers]
    batcher.close()
    assert [kind for kind, _ in results] == ["done", "done"] and results[0][1].completion_tokens > 0
    alone = lamm_chat_reply(served, tmp_path)
    assert results[0][1].text == alone


def lamm_chat_reply(served, tmp_path) -> str:
    """The same first turn through lamm-chat's own `ChatSession.reply`."""
    from lamm.chat.session import GenerationOptions

    session = served.session()
    for name, modality in (("a.png", "image"), ("clip.mp4", "video"), ("cloud.npy", "pointcloud")):
        session.attach(modality, str(tmp_path / name))
    return session.reply("what do you see?", GenerationOptions(max_new_tokens=5)).text
