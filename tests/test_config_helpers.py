"""The one helper per job: `to_plain`, `did_you_mean`, and the binding check building and validation share."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lamm.build import build_model
from lamm.components import build_component, check_component, component_problems
from lamm.config import compose
from lamm.plain_config import to_plain
from lamm.registry import Registry, UnknownComponentError
from lamm.suggest import closest, did_you_mean

BIN = Path(sys.executable).parent
THINGS = Registry("thing")


@THINGS.register("box")
def make_box(size: int, colour: str = "red", inner: dict | None = None, *, hidden_size: int = 0) -> tuple:
    return size, colour, inner, hidden_size


def test_to_plain_resolves_copies_and_recurses() -> None:
    node = OmegaConf.create({"a": 1, "b": "${a}", "c": [{"d": "${a}"}], "m": "???"})
    assert to_plain(node) == {"a": 1, "b": 1, "c": [{"d": 1}], "m": "???"}
    mixed = {"x": OmegaConf.create({"y": "${z}", "z": 2}), "t": (1, OmegaConf.create([3]))}
    assert to_plain(mixed) == {"x": {"y": 2, "z": 2}, "t": (1, [3])}
    original = {"name": "box", "k": {"v": 1}}
    copy = to_plain(original)
    copy.pop("name")
    copy["k"]["v"] = 2
    assert original == {"name": "box", "k": {"v": 1}}
    assert to_plain(None) is None and to_plain("s") == "s" and to_plain(3) == 3


def test_did_you_mean() -> None:
    assert did_you_mean("widht", ["width", "depth"]) == " Did you mean 'width'?"
    assert did_you_mean("zzz", ["width", "depth"]) == ""
    assert closest("acuracy", {"accuracy": 1, "ece": 2}) == "accuracy" and closest("x", []) is None


def test_component_problems_name_the_key() -> None:
    problems = component_problems(THINGS, {"name": "box", "sise": 3}, "thing", fixed=("hidden_size",))
    assert [str(p) for p in problems] == [
        "thing.sise: thing 'box' has no parameter 'sise'. Did you mean 'size'? Parameters: size, colour, inner",
        "thing.size: missing required key (thing 'box' needs it)",
    ]
    assert component_problems(THINGS, {"name": "box", "size": "big"}, "thing") == []
    [wrong] = component_problems(THINGS, {"name": "box", "size": "big"}, "thing", check_types=True)
    assert str(wrong) == "thing.size: expected int (thing 'box'), found str 'big'"
    [unknown] = component_problems(THINGS, OmegaConf.create({"name": "bx"}), "thing")
    assert unknown.unknown_name and str(unknown) == "thing.name: unknown thing 'bx'. Did you mean 'box'? Known things: box"
    [nested] = component_problems(THINGS, {"name": "box", "size": 1, "inner": {"name": "bx"}}, "thing",
                                  nested={"inner": THINGS})
    assert nested.key == "thing.inner.name"
    assert [str(p) for p in component_problems(THINGS, {"size": 1}, "thing")] == [
        "thing.name: missing required key (a thing: box)"]
    assert [str(p) for p in component_problems(THINGS, [1], "thing")] == [
        "thing: expected a mapping with a `name` (a thing name), found list"]


def test_check_and_build_raise_the_first_problem() -> None:
    with pytest.raises(UnknownComponentError, match=r"^unknown thing 'bx'\. Did you mean 'box'\?"):
        check_component(THINGS, "bx", "thing")
    with pytest.raises(ValueError, match=r"^thing\.sise: thing 'box' has no parameter 'sise'"):
        build_component(THINGS, {"name": "box", "size": 1, "sise": 3}, "thing", hidden_size=8)
    assert build_component(THINGS, OmegaConf.create({"name": "box", "size": 2}), "thing", hidden_size=8) == (
        2, "red", None, 8)


def test_building_and_lamm_recipes_validate_say_the_same(tmp_path: Path) -> None:
    """The same typo: `build_model` raises the very message `lamm recipes validate` prints for its line."""
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("# @package _global_\ndefaults:\n  - override /model/llm: tiny_random\n  - _self_\n"
                      "model:\n  encoder:\n    widht: 32\n")
    proc = subprocess.run([str(BIN / "lamm"), "recipes", "validate", str(recipe)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    with pytest.raises(ValueError) as built:
        build_model(compose("train", ["model/llm=tiny_random", "+model.encoder.widht=32"]).model)
    assert proc.stderr.strip().splitlines() == [f"{recipe}:7: {built.value}"]
    assert str(built.value).startswith("model.encoder.widht: encoder 'small_cnn' has no parameter 'widht'. "
                                       "Did you mean 'width'? Parameters: ")
