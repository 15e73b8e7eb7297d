"""Projector contract: shapes, token counts, gradients, config files and error messages."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from lamm.projectors.base import Projector
from lamm.registry import PROJECTORS, UnknownComponentError

IN, OUT = 64, 48
SMALL = {"num_latents": 8, "depth": 2, "heads": 2, "dim_head": 16, "ff_mult": 2}
CONF_DIR = Path(str(resources.files("lamm.conf"))) / "model" / "projector"


def build(name: str, **kw) -> Projector:
    return PROJECTORS.build(name, in_dim=IN, out_dim=OUT, **kw)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_lists_builtins():
    assert {"linear", "mlp", "perceiver"} <= set(PROJECTORS.names())


@pytest.mark.parametrize("name,kw", [("linear", {}), ("mlp", {}), ("mlp", {"depth": 3}), ("perceiver", SMALL)])
@pytest.mark.parametrize("s", [1, 7, 49])
def test_shapes_and_num_tokens(name, kw, s):
    proj = build(name, **kw)
    assert isinstance(proj, Projector)
    out = proj(torch.randn(3, s, IN))
    assert out.shape == (3, proj.num_tokens(s), OUT)


def test_mlp_structure_matches_llava():
    proj = build("mlp", depth=2)
    kinds = [type(m).__name__ for m in proj.net]
    assert kinds == ["Linear", "GELU", "Linear"]
    assert proj.net[0].out_features == OUT  # LLaVA-1.5: hidden width = LLM width
    assert [type(m).__name__ for m in build("mlp", depth=1).net] == ["Linear"]


@pytest.mark.parametrize("s", [5, 49, 300])
def test_perceiver_output_length_is_fixed(s):
    proj = build("perceiver", **SMALL)
    out = proj(torch.randn(2, s, IN))
    assert out.shape == (2, 8, OUT)
    assert proj.num_tokens(s) == 8


def test_perceiver_frames_change_output_and_validate():
    proj = build("perceiver", **SMALL, max_frames=4).eval()
    x = torch.randn(2, 4 * 9, IN)
    plain, timed = proj(x), proj(x, frames=4)
    assert timed.shape == plain.shape == (2, 8, OUT)
    assert not torch.allclose(plain, timed)
    # Frame embeddings make the resampler order-aware across frames (plain attention is not).
    swapped = x.view(2, 4, 9, IN).flip(1).reshape(2, 36, IN)
    assert torch.allclose(proj(swapped), plain, atol=1e-5)
    assert not torch.allclose(proj(swapped, frames=4), timed, atol=1e-5)
    with pytest.raises(ValueError, match="do not split"):
        proj(torch.randn(2, 10, IN), frames=4)
    with pytest.raises(ValueError, match="max_frames"):
        proj(torch.randn(2, 50, IN), frames=5)
    with pytest.raises(ValueError, match="without max_frames"):
        build("perceiver", **SMALL)(x, frames=4)


def test_perceiver_media_positions():
    proj = build("perceiver", **SMALL, max_media=3).eval()
    x = torch.randn(2, 6, IN)
    a = proj(x, media_positions=torch.tensor([0, 0]))
    b = proj(x, media_positions=torch.tensor([0, 2]))
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="media_positions"):
        proj(x, media_positions=torch.tensor([0, 3]))


def test_perceiver_batch_items_are_independent():
    proj = build("perceiver", **SMALL).eval()
    x = torch.randn(3, 11, IN)
    assert torch.allclose(proj(x)[1], proj(x[1:2])[0], atol=1e-5)


@pytest.mark.parametrize(
    "name,kw,fwd",
    [
        ("linear", {}, {}),
        ("mlp", {"depth": 3}, {}),
        ("perceiver", {**SMALL, "max_frames": 2, "max_media": 2}, {"frames": 2, "media_positions": torch.tensor([1, 0])}),
    ],
)
def test_gradient_reaches_every_parameter(name, kw, fwd):
    proj = build(name, **kw)
    x = torch.randn(2, 10, IN, requires_grad=True)
    proj(x, **fwd).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in proj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownComponentError, match="Did you mean 'linear'") as err:
        PROJECTORS.get("lineer")
    assert "perceiver" in str(err.value)


@pytest.mark.parametrize("name,kw", [("linear", {}), ("mlp", {}), ("perceiver", SMALL)])
def test_wrong_input_width_is_a_one_line_error(name, kw):
    proj = build(name, **kw)
    with pytest.raises(ValueError) as err:
        proj(torch.randn(2, 5, 32))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.endswith("expects [N, S, 64], got [2, 5, 32]")
    with pytest.raises(ValueError, match=r"expects \[N, S, 64\], got \[5, 64\]"):
        proj(torch.randn(5, IN))


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_yaml_configs_build(path):
    cfg = yaml.safe_load(path.read_text())
    assert "in_dim" not in cfg and "out_dim" not in cfg  # filled in by the model builder
    name = cfg.pop("name")
    if path.stem == "perceiver":  # Flamingo's sizes, checked but shrunk in width to stay fast
        assert (cfg["num_latents"], cfg["depth"], cfg["heads"], cfg["dim_head"]) == (64, 6, 8, 64)
    if path.stem == "qformer":  # BLIP-2's sizes, checked, then shrunk (tests/test_qformer.py compares with HF)
        assert (cfg["num_query_tokens"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
                cfg["intermediate_size"], cfg["cross_attention_frequency"]) == (32, 12, 768, 12, 3072, 2)
        cfg.update(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    proj = PROJECTORS.build(name, in_dim=IN, out_dim=OUT, **cfg)
    out = proj(torch.randn(2, 16, IN))
    assert out.shape == (2, proj.num_tokens(16), OUT)


def test_config_names_cover_builtins():
    names = {yaml.safe_load(p.read_text())["name"] for p in CONF_DIR.glob("*.yaml")}
    assert names == {"linear", "mlp", "perceiver", "qformer"}
