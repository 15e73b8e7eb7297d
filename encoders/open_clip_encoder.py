"""`open_clip`: patch tokens from an intermediate block of any open_clip ViT vision tower."""
from __future__ import annotations

import copy
import json
import os
import tempfile
from typing import Any, Callable

import torch

from lamm.plain_config import to_plain
from lamm.registry import ENCODERS

from ._utils import check_shape, load_weights
from .base import Encoder

# open_clip builds the text tower too; a custom architecture given without one gets this tiny
# stand-in so only the vision config has to be written (the text tower is discarded anyway).
_TINY_TEXT_CFG = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}


def create_clip(
    model_name: str, pretrained: str | None, model_cfg: dict[str, Any] | None, image_size: int | None
) -> torch.nn.Module:
    """Build the full open_clip model; weight files are loaded by the caller, tags by open_clip."""
    import open_clip  # absolute import: this module is not named open_clip, so the library is found

    if model_cfg is None:
        tag = None if (pretrained is None or os.path.isfile(pretrained)) else pretrained
        return open_clip.create_model(model_name, pretrained=tag, force_image_size=image_size)
    cfg = copy.deepcopy(model_cfg)
    cfg.setdefault("embed_dim", cfg.get("vision_cfg", {}).get("width", 64))
    cfg.setdefault("text_cfg", dict(_TINY_TEXT_CFG))
    # open_clip's own mechanism for a custom config: a `local-dir:` folder holding open_clip_config.json.
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
            json.dump({"model_cfg": cfg}, f)
        return open_clip.create_model(f"local-dir:{folder}", force_image_size=image_size)


@ENCODERS.register("open_clip")
class OpenCLIPEncoder(Encoder):
    """Vision tower of an open_clip model; tokens are one block's output before ln_post/projection.

    `final_norm`: tokens after ln_post instead; with `layer=-1` these are the tokens that
    `visual(x)` returns as its second output when `visual.output_tokens` is set (OpenFlamingo's).
    """

    modality = "image"

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str | None = None,
        layer: int = -2,
        include_cls: bool = False,
        image_size: int | None = None,
        model_cfg: dict[str, Any] | None = None,
        final_norm: bool = False,
    ) -> None:
        super().__init__()
        model_cfg = to_plain(model_cfg)
        visual = create_clip(model_name, pretrained, model_cfg, image_size).visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "grid_size"):
            raise ValueError(
                f"open_clip encoder expects a ViT vision tower, got {type(visual).__name__} for {model_name!r}"
            )
        num_blocks = len(visual.transformer.resblocks)
        if not -num_blocks <= layer < num_blocks:
            raise ValueError(f"open_clip expects layer in [-{num_blocks}, {num_blocks - 1}], got {layer}")
        self.layer = layer % num_blocks
        pooled_first = getattr(visual, "final_ln_after_pool", False) or getattr(visual, "attn_pool", None) is not None
        if final_norm and pooled_first:
            raise ValueError(f"model.encoder.final_norm: {model_name!r} applies ln_post after pooling, "
                             "not to its tokens")
        full_keys = set(visual.state_dict())
        # Drop the blocks after `layer`, ln_post (unless final_norm), the projection and any attentional
        # pooler: never used, they would waste memory and leave gradient-less parameters that break DDP
        # when training.
        visual.prune_intermediate_layers([self.layer], prune_norm=not final_norm, prune_head=True)
        for name in ("attn_pool", "attn_pool_contrastive"):
            if getattr(visual, name, None) is not None:
                setattr(visual, name, None)
        if pretrained is not None and os.path.isfile(pretrained):
            self._load_file(visual, pretrained, full_keys)
        self.visual = visual
        self.model_name = model_name
        self.pretrained = pretrained
        self.include_cls = include_cls
        self.final_norm = final_norm
        self.output_dim = visual.transformer.width
        self.image_size = tuple(visual.image_size) if isinstance(visual.image_size, (tuple, list)) else (
            visual.image_size, visual.image_size)
        self._preprocess = dict(visual.preprocess_cfg)

    @staticmethod
    def _load_file(visual: torch.nn.Module, path: str, full_keys: set[str]) -> None:
        """Load a full CLIP state dict (keys `visual.*`) or a vision-tower one into the pruned tower."""
        from open_clip.model import resize_pos_embed

        state = load_weights(path)
        if any(k.startswith("visual.") for k in state):
            state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        # open_clip's helper resamples the position grid when image_size differs from the checkpoint.
        wrapped = {"visual.positional_embedding": state.get("positional_embedding")}
        resize_pos_embed(wrapped, type("Shim", (), {"visual": visual})())
        if wrapped["visual.positional_embedding"] is not None:
            state["positional_embedding"] = wrapped["visual.positional_embedding"]
        result = visual.load_state_dict(state, strict=False)
        # Keys of pruned parts may be present (a full checkpoint); anything else is a wrong architecture.
        foreign = [k for k in result.unexpected_keys if k not in full_keys]
        if result.missing_keys or foreign:
            raise ValueError(
                f"open_clip checkpoint {path} does not fit the architecture: "
                f"missing {result.missing_keys[:5]}, unexpected {foreign[:5]}"
            )

    @property
    def has_pretrained_weights(self) -> bool:
        """An open_clip tag or a checkpoint file was given."""
        return self.pretrained is not None

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """open_clip's eval preprocessing for this model (resize, center crop, CLIP normalisation)."""
        import open_clip

        cfg = self._preprocess
        return open_clip.image_transform(
            cfg.get("size", self.image_size),
            is_train=False,
            mean=cfg.get("mean"),
            std=cfg.get("std"),
            resize_mode=cfg.get("resize_mode"),
            interpolation=cfg.get("interpolation"),
            fill_color=cfg.get("fill_color", 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] -> tokens [N, (1 +) grid_h*grid_w, width] from block `layer`."""
        check_shape("open_clip", "images", x, ["N", 3, *self.image_size])
        out = self.visual.forward_intermediates(
            x,
            indices=[self.layer],
            stop_early=True,
            intermediates_only=True,
            normalize_intermediates=self.final_norm,
            output_fmt="NLC",
            output_extra_tokens=self.include_cls,
        )
        tokens = out["image_intermediates"][0]
        if self.include_cls:
            tokens = torch.cat([out["image_intermediates_prefix"][0], tokens], dim=1)
        return tokens

    def num_tokens(self) -> int:
        """Patch count of the grid, plus one when include_cls."""
        grid = self.visual.grid_size
        return grid[0] * grid[1] + int(self.include_cls)
