"""`perceiver`: Flamingo's Perceiver Resampler (Alayrac et al., 2022, Sec. 2.1 and Fig. 5).

A fixed set of `num_latents` learned queries cross-attends to the media tokens, so the output
length K = num_latents whatever the number of input tokens S (one image, a video of many frames,
or a point cloud of many groups). Each of `depth` layers is

    latents = latents + Attn(q = LN(latents), kv = concat(LN(media), LN(latents)))
    latents = latents + FFW(latents)          # LN -> Linear(dim, mult*dim) -> GELU -> Linear

followed by a final LayerNorm. As in Flamingo the resampler works at the encoder's width (in_dim);
one Linear then maps to the LLM's width (out_dim).

IDEFICS's resampler is this one with `qk_norm` (a LayerNorm on each head's queries and keys),
`ff_act: relu` and `out_proj: false` (no final Linear: its cross-attention reads keys and values
from media at the encoder's width, so out_dim becomes in_dim).

Time embeddings (both optional, both off unless their size is configured; the model passes
`frames` and `media_positions` exactly when they are on, see `time_inputs`):

- `max_frames`: when the S input tokens are F frames of S/F tokens each (frame-major), call
  `forward(x, frames=F)` and a learned embedding per frame index is added to that frame's tokens
  before resampling, so the latents can tell frames apart.
- `max_media`: `forward(x, media_positions=p)` with `p` a LongTensor `[N]` giving each item's
  index among the media of its sample (Flamingo's T axis) adds a learned embedding per index.
  OpenFlamingo's `media_time_embs` [T, 1, D] are these [T, D] weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lamm.projectors._checks import check_input
from lamm.projectors.base import Projector
from lamm.registry import PROJECTORS


class PerceiverAttention(nn.Module):
    """Latents attend to concat(media, latents); separate LayerNorms for media and latents."""

    def __init__(self, dim: int, heads: int, dim_head: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.q_norm = nn.LayerNorm(dim_head) if qk_norm else None
        self.k_norm = nn.LayerNorm(dim_head) if qk_norm else None

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        n, length, _ = t.shape
        return t.view(n, length, self.heads, self.dim_head).transpose(1, 2)  # [N, H, L, Dh]

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media `[N, S, D]`, latents `[N, K, D]` -> update `[N, K, D]` (residual added by caller)."""
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self._split_heads(self.to_q(latents))
        # Latents also attend to themselves, so a query always has something relevant to attend to.
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        k = self._split_heads(k)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, self._split_heads(v))
        n, _, k_len, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(n, k_len, self.heads * self.dim_head))


FF_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class FeedForward(nn.Sequential):
    """LN -> Linear(dim, mult*dim) -> GELU (or `act`) -> Linear(mult*dim, dim), no biases (as in Flamingo)."""

    def __init__(self, dim: int, mult: int, act: str = "gelu") -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult, bias=False),
            FF_ACTIVATIONS[act](),
            nn.Linear(dim * mult, dim, bias=False),
        )


@PROJECTORS.register("perceiver")
class PerceiverResampler(Projector):
    """Resample any number of media tokens to `num_latents` tokens, then project to `out_dim`."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_latents: int = 64,
        depth: int = 6,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
        max_frames: int | None = None,
        max_media: int | None = None,
        qk_norm: bool = False,
        ff_act: str = "gelu",
        out_proj: bool = True,
    ) -> None:
        # Without the output Linear the tokens stay at the encoder's width.
        super().__init__(in_dim, out_dim if out_proj else in_dim)
        if num_latents < 1 or depth < 1 or heads < 1 or dim_head < 1 or ff_mult < 1:
            raise ValueError(
                "perceiver projector needs num_latents, depth, heads, dim_head, ff_mult >= 1, got "
                f"{num_latents}, {depth}, {heads}, {dim_head}, {ff_mult}"
            )
        if ff_act not in FF_ACTIVATIONS:
            raise ValueError(f"model.projector.ff_act must be one of {', '.join(FF_ACTIVATIONS)}, got {ff_act!r}")
        self.num_latents = num_latents
        self.max_frames = max_frames
        self.max_media = max_media
        self.time_inputs = frozenset(k for k, size in (("frames", max_frames), ("media_positions", max_media)) if size)
        # Unit-variance latents as in Flamingo; every use goes through a LayerNorm first.
        self.latents = nn.Parameter(torch.randn(num_latents, in_dim))
        # Small time embeddings so they start as a perturbation of the encoder's features.
        self.frame_embs = nn.Parameter(0.02 * torch.randn(max_frames, in_dim)) if max_frames else None
        self.media_time_embs = nn.Parameter(0.02 * torch.randn(max_media, in_dim)) if max_media else None
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(in_dim, heads, dim_head, qk_norm), FeedForward(in_dim, ff_mult, ff_act)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim) if out_proj else nn.Identity()

    def num_tokens(self, num_input_tokens: int) -> int:
        """K = num_latents, independent of S."""
        return self.num_latents

    def wrap_modules(self) -> list[nn.Module]:
        """Each layer's attention and feed-forward (the layer itself is a list, never called)."""
        return [part for layer in self.layers for part in layer]

    def _add_frame_embs(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        n, s, d = x.shape
        if self.frame_embs is None:
            raise ValueError("perceiver projector got frames= but was built without max_frames")
        if frames < 1 or s % frames:
            raise ValueError(f"perceiver projector: S={s} input tokens do not split into frames={frames}")
        if frames > self.frame_embs.shape[0]:
            raise ValueError(f"perceiver projector: frames={frames} exceeds max_frames={self.frame_embs.shape[0]}")
        x = x.view(n, frames, s // frames, d) + self.frame_embs[:frames, None, :]
        return x.reshape(n, s, d)

    def _add_media_embs(self, x: torch.Tensor, media_positions: torch.Tensor) -> torch.Tensor:
        if self.media_time_embs is None:
            raise ValueError("perceiver projector got media_positions= but was built without max_media")
        if media_positions.shape != (x.shape[0],):
            raise ValueError(
                f"perceiver projector expects media_positions of shape [{x.shape[0]}], "
                f"got {list(media_positions.shape)}"
            )
        if int(media_positions.min()) < 0 or int(media_positions.max()) >= self.media_time_embs.shape[0]:
            raise ValueError(
                f"perceiver projector: media_positions must lie in [0, {self.media_time_embs.shape[0]}), "
                f"got {media_positions.tolist()}"
            )
        return x + self.media_time_embs[media_positions][:, None, :]

    def forward(
        self,
        x: torch.Tensor,
        *,
        frames: int | None = None,
        media_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`[N, S, in_dim]` -> `[N, num_latents, out_dim]`; see the module docstring for the keywords."""
        check_input(x, self.in_dim, "perceiver")
        if frames is not None:
            x = self._add_frame_embs(x, frames)
        if media_positions is not None:
            x = self._add_media_embs(x, media_positions)
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.proj(self.norm(latents))
