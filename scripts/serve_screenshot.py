"""Take the README's screenshot of lamm-serve's demo: docs/img/serve-demo.png.

    .venv/bin/python scripts/serve_screenshot.py                       # a tiny untrained model
    .venv/bin/python scripts/serve_screenshot.py runs/quickstart-prefix/<time>

Starts lamm-serve, walks the demo in headless Chromium (attach an image, ask, attach a point cloud)
as tests/test_serve_browser.py does, and saves the page.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from lamm.serve.launch import start_server
from lamm.serve.walkthrough import walk_demo
from lamm.testing import TINY_ENCODERS

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="*", help="lamm-serve's RUN or overrides (default: a tiny untrained model)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "serve-demo.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = args.source
        if not source:
            conf = root / "conf" / "model" / "encoder"
            conf.mkdir(parents=True)
            encoders = {"image": TINY_ENCODERS["small_cnn"], "pointcloud": TINY_ENCODERS["point_bert"]}
            (conf / "tiny_image_points.yaml").write_text(yaml.safe_dump(encoders))
            source = ["model/llm=tiny_random", "model/encoder=tiny_image_points", "--config-dir", str(root / "conf")]
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:96, :96]
        picture = np.stack([(xx * 2.6) % 256, (yy * 2.6) % 256, np.full_like(xx, 180)], -1).astype(np.uint8)
        Image.fromarray(picture).save(root / "picture.png")
        theta, z = rng.uniform(0, 2 * np.pi, 1500), rng.uniform(-1, 1, 1500)
        cloud = np.stack([np.sqrt(1 - z**2) * np.cos(theta), np.sqrt(1 - z**2) * np.sin(theta), z], -1)
        np.save(root / "sphere.npy", cloud.astype(np.float32))
        server = start_server(source, root / "server.log")
        try:
            seen = walk_demo(f"{server.url}/", root / "picture.png", root / "sphere.npy", args.out)
        finally:
            server.stop()
    print(f"{args.out}: {seen.status}")


if __name__ == "__main__":
    main()
