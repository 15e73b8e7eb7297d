"""`qformer`: BLIP-2's Querying Transformer (Li et al., 2023, Sec. 3.1) as a projector.

`num_query_tokens` learned queries pass through BERT-style post-norm layers: self-attention among the
queries, cross-attention to the media tokens in every `cross_attention_frequency`-th layer (from layer
0), and a feed-forward; an embedding LayerNorm comes first and a Linear to the LLM's width last, so
K = num_query_tokens whatever the number of input tokens S. Only the image-grounded query path is
built (BLIP-2's text branch is for its pre-training losses, not for feeding an LLM).

Module names follow Hugging Face's Blip2ForConditionalGeneration (`query_tokens`, `qformer.layernorm`,
`qformer.encoder.layer.{i}.attention.attention.query`, `...crossattention...`, `...intermediate_query`,
`...output_query`, `language_projection`), so its weights load by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lamm.projectors._checks import check_input
from lamm.projectors.base import Projector
from lamm.registry import PROJECTORS


class QFormerMultiHeadAttention(nn.Module):
    """Scaled dot-product attention of `hidden` over `context` (itself for self-attention), biased projections."""

    def __init__(self, hidden_size: int, context_size: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"qformer expects hidden_size divisible by num_attention_heads, got {hidden_size}, {heads}")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(context_size, hidden_size)
        self.value = nn.Linear(context_size, hidden_size)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, length, width = t.shape
        return t.view(n, length, self.heads, width // self.heads).transpose(1, 2)  # [N, H, L, Dh]

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            self._split(self.query(hidden)), self._split(self.key(context)), self._split(self.value(context)),
            dropout_p=self.dropout if self.training else 0.0,
        )
        n, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(n, length, -1)


class QFormerResidualNorm(nn.Module):
    """BERT's post-norm sub-layer output: LayerNorm(residual + Dropout(Linear(x)))."""

    def __init__(self, in_size: int, hidden_size: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)  # noqa: N815  (the checkpoints' name)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class QFormerAttention(nn.Module):
    """An attention sub-layer: multi-head attention, then the residual post-norm."""

    def __init__(self, hidden_size: int, context_size: int, heads: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.attention = QFormerMultiHeadAttention(hidden_size, context_size, heads, dropout)
        self.output = QFormerResidualNorm(hidden_size, hidden_size, eps, dropout)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.attention(hidden, hidden if context is None else context), hidden)


class QFormerIntermediate(nn.Module):
    """The feed-forward's expansion: Linear then exact GELU."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class QFormerLayer(nn.Module):
    """Self-attention among the queries, cross-attention to the media (when `cross`), feed-forward."""

    def __init__(self, hidden_size: int, media_size: int, heads: int, intermediate_size: int, cross: bool,
                 eps: float, dropout: float) -> None:
        super().__init__()
        self.attention = QFormerAttention(hidden_size, hidden_size, heads, eps, dropout)
        self.crossattention = QFormerAttention(hidden_size, media_size, heads, eps, dropout) if cross else None
        self.intermediate_query = QFormerIntermediate(hidden_size, intermediate_size)
        self.output_query = QFormerResidualNorm(intermediate_size, hidden_size, eps, dropout)

    def forward(self, queries: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        queries = self.attention(queries)
        if self.crossattention is not None:
            queries = self.crossattention(queries, media)
        return self.output_query(self.intermediate_query(queries), queries)


class QFormerEncoder(nn.Module):
    """The layer stack (a module of its own so parameter names match BLIP-2's `qformer.encoder.layer.{i}`)."""

    def __init__(self, layers: list[QFormerLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class QFormer(nn.Module):
    """Embedding LayerNorm on the queries, then the layers."""

    def __init__(self, hidden_size: int, media_size: int, num_layers: int, heads: int, intermediate_size: int,
                 cross_attention_frequency: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.encoder = QFormerEncoder([
            QFormerLayer(hidden_size, media_size, heads, intermediate_size, i % cross_attention_frequency == 0,
                         eps, dropout)
            for i in range(num_layers)
        ])

    def forward(self, queries: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.layernorm(queries))
        for layer in self.encoder.layer:
            hidden = layer(hidden, media)
        return hidden


@PROJECTORS.register("qformer")
class QFormerProjector(Projector):
    """BLIP-2's Q-Former + language projection: `[N, S, in_dim]` media -> `[N, num_query_tokens, out_dim]`."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_query_tokens: int = 32,
        num_hidden_layers: int = 12,
        hidden_size: int = 768,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        cross_attention_frequency: int = 2,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dim, out_dim)
        if num_query_tokens < 1 or num_hidden_layers < 1 or cross_attention_frequency < 1:
            raise ValueError(f"qformer expects num_query_tokens, num_hidden_layers and cross_attention_frequency "
                             f">= 1, got {num_query_tokens}, {num_hidden_layers}, {cross_attention_frequency}")
        self.num_query_tokens = num_query_tokens
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, hidden_size))
        self.qformer = QFormer(hidden_size, in_dim, num_hidden_layers, num_attention_heads, intermediate_size,
                               cross_attention_frequency, layer_norm_eps, dropout)
        self.language_projection = nn.Linear(hidden_size, out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """BERT's initialisation (normal 0.02, zero biases, unit LayerNorms), queries included, as BLIP-2 trains from."""
        nn.init.normal_(self.query_tokens, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def num_tokens(self, num_input_tokens: int) -> int:
        """K = num_query_tokens for any S."""
        return self.num_query_tokens

    def wrap_modules(self) -> list[nn.Module]:
        return list(self.qformer.encoder.layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Media tokens `[N, S, in_dim]` -> `[N, num_query_tokens, out_dim]`."""
        check_input(x, self.in_dim, "qformer")
        # The Q-Former runs in its own dtype (BLIP-2 keeps it in fp32 under a half-precision vision tower).
        dtype = self.query_tokens.dtype
        queries = self.query_tokens.expand(x.shape[0], -1, -1)
        return self.language_projection(self.qformer(queries, x.to(dtype)))
