"""`MultimodalLM`: encoders and projectors per modality, a fusion, and a language model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lamm.batch import Batch, MediaBatch, MediaSpec
from lamm.fusion.base import Fusion, MediaTokens
from lamm.llm.language_model import LanguageModel
from lamm.llm.lora_merge import merged_lora

IGNORE_INDEX = -100


@dataclass
class ModelOutput:
    """Loss over label tokens and the logits asked for.

    `logits` is [N, V] at the label positions (logits="labels"), [B, T, V] (logits="all") or
    [B, V] at each row's last real token (logits="last"); None when not asked for.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None


class MultimodalLM(nn.Module):
    """media -> encoder -> projector -> fusion -> LLM, for any mix of modalities."""

    def __init__(
        self,
        llm: LanguageModel,
        encoders: dict[str, nn.Module],
        projectors: dict[str, nn.Module],
        fusion: Fusion,
    ) -> None:
        super().__init__()
        missing = set(encoders) ^ set(projectors)
        if missing:
            raise ValueError(f"every modality needs an encoder and a projector; unmatched: {sorted(missing)}")
        self.llm = llm
        self.encoders = nn.ModuleDict(encoders)
        self.projectors = nn.ModuleDict(projectors)
        self.fusion = fusion
        fusion.attach(llm)

    # -- what the data pipeline needs ----------------------------------------------------------

    def media_specs(self) -> dict[str, MediaSpec]:
        """Per modality: the encoder's transform and how many placeholders one medium takes."""
        specs = {}
        for modality, encoder in self.encoders.items():
            k = self.projectors[modality].num_tokens(encoder.num_tokens())
            specs[modality] = MediaSpec(encoder.transform, self.fusion.placeholders_per_medium(k))
        return specs

    def placeholder_text(self, modality: str) -> str:
        """The text one medium of `modality` occupies in a prompt under this model's fusion."""
        from lamm.tokens import END_OF_CHUNK, PLACEHOLDERS

        n = self.media_specs()[modality].num_tokens
        return PLACEHOLDERS[modality] * n + ("" if self.fusion.layout == "prefix" else END_OF_CHUNK)

    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    # -- forward -------------------------------------------------------------------------------

    def encode_media(self, media: dict[str, MediaBatch]) -> dict[str, MediaTokens]:
        """Encode and project every modality's media (one batched call per modality)."""
        out = {}
        for modality, item in media.items():
            if modality not in self.encoders:
                raise ValueError(
                    f"batch has {modality} media but the model has no {modality} encoder "
                    f"(model modalities: {sorted(self.encoders)})"
                )
            if len(item) == 0:
                continue
            tokens = self.projectors[modality](self.encoders[modality](item.data))
            out[modality] = MediaTokens(tokens, item.sample_index)
        return out

    def forward(self, batch: Batch, logits: str = "labels") -> ModelOutput:
        """Loss on label tokens (-100 ignored) and the requested logits ("labels" | "all" | "last" | "none")."""
        input_ids, attention_mask = batch.input_ids, batch.attention_mask
        media = self.encode_media(batch.media)
        embeds = self.fusion.embed(input_ids, self.llm.embed(input_ids), media)
        state = self.fusion.begin(input_ids, media)
        hidden, _ = self._decode(embeds, attention_mask, _positions(attention_mask), state, input_ids)

        loss = None
        selected = None
        if batch.labels is not None:
            # Hidden state t predicts token t+1; compute logits only where a label exists.
            targets = batch.labels[:, 1:]
            where = targets != IGNORE_INDEX
            selected = self.llm.logits(hidden[:, :-1][where])
            loss = F.cross_entropy(selected.float(), targets[where]) if where.any() else hidden.sum() * 0.0
        if logits == "all":
            return ModelOutput(loss, self.llm.logits(hidden))
        if logits == "last":
            return ModelOutput(loss, self.llm.logits(hidden[torch.arange(len(hidden)), _last_index(attention_mask)]))
        if logits == "labels":
            return ModelOutput(loss, selected)
        return ModelOutput(loss, None)

    def _decode(self, embeds, attention_mask, position_ids, state, input_ids, past=None, use_cache=False):
        kwargs = self.fusion.layer_kwargs(state, input_ids) if state is not None else {}
        hidden, past = self.llm.hidden_states(
            embeds, attention_mask, position_ids, past_key_values=past, use_cache=use_cache, **kwargs
        )
        _check_conditioning_reached(state, kwargs)
        return hidden, past

    # -- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        batch: Batch,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        streamer: Any = None,
        merge_lora: bool | str = "auto",
    ) -> torch.Tensor:
        """Batched decoding with KV cache; returns the new tokens [B, <=max_new_tokens] (pad after EOS).

        Media are encoded once per prompt, and cross-attention keys/values once per prompt.
        Left or right padding both work: positions come from the attention mask.
        `streamer` follows Hugging Face's streamer protocol (`put(tokens)`, `end()`), but receives only
        the new tokens, one [B] tensor per step (rows already finished get pad), never the prompt.
        `merge_lora` folds LoRA into copies of the adapted weights while decoding (fewer ops per token;
        the originals are restored untouched): True, False, or "auto" (when the copies need <= 1 GiB).
        """
        with merged_lora(self, merge_lora):
            return self._generate(batch, max_new_tokens, do_sample, temperature, top_p, eos_token_id,
                                  use_cache, generator, streamer)

    def _generate(self, batch, max_new_tokens, do_sample, temperature, top_p, eos_token_id, use_cache,
                  generator, streamer) -> torch.Tensor:
        tok = self.llm.tokenizer
        eos = _as_list(eos_token_id if eos_token_id is not None else tok.eos_token_id)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        input_ids, attention_mask = batch.input_ids, batch.attention_mask
        media = self.encode_media(batch.media)
        prompt_embeds = self.fusion.embed(input_ids, self.llm.embed(input_ids), media)
        state = self.fusion.begin(input_ids, media)
        eos_t = torch.tensor(eos, device=input_ids.device)

        positions = _positions(attention_mask)
        hidden, past = self._decode(prompt_embeds, attention_mask, positions, state, input_ids, use_cache=use_cache)
        last_hidden = hidden[torch.arange(len(hidden)), _last_index(attention_mask)]
        next_position = positions.max(1).values + 1
        embeds_so_far, ids_so_far = prompt_embeds, input_ids
        finished = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        for _ in range(max_new_tokens):
            step_logits = self.llm.logits(last_hidden).float()
            token = _pick(step_logits, do_sample, temperature, top_p, generator)
            token = torch.where(finished, torch.full_like(token, pad), token)
            new_tokens.append(token)
            if streamer is not None:
                streamer.put(token)
            finished |= torch.isin(token, eos_t)
            if bool(finished.all()):
                break
            step_ids = token.unsqueeze(1)
            step_embeds = self.llm.embed(step_ids)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(token), 1)], 1)
            if use_cache:
                hidden, past = self._decode(
                    step_embeds, attention_mask, next_position.unsqueeze(1), state, step_ids, past, True
                )
            else:  # reference path: re-run the whole sequence (used to test the cached path)
                embeds_so_far = torch.cat([embeds_so_far, step_embeds], 1)
                ids_so_far = torch.cat([ids_so_far, step_ids], 1)
                state = self.fusion.begin(input_ids, media) if state is not None else None
                full_positions = torch.cat([positions, _step_positions(positions, ids_so_far.shape[1])], 1)
                hidden, _ = self._decode(embeds_so_far, attention_mask, full_positions, state, ids_so_far)
            last_hidden = hidden[:, -1]
            next_position = next_position + 1
        if streamer is not None:
            streamer.end()
        if not new_tokens:
            return input_ids.new_zeros(len(input_ids), 0)
        return torch.stack(new_tokens, 1)

    # -- parameters ----------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "MultimodalLM":
        """Train mode for the parts that train; frozen parts stay in eval (BatchNorm stats, dropout)."""
        super().train(mode)
        policy = getattr(self, "policy", None)
        if mode and policy is not None:
            if policy.encoder == "frozen":
                self.encoders.eval()
            if policy.projector == "frozen":
                self.projectors.eval()
        return self

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter that requires grad, by name (the policy decides which)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        """What training changes, by name: the trainable parameters plus the persistent buffers of the
        modules that own them (BatchNorm running statistics, which eval mode normalises with)."""
        out: dict[str, torch.Tensor] = dict(self.trainable_parameters())
        for prefix, module in self.named_modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                for name, buf in module.named_buffers(recurse=False):
                    if buf is not None and name not in module._non_persistent_buffers_set:
                        out[f"{prefix}.{name}" if prefix else name] = buf
        return out


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding on either side."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def _step_positions(prompt_positions: torch.Tensor, total: int) -> torch.Tensor:
    extra = total - prompt_positions.shape[1]
    start = prompt_positions.max(1, keepdim=True).values + 1
    return start + torch.arange(extra, device=prompt_positions.device).unsqueeze(0)


def _last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (works for left and right padding)."""
    t = attention_mask.shape[1]
    idx = torch.arange(t, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), idx, torch.zeros_like(idx)).max(1).values


def _as_list(x: int | list[int]) -> list[int]:
    return list(x) if isinstance(x, (list, tuple)) else [int(x)]


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / max(temperature, 1e-5), -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_conditioning_reached(state: Any, kwargs: dict) -> None:
    """Fail loudly if the decoder swallowed the conditioning kwargs instead of passing them on."""
    for cond in kwargs.values():
        calls = getattr(cond, "calls", None)
        if calls is not None and getattr(state, "media", None) is not None and not calls:
            raise RuntimeError(
                "gated_xattn: the LLM's decoder did not pass keyword arguments to its layers, so "
                "cross-attention never ran; this model family is not supported by gated_xattn"
            )
