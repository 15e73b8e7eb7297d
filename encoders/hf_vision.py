"""`hf_vision`: tokens from one hidden layer of a Hugging Face vision tower (CLIP, SigLIP, DINOv2, BLIP-2, ...).

The folder (or hub id) is the source of truth: the tower, its weights and its image processor all come
from it, so an encoder built here sees pixels exactly as the published model did.
"""
from __future__ import annotations

import inspect
import os
import re
from typing import Any, Callable

import torch
from PIL import Image

from lamm.registry import ENCODERS

from ._utils import check_shape
from .base import Encoder

SELECT = ("patch", "full")
# Two-tower (image-text) configs whose vision half has its own model class; that class reads the
# vision weights out of the full checkpoint (`vision_model.*`), as LLaVA loads openai CLIP.
_VISION_CLASS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "siglip2": "Siglip2VisionModel"}
# Attribute names the supported towers give their transformer layer list and final norm.
_LAYER_LISTS = ("encoder.layers", "encoder.layer")
_FINAL_NORMS = ("post_layernorm", "layernorm")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _get(module: torch.nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Centre `image` on a square canvas of its longer side filled with `background` (LLaVA's pad mode)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class HFImageTransform:
    """The tower's own image processor on one PIL image (optionally padded to a square first) -> [3, H, W].

    A class rather than a closure so it pickles into DataLoader workers.
    """

    def __init__(self, processor: Any, pad_to_square: bool) -> None:
        self.processor = processor
        self.pad_to_square = pad_to_square
        # LLaVA pads with the processor's mean colour, which normalises to zero.
        self.background = tuple(int(m * 255) for m in processor.image_mean)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.pad_to_square:
            image = expand_to_square(image, self.background)
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def load_vision_tower(path: str, dtype: torch.dtype | None) -> torch.nn.Module:
    """The vision tower saved at `path`; a full two-tower folder (CLIPModel, SiglipModel) gives its vision half."""
    import transformers

    if not os.path.isdir(path) and not _HUB_ID.fullmatch(path):
        raise FileNotFoundError(f"model.encoder.path: {path} is not a folder (hf_vision needs a Hugging Face "
                                f"model folder with config.json, or a hub id such as openai/clip-vit-large-patch14-336)")
    config = transformers.AutoConfig.from_pretrained(path)
    if getattr(config, "vision_config", None) is not None:
        name = _VISION_CLASS.get(config.model_type)
        if name is None:
            raise ValueError(f"model.encoder.path: {path} holds a {config.model_type!r} model; hf_vision takes "
                             f"a vision tower or one of {sorted(_VISION_CLASS)}")
        return getattr(transformers, name).from_pretrained(path, dtype=dtype)
    architecture = (getattr(config, "architectures", None) or [""])[0]
    if architecture.endswith("VisionModel") and hasattr(transformers, architecture):
        return getattr(transformers, architecture).from_pretrained(path, dtype=dtype)  # e.g. Blip2VisionModel
    return transformers.AutoModel.from_pretrained(path, dtype=dtype)


@ENCODERS.register("hf_vision")
class HFVisionEncoder(Encoder):
    """Hidden states of layer `layer` of a Hugging Face vision tower, CLS (and register) tokens kept or dropped.

    `layer` indexes the tower's `hidden_states` (0 = embeddings, -1 = last block; LLaVA uses -2);
    `select: patch` drops the prefix tokens (LLaVA's `default` strategy), `full` keeps them; towers without
    a CLS token (SigLIP) have nothing to drop. `post_layernorm` applies the tower's final norm to the chosen
    layer (BLIP-2 reads the last layer after it). Blocks after `layer` are removed: never used, they would
    cost memory and leave gradient-less parameters that break DDP when the tower trains.
    """

    modality = "image"

    def __init__(
        self,
        path: str,
        layer: int = -2,
        select: str = "patch",
        pad_to_square: bool = False,
        post_layernorm: bool = False,
        dtype: str | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoImageProcessor

        if select not in SELECT:
            raise ValueError(f"model.encoder.select: {select!r} is not one of {list(SELECT)}")
        torch_dtype = None if dtype is None else getattr(torch, dtype, None)
        if dtype is not None and not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"model.encoder.dtype: {dtype!r} is not a torch dtype (float32, bfloat16, float16)")
        path = str(path)
        tower = load_vision_tower(path, torch_dtype)
        inner = getattr(tower, "vision_model", tower)  # CLIPVisionModel wraps a CLIPVisionTransformer
        layers_attr = next((a for a in _LAYER_LISTS if isinstance(_get(inner, a), torch.nn.ModuleList)), None)
        if layers_attr is None:
            raise ValueError(f"model.encoder.path: hf_vision cannot find the transformer blocks of "
                             f"{type(tower).__name__} (looked for {', '.join(_LAYER_LISTS)})")
        blocks = _get(inner, layers_attr)
        depth = len(blocks)
        if not -(depth + 1) <= layer <= depth:
            raise ValueError(f"model.encoder.layer: {layer} is outside [-{depth + 1}, {depth}] "
                             f"({type(tower).__name__} has {depth} blocks)")
        self.layer = layer % (depth + 1)
        parent, _, attr = layers_attr.rpartition(".")
        setattr(_get(inner, parent), attr, torch.nn.ModuleList(list(blocks)[: self.layer]))
        norm_attr = next((a for a in _FINAL_NORMS if isinstance(getattr(inner, a, None), torch.nn.Module)), None)
        if post_layernorm and norm_attr is None:
            raise ValueError(f"model.encoder.post_layernorm: {type(tower).__name__} has no final layer norm")
        self.final_norm = getattr(inner, norm_attr) if post_layernorm else None
        # The tower's own final norm and pooling head are replaced: hidden_states never pass through them.
        if norm_attr is not None:
            setattr(inner, norm_attr, torch.nn.Identity())
        if getattr(inner, "head", None) is not None and hasattr(inner, "use_head"):
            inner.head, inner.use_head = None, False
        self.tower = tower
        self.path = path
        self.select = select
        config = tower.config
        self.output_dim = config.hidden_size
        self.patch_size = config.patch_size
        embeddings = inner.embeddings
        has_cls = any(getattr(embeddings, a, None) is not None for a in ("class_embedding", "cls_token"))
        self.num_prefix_tokens = int(has_cls) + int(getattr(config, "num_register_tokens", 0) or 0)

        processor = AutoImageProcessor.from_pretrained(path)
        if image_size is not None:
            processor.size = ({"height": image_size, "width": image_size} if "height" in processor.size
                              else {"shortest_edge": image_size})
            if getattr(processor, "crop_size", None) is not None:
                processor.crop_size = {"height": image_size, "width": image_size}
        self._transform = HFImageTransform(processor, pad_to_square)
        # The processor decides the input size (resize, crop); measure it once on a blank image.
        probe = self._transform(Image.new("RGB", (image_size or 64, image_size or 64)))
        self.image_size = tuple(probe.shape[1:])
        params = inspect.signature(tower.forward).parameters
        self._forward_kwargs = ({"interpolate_pos_encoding": True}
                                if "interpolate_pos_encoding" in params
                                and self.image_size != (config.image_size, config.image_size) else {})

    @property
    def has_pretrained_weights(self) -> bool:
        """The folder is always the source of the weights (there is no random-init mode)."""
        return True

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """The tower's image processor (after LLaVA's pad-to-square when asked)."""
        return self._transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] -> tokens [N, S, hidden_size] from hidden layer `layer`."""
        check_shape("hf_vision", "images", x, ["N", 3, *self.image_size])
        param = next(self.tower.parameters())
        # The blocks after `layer` and the final norm were removed, so the last state is hidden state `layer`.
        tokens = self.tower(pixel_values=x.to(param.dtype), **self._forward_kwargs).last_hidden_state
        if self.final_norm is not None:
            tokens = self.final_norm(tokens)
        if self.select == "patch":
            tokens = tokens[:, self.num_prefix_tokens:]
        return tokens

    def num_tokens(self) -> int:
        """Patch grid of the processor's output size, plus the prefix tokens with `select: full`."""
        grid = (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)
        return grid + (self.num_prefix_tokens if self.select == "full" else 0)
