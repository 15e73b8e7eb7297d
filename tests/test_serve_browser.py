"""lamm-serve's web demo in a real headless Chromium (Debian's, driven by Playwright's Python package).

The user's steps: open the demo of a tiny model, attach an image, send a message, watch the answer
stream in, attach a point cloud and see its 3D preview, clear. A screenshot is kept in pytest's tmp folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lamm.testing import TINY_ENCODERS

pytest.importorskip("gradio", reason="the serve extra is not installed (pip install 'lamm[serve]')")
pytest.importorskip("playwright", reason="Playwright's Python package is missing (pip install 'lamm[serve]')")

from lamm.serve.walkthrough import find_chromium, walk_demo  # noqa: E402

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (scripts/setup.sh installs Debian's)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from lamm.serve.launch import start_server

    root = tmp_path_factory.mktemp("demo")
    conf = root / "conf" / "model" / "encoder"
    conf.mkdir(parents=True)
    encoders = {"image": TINY_ENCODERS["small_cnn"], "pointcloud": TINY_ENCODERS["point_bert"]}
    (conf / "tiny_image_points.yaml").write_text(yaml.safe_dump(encoders))
    server = start_server(["model/llm=tiny_random", "model/encoder=tiny_image_points", "--config-dir",
                           str(root / "conf")], root / "server.log", env={**os.environ, "OMP_NUM_THREADS": "1"})
    yield root, server
    server.stop()


def test_demo_in_chromium_attach_send_stream_and_preview_a_point_cloud(demo) -> None:
    root, server = demo
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    np.save(root / "cloud.npy", rng.normal(size=(500, 3)).astype(np.float32))
    shot = root / "serve-demo.png"
    seen = walk_demo(f"{server.url}/", root / "photo.png", root / "cloud.npy", shot, chromium=CHROMIUM)
    assert seen.attach_status[0].startswith("Attached image photo.png")
    assert seen.attach_status[1].startswith("Attached pointcloud cloud.npy")
    assert seen.reply.strip() and seen.status.endswith(("tokens (length).", "tokens (stop)."))
    growing = [s for s in seen.reply_snapshots if s.strip() and seen.reply.startswith(s.strip()[:20])]
    assert len({len(s) for s in growing}) > 2, seen.reply_snapshots  # the reply grew in several steps: streamed
    assert seen.cloud_preview and seen.cleared
    assert shot.stat().st_size > 10_000 and Image.open(shot).size[0] == 1280
