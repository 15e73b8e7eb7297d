"""Registry: registration, did-you-mean errors, lazy plug-in loading, the `lamm registry` command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lamm.registry as registry_module
from lamm.registry import ENCODERS, Registry, UnknownComponentError

REPO = Path(__file__).resolve().parents[1]
LAMM = Path(sys.executable).parent / "lamm"


def test_register_and_build() -> None:
    reg = Registry("widget")

    @reg.register("square")
    def square(x: int) -> int:
        return x * x

    assert reg.build("square", x=3) == 9
    assert reg.names() == ["square"] and "square" in reg


def test_duplicate_name_is_refused() -> None:
    reg = Registry("widget")
    reg.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(float)


def test_unknown_name_lists_known_and_suggests() -> None:
    with pytest.raises(UnknownComponentError) as err:
        ENCODERS.get("smal_cnn")
    message = str(err.value)
    assert "unknown encoder 'smal_cnn'" in message and "Did you mean 'small_cnn'?" in message
    assert "point_bert" in message and "\n" not in message


def test_plugins_load_lazily_from_entry_points(monkeypatch) -> None:
    loaded = []

    class EntryPoint:
        name, value = "demo", "demo_pkg:register"

        def load(self):
            return lambda: loaded.append("registered") or Registry("x")

    class Broken(EntryPoint):
        name = "broken"

        def load(self):
            raise ImportError("no module named demo_broken")

    monkeypatch.setattr(registry_module, "_plugins_loaded", False)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [EntryPoint(), Broken()] if group == "lamm.plugins" else [])
    reg = Registry("widget")
    assert loaded == []  # nothing imported at construction
    reg.names()
    reg.names()
    assert loaded == ["registered"]  # once, on first lookup; the broken one is only logged


def test_lamm_registry_command_lists_every_kind() -> None:
    out = subprocess.run([str(LAMM), "registry"], capture_output=True, text=True, check=True, cwd=REPO).stdout
    for expected in ("encoder", "open_clip", "point_bert", "projector", "perceiver", "fusion", "gated_xattn",
                     "llm", "smollm2_135m", "tiny_random", "dataset", "scenario", "metric"):
        assert expected in out
