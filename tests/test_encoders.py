"""Encoders: shapes, num_tokens, transforms end to end, checkpoint loading, errors; tiny models, CPU."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lamm.encoders import (
    Encoder,
    OpenCLIPEncoder,
    PointBERTEncoder,
    farthest_point_sample,
    knn_indices,
    uniform_frame_indices,
)
from lamm.registry import ENCODERS, UnknownComponentError
from lamm.testing import save_tiny_vision_tower

CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "encoder"

TINY_CLIP = {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 3, "head_width": 32}}
TINY_POINT = dict(num_points=128, num_groups=8, group_size=8, width=32, depth=1, heads=2, pointnet_dims=[16, 32, 64])
TINY_CNN = dict(image_size=32, width=32, base_channels=8, num_stages=3)


def pil_images(n: int, size: int = 40, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)) for _ in range(n)]


def end_to_end(encoder: Encoder, raw: list) -> torch.Tensor:
    """raw media -> encoder.transform -> stack -> forward, checking the contract on the way."""
    batch = torch.stack([encoder.transform(r) for r in raw])
    out = encoder.eval()(batch)
    assert out.shape == (len(raw), encoder.num_tokens(), encoder.output_dim)
    return out


def all_params_get_grads(encoder: Encoder, batch: torch.Tensor) -> None:
    # No parameter may sit unused: DDP fails on gradient-less parameters of a trained encoder.
    encoder.train()
    encoder(batch).sum().backward()
    unused = [n for n, p in encoder.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused


# --- registry -------------------------------------------------------------------------------------


def test_registry_names_and_did_you_mean() -> None:
    assert {"open_clip", "timm", "small_cnn", "small_vit", "video", "point_bert"} <= set(ENCODERS.names())
    with pytest.raises(UnknownComponentError, match="Did you mean 'small_cnn'"):
        ENCODERS.get("small_cn")


# --- from-scratch image encoders ------------------------------------------------------------------


def test_small_cnn_default_shapes_and_transform() -> None:
    enc = ENCODERS.build("small_cnn")
    assert (enc.modality, enc.num_tokens(), enc.output_dim) == ("image", 16, 256)
    out = end_to_end(enc, pil_images(2, size=50))
    assert out.shape == (2, 16, 256)
    all_params_get_grads(enc, torch.randn(2, 3, 64, 64))
    pickle.dumps(enc.transform)  # DataLoader workers need picklable transforms


def test_small_cnn_wrong_shape_message() -> None:
    enc = ENCODERS.build("small_cnn")
    with pytest.raises(ValueError, match=r"small_cnn expects images \[N, 3, 64, 64\], got \[2, 1, 64, 64\]"):
        enc(torch.randn(2, 1, 64, 64))


def test_small_cnn_pooled_tokens_follow_the_grid() -> None:
    torch.manual_seed(0)
    enc = ENCODERS.build("small_cnn", **TINY_CNN, pooled_tokens=["max", "mean"]).eval()
    grid = enc.grid * enc.grid
    assert enc.num_tokens() == grid + 2
    x = torch.randn(3, 3, 32, 32)
    out = enc(x) - enc.pos_embed
    assert out.shape == (3, grid + 2, enc.output_dim)
    feats = out[:, :grid]
    torch.testing.assert_close(out[:, grid], feats.amax(1))
    torch.testing.assert_close(out[:, grid + 1], feats.mean(1))
    with pytest.raises(ValueError, match=r"pooled_tokens must be distinct names from \['mean', 'max'\], got \['sum'\]"):
        ENCODERS.build("small_cnn", pooled_tokens=["sum"])


def test_small_cnn_overfits_two_colour_classes() -> None:
    torch.manual_seed(0)
    enc = ENCODERS.build("small_cnn", **TINY_CNN)
    head = torch.nn.Linear(enc.output_dim, 2)
    labels = torch.arange(16) % 2
    images = torch.randn(16, 3, 32, 32) * 0.3
    images[labels == 0, 0] += 1.0  # class 0 reddish, class 1 bluish
    images[labels == 1, 2] += 1.0
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(head(enc(images).mean(dim=1)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_small_vit_49_patches_and_cls() -> None:
    enc = ENCODERS.build("small_vit", image_size=112, patch_size=16, width=384, depth=6, heads=6)
    assert enc(torch.randn(1, 3, 112, 112)).shape == (1, 49, 384) and enc.num_tokens() == 49
    tiny = ENCODERS.build("small_vit", image_size=32, patch_size=8, width=32, depth=2, heads=2, include_cls=True)
    assert end_to_end(tiny, pil_images(3)).shape == (3, 17, 32)
    all_params_get_grads(tiny, torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"small_vit expects images \[N, 3, 32, 32\], got \[1, 3, 64, 64\]"):
        tiny(torch.randn(1, 3, 64, 64))


# --- open_clip ------------------------------------------------------------------------------------


def tiny_clip(**kw) -> OpenCLIPEncoder:
    return ENCODERS.build("open_clip", model_cfg=TINY_CLIP, **kw)


def test_open_clip_tiny_layers_cls_and_transform() -> None:
    torch.manual_seed(0)
    enc = tiny_clip(layer=-2, include_cls=False)
    assert (enc.num_tokens(), enc.output_dim) == (16, 64)
    end_to_end(enc, pil_images(2))
    all_params_get_grads(enc, torch.randn(2, 3, 32, 32))
    pickle.dumps(enc.transform)
    assert len(enc.visual.transformer.resblocks) == 2  # the unused last block is pruned

    with_cls = tiny_clip(include_cls=True, layer=-1)
    x = torch.randn(2, 3, 32, 32)
    assert with_cls(x).shape == (2, 17, 64) and with_cls.num_tokens() == 17
    # Same weights, different block: the second-to-last output differs from the last.
    last = tiny_clip(layer=-1)
    last.load_state_dict(with_cls.state_dict())
    second = tiny_clip(layer=-2)
    second.load_state_dict(with_cls.state_dict(), strict=False)  # pruned block 2 is unexpected there
    assert torch.allclose(last(x), with_cls(x)[:, 1:])
    assert not torch.allclose(second(x), last(x))
    with pytest.raises(ValueError, match=r"open_clip expects images \[N, 3, 32, 32\], got \[2, 3, 16, 16\]"):
        second(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="layer"):
        tiny_clip(layer=3)


def test_open_clip_loads_local_checkpoints(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from lamm.encoders.open_clip_encoder import create_clip

    torch.manual_seed(1)
    clip = create_clip("tiny", None, TINY_CLIP, None).eval()
    torch.save(clip.state_dict(), tmp_path / "clip.pt")  # a full CLIP checkpoint (visual.* and text)
    x = torch.randn(2, 3, 32, 32)
    ref = clip.visual.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NLC")
    enc = tiny_clip(pretrained=str(tmp_path / "clip.pt"), layer=-2).eval()
    torch.testing.assert_close(enc(x), ref["image_intermediates"][0])

    # The encoder's own (pruned) weights round-trip through safetensors.
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, tmp_path / "enc.safetensors")
    again = tiny_clip(pretrained=str(tmp_path / "enc.safetensors"), layer=-2).eval()
    torch.testing.assert_close(again(x), enc(x))

    wrong = {"vision_cfg": {**TINY_CLIP["vision_cfg"], "width": 32}}
    with pytest.raises(Exception, match="size mismatch|does not fit"):
        ENCODERS.build("open_clip", model_cfg=wrong, pretrained=str(tmp_path / "clip.pt"))


def test_open_clip_vit_b16_random_init() -> None:
    enc = ENCODERS.build("open_clip", model_name="ViT-B-16", pretrained=None, layer=-2, include_cls=False)
    assert (enc.num_tokens(), enc.output_dim) == (196, 768)
    with torch.no_grad():
        assert enc.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 196, 768)


# --- timm -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,size,prefix,tokens,dim",
    [("vit_tiny_patch16_224", 32, False, 4, 192), ("vit_tiny_patch16_224", 32, True, 5, 192), ("resnet18", 64, False, 4, 512)],
)
def test_timm_shapes_and_transform(name: str, size: int, prefix: bool, tokens: int, dim: int) -> None:
    enc = ENCODERS.build("timm", model_name=name, img_size=size, include_prefix=prefix)
    assert (enc.num_tokens(), enc.output_dim) == (tokens, dim)
    end_to_end(enc, pil_images(2, size=70))
    all_params_get_grads(enc, torch.randn(2, 3, size, size))
    pickle.dumps(enc.transform)
    with pytest.raises(ValueError, match=rf"timm \({name}\) expects images \[N, 3, {size}, {size}\], got \[3, {size}, {size}\]"):
        enc(torch.randn(3, size, size))


@pytest.mark.parametrize("name,size", [("vit_tiny_patch16_224", 32), ("resnet18", 64)])
def test_timm_loads_local_checkpoint(tmp_path: Path, name: str, size: int) -> None:
    import timm

    torch.manual_seed(2)
    ref_model = timm.create_model(name, img_size=size) if name.startswith("vit") else timm.create_model(name)
    torch.save(ref_model.state_dict(), tmp_path / "w.pth")  # includes a classifier head, dropped on load
    enc = ENCODERS.build("timm", model_name=name, img_size=size, checkpoint_path=str(tmp_path / "w.pth")).eval()
    x = torch.randn(2, 3, size, size)
    ref = ref_model.eval().forward_features(x)
    ref = ref[:, ref_model.num_prefix_tokens :] if ref.dim() == 3 else ref.flatten(2).transpose(1, 2)
    torch.testing.assert_close(enc(x), ref)


# --- video ----------------------------------------------------------------------------------------


def test_uniform_frame_indices() -> None:
    assert uniform_frame_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_frame_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert uniform_frame_indices(5, 1).tolist() == [0]


@pytest.mark.parametrize("pool", ["mean", "none"])
def test_video_frame_counts_and_pooling(pool: str) -> None:
    enc = ENCODERS.build("video", image_encoder={"name": "small_cnn", **TINY_CNN}, num_frames=4, max_frames=8,
                         temporal_pool=pool)
    per_frame = enc.image_encoder.num_tokens()
    assert enc.modality == "video" and enc.num_tokens() == (per_frame if pool == "mean" else 4 * per_frame)
    for f in (1, 3, 4):
        out = enc(torch.randn(2, f, 3, 32, 32))
        assert out.shape == (2, per_frame if pool == "mean" else f * per_frame, 32)
    frames = np.random.default_rng(0).integers(0, 256, (2, 10, 24, 30, 3), dtype=np.uint8)
    end_to_end(enc, list(frames))
    assert enc.transform(pil_images(6)).shape == (4, 3, 32, 32)  # a list of PIL frames works too
    all_params_get_grads(enc, torch.randn(2, 3, 3, 32, 32))
    pickle.dumps(enc.transform)
    with pytest.raises(ValueError, match=r"video expects clips \[N, F<=8, C, H, W\], got \[1, 9, 3, 32, 32\]"):
        enc(torch.randn(1, 9, 3, 32, 32))
    with pytest.raises(ValueError, match=r"video expects clips .*got \[2, 3, 32, 32\]"):
        enc(torch.randn(2, 3, 32, 32))


def test_video_wraps_open_clip_from_omegaconf() -> None:
    cfg = OmegaConf.create({"name": "open_clip", "model_cfg": TINY_CLIP, "layer": -1})
    enc = ENCODERS.build("video", image_encoder=cfg, num_frames=2, temporal_pool="mean")
    frames = np.zeros((5, 40, 40, 3), dtype=np.uint8)
    assert end_to_end(enc, [frames]).shape == (1, 16, 64)


# --- point clouds ---------------------------------------------------------------------------------


def test_fps_distinct_and_knn_contains_center() -> None:
    torch.manual_seed(0)
    xyz = torch.randn(3, 200, 3)
    idx = farthest_point_sample(xyz, 16)
    assert idx.shape == (3, 16) and (idx[:, 0] == 0).all()
    assert all(len(set(row.tolist())) == 16 for row in idx)
    centers = torch.stack([xyz[b, idx[b]] for b in range(3)])
    groups = knn_indices(xyz, centers, 8)
    assert groups.shape == (3, 16, 8)
    assert (groups[..., 0] == idx).all()  # each group's nearest point is its own center
    from lamm.encoders.point_bert import farthest_point_sample_numpy

    assert (torch.from_numpy(farthest_point_sample_numpy(xyz[0].numpy(), 16)) == idx[0]).all()  # pipeline FPS agrees
    enc = PointBERTEncoder(**TINY_POINT)
    _, rel = enc.group(xyz)
    assert torch.allclose(rel[:, :, 0], torch.zeros(3, 8, 3))  # relative coords: the center sits at 0


@pytest.mark.parametrize("p", [64, 200, 1000])
@pytest.mark.parametrize("extra", [0, 3])
def test_point_bert_shapes_and_transform(p: int, extra: int) -> None:
    enc = ENCODERS.build("point_bert", extra_channels=extra, include_cls=(extra == 3), **TINY_POINT)
    assert enc.modality == "pointcloud"
    out = enc.eval()(torch.randn(2, p, 3 + extra))
    assert out.shape == (2, enc.num_tokens(), 32) and enc.num_tokens() == 8 + (extra == 3)
    raw = [np.random.default_rng(i).normal(5.0, 3.0, (p, 3 + extra)) for i in range(2)]
    sample = enc.transform(raw[0])
    assert sample.shape == (128, 3 + extra) and sample.dtype == torch.float32
    assert sample[:, :3].norm(dim=1).max() <= 1 + 1e-5
    torch.testing.assert_close(enc.transform(raw[0]), sample)  # seeded: reproducible
    end_to_end(enc, raw)


def test_point_bert_grads_random_sampling_and_errors() -> None:
    enc = ENCODERS.build("point_bert", sampling="random", **TINY_POINT)
    assert enc.transform(np.random.rand(500, 3)).shape == (128, 3)
    all_params_get_grads(enc, torch.randn(2, 100, 3))
    pickle.dumps(enc.transform)
    with pytest.raises(ValueError, match=r"point_bert expects point clouds \[N, P>=8, 3\], got \[2, 100, 6\]"):
        enc(torch.randn(2, 100, 6))
    with pytest.raises(ValueError, match=r"point_bert expects point clouds \[N, P>=8, 3\], got \[2, 5, 3\]"):
        enc(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"point_bert transform expects points \[P, 3\], got \[10\]"):
        enc.transform(np.zeros(10))


# --- shipped YAMLs --------------------------------------------------------------------------------

# Shrinks keep each config's own kwargs but make the test fast (ViT-L/14 gets a tiny stand-in).
SHRINK = {
    "clip_vit_l14": {"model_cfg": TINY_CLIP},
    "clip_vit_b16": {},
    "timm_vit_small": {"img_size": 32},
    "small_cnn": {},
    "small_vit": {},
    "video": {},
    "point_bert": {},
    # Hugging Face folders: a tiny tower of the same layout saved by transformers (lamm.testing).
    "hf_clip_vit_l14_336": {"path": "clip_full"},
    "hf_siglip_so400m": {"path": "siglip"},
}


def test_every_yaml_is_covered() -> None:
    assert {p.stem for p in CONF.glob("*.yaml")} == set(SHRINK)


@pytest.mark.parametrize("stem", [s for s in SHRINK if s != "clip_vit_b16"])  # B/16 has its own test
def test_yaml_builds(stem: str, tmp_path) -> None:
    shrink = dict(SHRINK[stem])
    if stem.startswith("hf_"):
        shrink["path"] = str(save_tiny_vision_tower(shrink["path"], tmp_path))
    cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{stem}.yaml"), shrink)
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    enc = ENCODERS.build(kwargs.pop("name"), **kwargs)
    assert isinstance(enc, Encoder) and enc.num_tokens() > 0
    if stem == "clip_vit_l14":
        assert (enc.layer, enc.include_cls) == (1, False)  # -2 of 3 blocks, patch tokens only
    if stem.startswith("hf_"):  # hidden state 2 of 0..3, every token a patch (16 of them)
        assert (enc.layer, enc.num_tokens(), enc.transform.pad_to_square) == (2, 16, stem == "hf_clip_vit_l14_336")


def test_yaml_defaults_token_counts() -> None:
    expect = {"small_cnn": (17, 256), "small_vit": (49, 384), "video": (64, 256), "point_bert": (32, 256)}
    for stem, (tokens, dim) in expect.items():
        kwargs = OmegaConf.to_container(OmegaConf.load(CONF / f"{stem}.yaml"))
        enc = ENCODERS.build(kwargs.pop("name"), **kwargs)
        assert (enc.num_tokens(), enc.output_dim) == (tokens, dim), stem
