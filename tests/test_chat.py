"""lamm-chat: streaming decode, the generate hook, history and media, prompts equal to training, pipe and terminal."""
from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lamm.build import build_model
from lamm.chat.loading import load_chat_model, prompt_layout
from lamm.chat.session import ChatError, ChatSession, GenerationOptions
from lamm.chat.streaming import ReplyStreamer
from lamm.cli.chat import main
from lamm.testing import TINY_ENCODERS, tiny_model_config

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STATS = re.compile(r"\[turn (\d+)\] prompt (\d+) tokens; media (.+?); placeholders (.+?); reply (\d+) tokens")


# -- media files, written with the libraries the data pipeline reads them with ----------------------

@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    from lamm.datasets.synth.video import video_codec, write_mp4

    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "shape.png")
    codec = video_codec()
    if codec is None:
        pytest.skip("no mp4 encoder in this PyAV build")
    write_mp4(root / "clip.mp4", [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)], codec)
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(rng.normal(size=(300, 3))))
    o3d.io.write_point_cloud(str(root / "cloud.ply"), cloud)
    (root / "notes.txt").write_text("not a medium")
    return {"image": root / "shape.png", "video": root / "clip.mp4", "pointcloud": root / "cloud.ply",
            "text": root / "notes.txt"}


def _stats(output: str) -> list[dict]:
    def counts(text: str) -> dict[str, int]:
        return {} if text == "none" else {k: int(v) for k, v in (kv.split("=") for kv in text.split())}

    return [{"turn": int(m[1]), "prompt": int(m[2]), "media": counts(m[3]), "placeholders": counts(m[4])}
            for m in STATS.finditer(output)]


# -- streaming --------------------------------------------------------------------------------------

class _SlowTokenizer:
    """The tiny tokenizer without its Rust backend: exercises the decode-the-suffix fallback."""

    def __init__(self, tok) -> None:
        self._tok = tok

    def decode(self, ids, **kw):
        return self._tok.decode(ids, **kw)


@pytest.mark.parametrize("backend", ["decode_stream", "fallback"])
def test_streamed_text_adds_up_to_the_decoded_reply(tok, backend) -> None:
    tokenizer = tok if backend == "decode_stream" else _SlowTokenizer(tok)
    emoji = tok("héllo 日本 😀 ok", add_special_tokens=False).input_ids  # characters split over byte tokens
    rng = np.random.default_rng(0)
    spaced = tok("  red circle", add_special_tokens=False).input_ids
    for ids in [emoji, spaced, *(rng.integers(0, len(tok), 40).tolist() for _ in range(30))]:
        out = io.StringIO()
        pieces = []
        streamer = ReplyStreamer(tokenizer, out)
        for i in ids:
            before = out.getvalue()
            streamer.put(torch.tensor([i]))
            pieces.append(out.getvalue()[len(before):])
        streamer.end()
        assert streamer.text == tok.decode(ids, skip_special_tokens=True)
        assert out.getvalue() == streamer.written == streamer.text.lstrip()
        if ids is emoji:  # never a half character on screen
            assert "\ufffd" not in "".join(pieces) and "😀" in pieces


def test_stop_token_ends_the_stream(tok) -> None:
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok("red circle", add_special_tokens=False).input_ids
    out = io.StringIO()
    streamer = ReplyStreamer(tok, out, [stop])
    for i in [*ids, stop, *ids]:
        streamer.put(torch.tensor([[i]]))
    streamer.end()
    assert out.getvalue() == streamer.text == "red circle" and streamer.ids == ids


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_generate_streams_the_same_tokens_it_returns(fusion) -> None:
    from lamm.testing import media_text, random_media, text_batch

    model = build_model(tiny_model_config(fusion=fusion)).eval()
    ph = media_text(model, "image")
    batch = text_batch(model, [f"{ph} what colour?", f"hi {ph}{ph} and"], {"image": (random_media(model, "image", 3), [0, 1, 1])},
                       labels=False)

    class Recorder:
        def __init__(self) -> None:
            self.steps, self.ended = [], 0

        def put(self, token):
            self.steps.append(token.clone())

        def end(self):
            self.ended += 1

    rec = Recorder()
    plain = model.generate(batch, max_new_tokens=8, eos_token_id=-1)
    streamed = model.generate(batch, max_new_tokens=8, eos_token_id=-1, streamer=rec)
    assert torch.equal(plain, streamed) and torch.equal(torch.stack(rec.steps, 1), streamed) and rec.ended == 1


# -- the session: history, media, reset ----------------------------------------------------------------

