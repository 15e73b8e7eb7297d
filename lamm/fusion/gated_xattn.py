"""Gated cross-attention fusion (Flamingo): tanh-gated blocks before every n-th decoder layer.

The blocks live in this module, not inside the LLM: a forward pre-hook on each decoder layer
applies the block to the layer's input hidden states. Media conditioning travels as an explicit
keyword argument (`lamm_xattn`) from the decoder's forward down to its layers — HF decoders pass
their **kwargs on to every layer — and the hook pops it, so nothing is ever left set on a module
between calls, peft wrapping does not matter, and the layer classes stay untouched.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lamm.fusion.base import Fusion, MediaTokens, check_media_counts, placeholder_masks
from lamm.fusion.gates import zero_gated
from lamm.registry import FUSIONS
from lamm.tokens import END_OF_CHUNK, PLACEHOLDERS, TextLayout

LAYER_KWARG = "lamm_xattn"


OUTPUT_SCALES = ("none", "residual")
NORMS = ("layer", "rms")
FFNS = ("gelu", "swiglu")
GATES = ("float", "vector")
PLACEMENTS = ("last", "first")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"model.fusion.{key} must be one of {', '.join(allowed)}, got {value!r}")


def _norm(kind: str, dim: int, eps: float) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps) if kind == "layer" else nn.RMSNorm(dim, eps=eps)


class GatedCrossAttentionBlock(nn.Module):
    """`x + tanh(a) * xattn(norm(x), media)` then `x + tanh(f) * ffw(norm(x))`; gates start at 0.

    `output_scale="residual"` multiplies both branch outputs by the RMS of the residual they join
    (per token, no gradient through it). A pretrained LLM's residual stream grows by two orders of
    magnitude with depth (SmolLM2: RMS 0.1 at layer 0, ~27 at layer 29), so a block whose output is
    O(0.05) is invisible in deep layers unless its weights grow 100x; measured in units of the
    residual, one learning rate fits every depth. Gates still start at 0, so the LLM is unchanged at init.

    The defaults are Flamingo's block; IDEFICS's is `norm="rms"` (also on q and k per head with
    `qk_norm`), `ffn="swiglu"` of width `ff_dim`, `gate="vector"` (one gate per channel) and keys and
    values read from media of width `media_dim` (its resampler works at the vision width).
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, ff_mult: int = 4,
                 output_scale: str = "none", norm: str = "layer", norm_eps: float = 1e-5,
                 ffn: str = "gelu", ff_dim: int | None = None, gate: str = "float",
                 gate_init: float = 0.0, gate_init_std: float = 0.0, qk_norm: bool = False,
                 media_dim: int | None = None) -> None:
        super().__init__()
        if output_scale not in OUTPUT_SCALES:
            raise ValueError(f"model.fusion.output_scale must be one of {', '.join(OUTPUT_SCALES)}, got {output_scale!r}")
        _choice("norm", norm, NORMS)
        _choice("ffn", ffn, FFNS)
        _choice("gate", gate, GATES)
        inner = heads * dim_head
        hidden = ff_dim or dim * ff_mult
        self.heads, self.dim_head = heads, dim_head
        self.output_scale = output_scale
        self.norm = _norm(norm, dim, norm_eps)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(media_dim or dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.q_norm = _norm(norm, dim_head, norm_eps) if qk_norm else None
        self.k_norm = _norm(norm, dim_head, norm_eps) if qk_norm else None
        self.attn_gate = nn.Parameter(self._initial_gate(gate, dim, gate_init, gate_init_std))
        self.ff_norm = _norm(norm, dim, norm_eps)
        self.ff_in = nn.Linear(dim, hidden, bias=False)
        self.ff_out = nn.Linear(hidden, dim, bias=False)
        # SwiGLU: ff_out(silu(ff_in_gate(x)) * ff_in(x)).
        self.ff_in_gate = nn.Linear(dim, hidden, bias=False) if ffn == "swiglu" else None
        self.ff_gate = nn.Parameter(self._initial_gate(gate, dim, gate_init, gate_init_std))

    @staticmethod
    def _initial_gate(gate: str, dim: int, mean: float, std: float) -> torch.Tensor:
        shape = (1,) if gate == "float" else (dim,)
        return torch.normal(mean, std, shape) if std > 0 else torch.full(shape, float(mean))

    def keys_values(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, D] media tokens -> per-head keys and values [B, H, L, dh] (computed once per prompt)."""
        b, n, _ = media.shape
        k, v = self.to_kv(media).view(b, n, 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k, v

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gated block's FFN on normed input: GELU MLP, or SwiGLU when built with `ffn="swiglu"`."""
        if self.ff_in_gate is not None:
            return self.ff_out(F.silu(self.ff_in_gate(x)) * self.ff_in(x))
        return self.ff_out(F.gelu(self.ff_in(x)))

    def forward(
        self,
        x: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None,
        allowed: torch.Tensor | None = None,
        has_media: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`kv`: cached keys and values, or the [B, L, D] media tokens to compute them from here (inside
        forward, where a sharded block's weights are gathered). None: no medium anywhere in the batch, so
        only the FFN branch runs (the attention branch of a token that sees no media adds exactly zero, so
        this equals that row beside rows with media)."""
        if isinstance(kv, torch.Tensor):
            kv = self.keys_values(kv)
        b, t, _ = x.shape
        scale = x.detach().pow(2).mean(-1, keepdim=True).sqrt() if self.output_scale == "residual" else 1.0
        if kv is not None:
            x = x + torch.tanh(self.attn_gate) * self._attend(x, kv, allowed, has_media) * scale
        return x + torch.tanh(self.ff_gate) * self.feed_forward(self.ff_norm(x)) * scale

    def _attend(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], allowed: torch.Tensor,
                has_media: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.to_q(self.norm(x)).view(b, t, self.heads, self.dim_head).transpose(1, 2)
        if self.q_norm is not None:
            q = self.q_norm(q)
        k, v = kv
        # Rows with no visible media would be all -inf (NaN); open them and zero the output instead.
        mask = (allowed | ~has_media.unsqueeze(-1)).unsqueeze(1)
        # On CPU the flash kernel's bf16 backward is ~20x slower than the math kernel for these few keys.
        low_precision_cpu = q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
        with sdpa_kernel(SDPBackend.MATH) if low_precision_cpu else nullcontext():
            attn = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        attn = attn.transpose(1, 2).reshape(b, t, -1)
        return self.to_out(attn) * has_media.unsqueeze(-1).to(x.dtype)


@dataclass
class CrossAttentionState:
    """Media conditioning for one forward or one generation: the media, and per-block K/V caches."""

    media: torch.Tensor | None  # [B, L, D]: media slots flattened, L = slots * tokens per slot
    key_slot: torch.Tensor | None  # [L]: which media slot each key belongs to
    key_valid: torch.Tensor | None  # [B, L]: False for padding slots/tokens
    last_slot: torch.Tensor  # [B]: slot of the most recent media token seen so far (-1: none yet)
    only_latest: bool
    kv_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # block key -> K/V
    closed: torch.Tensor | None = None  # [B]: an end of sequence came after the most recent media (eos_ends_media)
    # Packed rows: [B, T] packed-sample index of each token of the call, and [B, L] of each key.
    segments: torch.Tensor | None = None
    key_segment: torch.Tensor | None = None


class CallConditioning:
    """What the hooks need for one decoder call: the state and each token's current media slot.

    A plain class, not a dataclass: wrappers that rebuild dataclasses found in a layer's arguments
    (FSDP's mixed-precision input cast) would hand each layer a copy, and `calls` would stay empty."""

    def __init__(self, state: CrossAttentionState, token_slot: torch.Tensor,
                 token_segment: torch.Tensor | None = None) -> None:
        self.state = state
        self.token_slot = token_slot  # [B, T]
        self.token_segment = token_segment  # [B, T] packed rows: each token's sample
        self.calls: list[int] = []  # layers that consumed it (detects dropped kwargs)
        self.visible: tuple[torch.Tensor, torch.Tensor] | None = None  # (allowed [B, T, L], has_media [B, T]), once per call


@FUSIONS.register("gated_xattn")
class GatedCrossAttentionFusion(Fusion):
    """Flamingo-style fusion; `every`: a block before every n-th decoder layer."""

    # One placeholder per medium; <|endofchunk|> closes the text that follows it (OpenFlamingo).
    layout = TextLayout(placeholders=1, chunk_end=END_OF_CHUNK)
    # Every later token attends to the media through per-token state, not through the prompt's cache.
    shares_prompt_cache = False
    supports_packing = True  # each packed sample's tokens attend to that sample's media only

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        every: int = 1,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
        only_latest_media: bool = True,
        media_norm: bool = False,
        output_scale: str = "none",
        placement: str = "last",
        norm: str = "layer",
        norm_eps: float = 1e-5,
        ffn: str = "gelu",
        ff_dim: int | None = None,
        gate: str = "float",
        gate_init: float = 0.0,
        gate_init_std: float = 0.0,
        qk_norm: bool = False,
        media_dim: int | None = None,
        eos_ends_media: bool = False,
        chunk_end: str | None = END_OF_CHUNK,
        media_around: str | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= every <= num_layers:
            raise ValueError(f"model.fusion.every must be between 1 and the LLM's {num_layers} layers, got {every}")
        _choice("placement", placement, PLACEMENTS)
        self.every = every
        self.only_latest_media = only_latest_media
        if chunk_end != END_OF_CHUNK or media_around is not None:
            # IDEFICS writes <fake_token_around_image><image><fake_token_around_image> and no chunk ends.
            self.layout = TextLayout(placeholders=1, chunk_end=chunk_end, around=media_around)
        # IDEFICS: tokens after an end of sequence see no media until the next medium (packed documents).
        self.eos_ends_media = eos_ends_media
        self.eos_token_id: int | None = None
        # "last": layer i gets a block when (i + 1) % every == 0 (OpenFlamingo's placement);
        # "first": when i % every == 0, so layer 0 has one (IDEFICS's cross_layer_interval).
        first = placement == "first"
        self.layer_ids = [i for i in range(num_layers) if (i if first else i + 1) % every == 0]
        block_options = dict(norm=norm, norm_eps=norm_eps, ffn=ffn, ff_dim=ff_dim, gate=gate, gate_init=gate_init,
                             gate_init_std=gate_init_std, qk_norm=qk_norm, media_dim=media_dim)
        self.blocks = nn.ModuleDict(
            {str(i): GatedCrossAttentionBlock(hidden_size, heads, dim_head, ff_mult, output_scale, **block_options)
             for i in self.layer_ids}
        )
        # A projector without a final norm (linear, MLP) hands over media at any scale; Flamingo's
        # resampler ends in a LayerNorm, so the blocks can share one here when the projector lacks it.
        self.media_norm = nn.LayerNorm(media_dim or hidden_size) if media_norm else None
        self.media_token_ids: dict[str, int] = {}
        self._hooks: list[Any] = []

    def attach(self, llm: Any) -> None:
        self.media_token_ids = dict(llm.media_token_ids)
        self.eos_token_id = llm.tokenizer.eos_token_id
        for hook in self._hooks:
            hook.remove()
        self._hooks = [
            layer.register_forward_pre_hook(self._make_hook(i), with_kwargs=True)
            for i, layer in enumerate(llm.decoder_layers)
        ]

    def _make_hook(self, layer_id: int):
        key = str(layer_id)

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            cond: CallConditioning | None = kwargs.pop(LAYER_KWARG, None)
            if cond is None or key not in self.blocks:
                return args, kwargs
            cond.calls.append(layer_id)
            hidden = args[0] if args else kwargs["hidden_states"]
            hidden = self._apply_block(key, hidden, cond)
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs["hidden_states"] = hidden
            return args, kwargs

        return hook

    def _apply_block(self, key: str, hidden: torch.Tensor, cond: CallConditioning) -> torch.Tensor:
        state = cond.state
        block = self.blocks[key]
        # The blocks keep their own dtype (fp32 beside a bf16 LLM): inputs in, output back to the LLM's.
        dtype = block.to_q.weight.dtype
        if state.media is None:
            # No medium in the batch: the block still runs (its FFN), so a text-only prompt gets the same
            # result alone as beside prompts with media (batch-size invariance; OpenFlamingo and IDEFICS
            # apply the FFN to every token too).
            return block(hidden.to(dtype), None).to(hidden.dtype)
        if not torch.is_grad_enabled():
            # Generation: keys/values once per prompt, reused at every decoding step.
            if key not in state.kv_cache:
                state.kv_cache[key] = block.keys_values(state.media.to(dtype))
            kv = state.kv_cache[key]
        else:
            # Training: each block runs once per forward anyway, and a cache would hand
            # gradient-less tensors to a reentrant activation-checkpointing recompute.
            kv = state.media.to(dtype)  # the block computes its keys and values inside its forward
        if cond.visible is None:  # the same for every block of this call
            slot = cond.token_slot.unsqueeze(-1)  # [B, T, 1]
            key_slot = state.key_slot.view(1, 1, -1)
            visible = key_slot == slot if state.only_latest else key_slot <= slot
            allowed = visible & state.key_valid.unsqueeze(1) & (slot >= 0)
            if cond.token_segment is not None:
                allowed = allowed & (cond.token_segment.unsqueeze(-1) == state.key_segment.unsqueeze(1))
            cond.visible = (allowed, allowed.any(-1))
        return block(hidden.to(dtype), kv, *cond.visible).to(hidden.dtype)

    # -- per-call conditioning ---------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, embeds: torch.Tensor, media: dict[str, MediaTokens]) -> torch.Tensor:
        return embeds

    def begin(self, input_ids: torch.Tensor, media: dict[str, MediaTokens],
              segments: torch.Tensor | None = None) -> CrossAttentionState:
        """Lay the media out per row in text order (slot s = the s-th media token of the row)."""
        masks = placeholder_masks(input_ids, self.media_token_ids, PLACEHOLDERS)
        check_media_counts(masks, media, {m: 1 for m in media})
        batch = input_ids.shape[0]
        last = torch.full((batch,), -1, dtype=torch.long, device=input_ids.device)
        present = {m: t for m, t in media.items() if len(t.tokens)}
        if not present:
            return CrossAttentionState(None, None, None, last, self.only_latest_media)
        any_media = torch.stack(list(masks.values())).any(0)
        slot_of_position = any_media.long().cumsum(1) - 1
        num_slots = int(any_media.sum(1).max())
        max_tokens = max(int(t.tokens.shape[1]) for t in present.values())
        dim = next(iter(present.values())).tokens.shape[-1]
        ref = next(iter(present.values())).tokens
        slots = ref.new_zeros(batch, num_slots, max_tokens, dim)
        valid = torch.zeros(batch, num_slots, max_tokens, dtype=torch.bool, device=ref.device)
        for modality, item in present.items():
            rows, cols = masks[modality].nonzero(as_tuple=True)  # row-major = media order
            order = torch.argsort(item.sample_index, stable=True)
            k = item.tokens.shape[1]
            slots[rows, slot_of_position[rows, cols], :k] = item.tokens[order]
            valid[rows, slot_of_position[rows, cols], :k] = True
        key_slot = torch.arange(num_slots, device=ref.device).repeat_interleave(max_tokens)
        media = slots.flatten(1, 2)
        key_segment = None
        if segments is not None:  # each slot belongs to the packed sample its placeholder is in
            slot_segment = torch.full((batch, num_slots), -1, dtype=torch.long, device=ref.device)
            rows, cols = any_media.nonzero(as_tuple=True)
            slot_segment[rows, slot_of_position[rows, cols]] = segments[rows, cols]
            key_segment = slot_segment.repeat_interleave(max_tokens, dim=1)
        return CrossAttentionState(
            media=self.media_norm(media) if self.media_norm is not None else media,
            key_slot=key_slot,
            key_valid=valid.flatten(1, 2),
            last_slot=last,
            only_latest=self.only_latest_media,
            segments=segments,
            key_segment=key_segment,
        )

    def layer_kwargs(self, state: CrossAttentionState, input_ids: torch.Tensor) -> dict[str, Any]:
        """Conditioning for the next tokens; advances the state's most-recent-media pointer."""
        is_media = torch.zeros_like(input_ids, dtype=torch.bool)
        for modality in PLACEHOLDERS:
            is_media |= input_ids == self.media_token_ids[PLACEHOLDERS[modality]]
        token_slot = state.last_slot.unsqueeze(1) + is_media.long().cumsum(1)
        state.last_slot = token_slot[:, -1]
        if self.eos_ends_media and self.eos_token_id is not None:
            token_slot = token_slot.masked_fill(self._after_eos(state, input_ids, is_media), -1)
        packed = state.segments is not None and state.segments.shape == input_ids.shape
        return {LAYER_KWARG: CallConditioning(state, token_slot, state.segments if packed else None)}

    def _after_eos(self, state: CrossAttentionState, input_ids: torch.Tensor, is_media: torch.Tensor) -> torch.Tensor:
        """[B, T]: tokens with an end of sequence between them and their most recent medium (the EOS
        itself still sees it); advances `state.closed` across calls."""
        is_eos = (input_ids == self.eos_token_id).long()
        eos_through = is_eos.cumsum(1)
        eos_before = eos_through - is_eos
        # EOS count before the most recent medium of this call (-1: none yet); counts only grow, so cummax.
        at_media = torch.where(is_media, eos_before, torch.full_like(eos_before, -1)).cummax(1).values
        carried = state.closed if state.closed is not None else torch.zeros_like(is_media[:, 0])
        closed = torch.where(at_media < 0, carried.unsqueeze(1) | (eos_before > 0), eos_before > at_media)
        last = at_media[:, -1]
        state.closed = torch.where(last < 0, carried | (eos_through[:, -1] > 0), eos_through[:, -1] > last)
        return closed

    def check_call(self, state: CrossAttentionState | None, layer_kwargs: dict[str, Any]) -> None:
        """Fail loudly if the decoder swallowed the conditioning kwargs instead of passing them on."""
        cond = layer_kwargs.get(LAYER_KWARG)
        if cond is not None and state is not None and state.media is not None and not cond.calls:
            raise RuntimeError(
                "gated_xattn: the LLM's decoder did not pass keyword arguments to its layers, so "
                "cross-attention never ran; this model family is not supported by gated_xattn"
            )

    def wrap_modules(self) -> list[nn.Module]:
        return list(self.blocks.values())

    def zero_gated_parameters(self) -> tuple[list[str], bool]:
        return zero_gated(self.blocks, {"media_norm": self.media_norm})
