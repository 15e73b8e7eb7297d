"""`timm`: tokens from `forward_features` of any timm model (ViT sequences or CNN feature maps)."""
from __future__ import annotations

from typing import Any, Callable

import torch

from lamm.plain_config import to_plain
from lamm.registry import ENCODERS

from ._utils import check_shape
from .base import Encoder


@ENCODERS.register("timm")
class TimmEncoder(Encoder):
    """A timm backbone without its classifier; feature maps [N, C, H, W] become [N, H*W, C] tokens."""

    modality = "image"

    def __init__(
        self,
        model_name: str = "vit_small_patch16_224",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        img_size: int | None = None,
        include_prefix: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        kwargs = dict(to_plain(model_kwargs) or {})
        kwargs["num_classes"] = 0  # the classifier head is never used; keep it out of the parameters
        if checkpoint_path is not None:
            # timm's own file loader: weights_only torch.load or safetensors, drops a mismatched
            # classifier and resamples ViT position embeddings when img_size differs.
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = dict(file=str(checkpoint_path))
        if img_size is not None:
            kwargs["img_size"] = img_size
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            if img_size is None or "img_size" not in str(exc):
                raise
            # CNNs take any input size and reject the argument; the size still sets the transform.
            kwargs.pop("img_size")
            self.model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        self.model_name = model_name
        self.pretrained = bool(pretrained)  # true too when checkpoint_path gave the weights
        self.include_prefix = include_prefix
        self.output_dim = self.model.num_features
        data_cfg = timm.data.resolve_model_data_config(self.model)
        if img_size is not None:
            data_cfg["input_size"] = (3, img_size, img_size)
        self.data_config = data_cfg
        self._num_tokens: int | None = None

    @property
    def has_pretrained_weights(self) -> bool:
        """timm's hub weights or a checkpoint file were loaded."""
        return self.pretrained

    @property
    def transform(self) -> Callable[[Any], torch.Tensor]:
        """timm's eval transform from the model's data config (resize, crop, normalise)."""
        from timm.data import create_transform

        return create_transform(**self.data_config, is_training=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] -> tokens [N, S, num_features]."""
        _, h, w = self.data_config["input_size"]
        check_shape(f"timm ({self.model_name})", "images", x, ["N", 3, h, w])
        feats = self.model.forward_features(x)
        if feats.dim() == 4:
            # Most CNNs return NCHW; some hierarchical models (swin, ...) declare NHWC.
            if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
                return feats.flatten(1, 2)
            return feats.flatten(2).transpose(1, 2)
        if feats.dim() != 3:
            raise ValueError(f"timm ({self.model_name}) features must be 3-D or 4-D, got {list(feats.shape)}")
        if not self.include_prefix:
            feats = feats[:, getattr(self.model, "num_prefix_tokens", 0):]
        return feats

    @torch.no_grad()
    def num_tokens(self) -> int:
        """S for the transform's input size, measured once with a dummy forward in eval mode."""
        if self._num_tokens is None:
            was_training = self.training
            self.eval()  # eval so BatchNorm statistics are not touched by the probe
            try:
                param = next(self.model.parameters())
                probe = torch.zeros(1, *self.data_config["input_size"], device=param.device, dtype=param.dtype)
                self._num_tokens = self(probe).shape[1]
            finally:
                self.train(was_training)
        return self._num_tokens