@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_session_turns_media_and_reset(media, fusion) -> None:
    cfg = tiny_model_config(fusion=fusion)
    cfg["encoder"] = {"image": TINY_ENCODERS["small_cnn"], "pointcloud": TINY_ENCODERS["point_bert"]}
    model = build_model(cfg).eval()
    session = ChatSession(model, "chat", "empty")
    options = GenerationOptions(max_new_tokens=4)
    first = session.reply("hello", options)
    session.attach("image", str(media["image"]))
    session.attach("pointcloud", str(media["pointcloud"]))
    out = io.StringIO()
    second = session.reply("what is this?", options, out)
    assert out.getvalue().strip() == second.text
    session.attach("image", str(media["image"]))
    third = session.reply("and this?", options)
    per = model.media_specs()
    k = {m: per[m].projected_tokens if fusion == "prefix" else 1 for m in per}
    assert first.media == {} and second.media == {"image": 1, "pointcloud": 1}
    assert third.media == {"image": 2, "pointcloud": 1}
    assert third.placeholders == {"image": 2 * k["image"], "pointcloud": k["pointcloud"]}
    assert first.prompt_tokens < second.prompt_tokens < third.prompt_tokens
    assert [t.role for t in session.turns] == ["user", "assistant"] * 3
    prompt = session.prompt_text("next")
    assert prompt.count("<image>") == 2 and prompt.count("<|im_start|>user") == 4
    if fusion == "gated_xattn":  # each later medium closes the chunk of the one before
        ids = session.batch(session.conversation("next")).input_ids[0]
        assert int((ids == model.tokenizer.convert_tokens_to_ids("<|endofchunk|>")).sum()) == 2
    session.reset()
    again = session.reply("hello", options)
    assert again.prompt_tokens == first.prompt_tokens and again.text == first.text and again.media == {}


def test_session_errors_are_one_line_and_change_nothing(media, model) -> None:
    session = ChatSession(model, "chat", "empty")
    cases = [("image", str(media["image"].parent / "missing.png"), "missing file"),
             ("image", str(media["text"]), "cannot read image"),
             ("video", str(media["video"]), "no video encoder"),
             ("pointcloud", str(media["image"]), "no pointcloud encoder")]
    for modality, path, message in cases:
        with pytest.raises(ChatError, match=message) as info:
            session.attach(modality, path)
        assert "\n" not in str(info.value)
    with pytest.raises(ChatError, match="placeholder"):
        session.reply("look: <image>")
    session.context = 8
    with pytest.raises(ChatError, match="the model's context is 8; /reset"):
        session.reply("a question far longer than eight tokens, surely")
    assert session.pending == [] and session.turns == []


def test_prompt_layout_follows_the_data_config() -> None:
    assert prompt_layout({"name": "lamm", "template": "chat", "system_prompt": "empty"}) == ("chat", "empty")
    assert prompt_layout({"name": "lamm", "template": None, "system_prompt": None}) == ("vicuna_lamm", None)
    assert prompt_layout({"name": "mixture", "datasets": [{"name": "mmgpt"}, {"name": "lamm"}]}) == ("mmgpt", None)
    assert prompt_layout({"name": "interleaved"}) == ("auto", "none")


# -- a real trained run ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    args = [str(BIN / "lamm-train"), "debug=fast", "trainer.max_steps=2", "data.synth.sizes.train=16",
            "data.synth.sizes.test=4", f"paths.runs_dir={tmp / 'runs'}", f"paths.data_dir={tmp / 'data'}"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp, timeout=300, env=ENV, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = [p.parent for p in (tmp / "runs").glob("**/run.json")]
    return run


def imported_top_level(stderr: str) -> set[str]:
    """Top-level packages from `PYTHONPROFILEIMPORTTIME=1` output ("import time: self | cumulative | name")."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_eval_and_chat_on_a_trained_run_import_no_lightning(trained_run, tmp_path) -> None:
    """What a user types after training: lamm-eval and lamm-chat on the run folder; only training needs
    Lightning (and the torchmetrics/torchvision/scipy it pulls in: seconds per command)."""
    env = {**ENV, "PYTHONPROFILEIMPORTTIME": "1"}
    synth = trained_run.parents[2] / "data" / "synth-0"
    evaluate = subprocess.run([str(BIN / "lamm-eval"), f"checkpoint={trained_run}", "benchmark=shapes_ppl",
                               "+benchmark.scenario.limit=2", f"synth_root={synth}", f"output_dir={tmp_path}"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert list(tmp_path.glob("*/shapes_ppl/results.json"))
    chat = subprocess.run([str(BIN / "lamm-chat"), str(trained_run), "--max-new-tokens", "2"], input="hello\n/quit\n",
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert chat.returncode == 0, chat.stderr[-3000:]
    for result in (evaluate, chat):
        imported = imported_top_level(result.stderr)
        assert "torch" in imported  # the probe sees the imports: the model needs torch
        assert not imported & {"lightning", "pytorch_lightning", "torchmetrics"}


def test_run_prompts_equal_the_training_pipeline(trained_run) -> None:
    """The chat renders a question + image token for token as the run's own data pipeline does."""
    from omegaconf import OmegaConf

    from lamm.datasets.build import build_dataset

    loaded = load_chat_model(str(trained_run))
    assert (loaded.template, loaded.system_prompt) == ("chat", "empty")  # conf/data/synth_shapes.yaml
    data_cfg = OmegaConf.to_container(OmegaConf.load(trained_run / "config.yaml").data)
    data_cfg.pop("synth")  # lamm-train's own key (which data to generate), as lamm-train drops it
    model = loaded.model
    data = build_dataset(data_cfg, model.media_specs(), model.tokenizer, model.fusion.layout, split="val", training=False)
    sample = data.samples[0]
    expected = data[0]
    session = ChatSession(model, loaded.template, loaded.system_prompt)
    session.attach("image", sample.media[0].path)
    question = sample.turns[0].text.split("\n", 1)[1]  # the dataset put "<image>\n" in front, as the chat does
    batch = session.batch(session.conversation(question))
    assert batch.input_ids[0].tolist() == expected.input_ids.tolist()
    assert torch.equal(batch.media["image"].data[0], expected.media["image"][0])


def test_bad_sources_fail_with_one_line(tmp_path, capsys) -> None:
    cases = [([str(tmp_path / "no_such_run")], "no_such_run"), (["model/llm=no_such_llm"], "no_such_llm"),
             ([], "nothing to chat with"), ([str(tmp_path), "model/llm=tiny_random"], "one or the other")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("lamm-chat: error:"), err


# -- the console script, through a pipe and through a terminal ---------------------------------------

def test_pipe_multimodal_session(media, tmp_path) -> None:
    conf = tmp_path / "conf" / "model" / "encoder"
    conf.mkdir(parents=True)
    all_three = {"image": TINY_ENCODERS["small_cnn"], "video": TINY_ENCODERS["video"], "pointcloud": TINY_ENCODERS["point_bert"]}
    (conf / "tiny_all.yaml").write_text(yaml.safe_dump(all_three))
    script = "\n".join([
        "hello", f"/image {media['image']}", f"/video {media['video']}", f"/points {media['pointcloud']}",
        "what do you see?", f"/image {tmp_path / 'missing.png'}", f"/points {media['image']}",
        f"/image {media['image']}", f"/image '{media['image']}'", "", "and these two?", "/reset", "hello", "/bogus",
        "/quit", "never read",
    ]) + "\n"
    args = [str(BIN / "lamm-chat"), "model/llm=tiny_random", "model/encoder=tiny_all", "--config-dir", str(tmp_path / "conf"),
            "--stats", "--max-new-tokens", "6"]
    result = subprocess.run(args, input=script, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=120, env=ENV, cwd=tmp_path, check=False)
    out = result.stdout
    assert result.returncode == 0, out[-3000:]
    assert "you>" not in out and "lamm>" not in out  # no prompts when stdin is not a terminal
    notes = [line.split("lamm-chat: ", 1)[1] for line in out.splitlines() if "lamm-chat: " in line]
    kinds = [n.split()[0] if not n.startswith("[turn") else "turn" for n in notes]
    assert kinds == ["untrained", "turn", "attached", "attached", "attached", "turn", "error:", "error:",
                     "attached", "attached", "turn", "conversation", "turn", "error:"], notes
    assert "missing file" in notes[6] and "cannot read point cloud" in notes[7] and "unknown command /bogus" in notes[13]
    turns = _stats(out)
    assert [t["turn"] for t in turns] == [1, 2, 3, 1]
    assert [t["media"] for t in turns] == [{}, {"image": 1, "video": 1, "pointcloud": 1},
                                           {"image": 3, "video": 1, "pointcloud": 1}, {}]
    per_image = turns[1]["placeholders"]["image"]
    assert per_image > 0 and turns[2]["placeholders"] == {**turns[1]["placeholders"], "image": 3 * per_image}
    assert turns[0]["prompt"] < turns[1]["prompt"] < turns[2]["prompt"] and turns[3]["prompt"] == turns[0]["prompt"]


def _read_until(fd: int, buffer: bytearray, done, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done(bytes(buffer)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; terminal shows: {bytes(buffer)[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            buffer.extend(chunk)


def test_terminal_session_with_a_trained_run(trained_run, media) -> None:
    master, slave = pty.openpty()
    args = [str(BIN / "lamm-chat"), str(trained_run), "--stats", "--max-new-tokens", "5"]
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=ENV, close_fds=True)
    os.close(slave)
    screen = bytearray()
    try:
        lines = ["hello", f"/image {media['image']}", "what colour is the shape?", "/video x.mp4", "/quit"]
        for n, line in enumerate(lines, start=1):
            _read_until(master, screen, lambda s, n=n: s.count(b"you> ") >= n, 90)
            os.write(master, line.encode() + b"\n")
        _read_until(master, screen, lambda s: False, 30)  # until the child closes the terminal
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = screen.decode(errors="replace")
    assert "(image; template chat)" in text and text.count("lamm> ") == 2
    turns = _stats(text)
    assert [t["media"] for t in turns] == [{}, {"image": 1}]
    assert "error: this model has no video encoder" in text


def test_sampling_replays_with_the_same_seed(model) -> None:
    options = GenerationOptions(max_new_tokens=6, temperature=1.5, seed=3)
    runs = []
    for _ in range(2):
        session = ChatSession(model, "chat", "empty")
        runs.append([session.reply("hello", options).text, session.reply("hello", options).text])
    assert runs[0] == runs[1]
