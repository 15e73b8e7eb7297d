"""`MultimodalLM`: encoders and projectors per modality, a fusion, and a language model.

Outside training, everything uses the public model boundary (as lmms-eval's models do):
`prefill` (a prompt run once), `loglikelihood` (scores of continuations of prompts) and
`generate`; the fusion decides how each of them conditions on media.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lamm.batch import IGNORE_INDEX, Batch, Continuation, MediaBatch, MediaSpec
from lamm.fusion.base import Fusion, MediaTokens
from lamm.llm.language_model import LanguageModel
from lamm.llm.lora_merge import merged_lora
from lamm.llm.onednn_linear import onednn_linears


@dataclass
class ModelOutput:
    """Loss over label tokens and the logits asked for.

    `logits` is [N, V] at the label positions (logits="labels"), [B, T, V] (logits="all") or
    [B, V] at each row's last real token (logits="last"); None when not asked for.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None


@dataclass
class Prefill:
    """A batch of prompts run once through the model: what decoding or scoring continues from.

    `hidden` [B, T, H] last-layer states; `cache` the LLM's KV cache (None without `use_cache`);
    `state` the fusion's conditioning state (None when it keeps none); `positions` [B, T] the
    position ids used (padding skipped, so left or right padding both work).
    """

    hidden: torch.Tensor
    cache: Any
    state: Any
    positions: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def last_hidden(self) -> torch.Tensor:
        """[B, H]: each row's state at its last real token (predicts the first new token)."""
        return self.hidden[torch.arange(len(self.hidden)), _last_index(self.attention_mask)]

    @property
    def next_position(self) -> torch.Tensor:
        """[B]: the position id of each row's first new token."""
        return self.positions.max(1).values + 1


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
        """Per modality: the encoder's transform and how many tokens the projector makes of one medium."""
        specs = {}
        for modality, encoder in self.encoders.items():
            k = self.projectors[modality].num_tokens(encoder.num_tokens())
            specs[modality] = MediaSpec(encoder.transform, k)
        return specs

    def placeholder_text(self, modality: str) -> str:
        """The text one medium of `modality` occupies in a hand-written prompt, as the fusion lays it out."""
        return self.fusion.layout.medium_text(modality, self.media_specs()[modality].projected_tokens)

    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    @property
    def context_length(self) -> int | None:
        """The LLM's context window in tokens (None when its config does not say)."""
        config = self.llm.causal_lm.config.get_text_config()
        return getattr(config, "max_position_embeddings", None)

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
            projector, encoder = self.projectors[modality], self.encoders[modality]
            time_inputs = getattr(projector, "time_inputs", ())  # plug-in projectors may not subclass Projector
            extra: dict[str, Any] = {}
            if "media_positions" in time_inputs:
                extra["media_positions"] = _position_in_sample(item.sample_index)
            if "frames" in time_inputs:
                extra["frames"] = getattr(encoder, "frames_per_medium", 1)
            if item.encoded:  # the encoder's outputs, read from a frozen-feature cache
                features = item.data
            elif item.data.requires_grad or any(p.requires_grad for p in encoder.parameters()):
                features = encoder(item.data)
            else:  # a frozen encoder: no autograd bookkeeping for a graph nothing would use
                with torch.no_grad():
                    features = encoder(item.data)
            tokens = projector(features, **extra)
            out[modality] = MediaTokens(tokens, item.sample_index)
        return out

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The LLM's input embeddings [B, T, H] of token ids (media tokens from their trainable table)."""
        return self.llm.embed(input_ids)

    def media_features(self, modality: str, data: torch.Tensor) -> torch.Tensor:
        """The encoder's tokens [N, S, D] for transformed media of `modality` (before the projector)."""
        if modality not in self.encoders:
            raise ValueError(f"the model has no {modality} encoder (model modalities: {sorted(self.encoders)})")
        return self.encoders[modality](data)

    def forward(self, batch: Batch, logits: str = "labels") -> ModelOutput:
        """Loss on label tokens (IGNORE_INDEX skipped) and the requested logits ("labels" | "all" | "last" | "none")."""
        attention_mask = batch.attention_mask
        hidden = self.prefill(batch, use_cache=False).hidden

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

    def prefill(self, batch: Batch, use_cache: bool = True, cache: Any = None) -> Prefill:
        """Run prompts once: media encoded, the fusion applied, the decoder's states and KV cache kept.

        `cache`: a preallocated cache to fill (a `transformers.StaticCache`); None makes a dynamic one.
        """
        input_ids, attention_mask = batch.input_ids, batch.attention_mask
        if batch.position_ids is not None:
            for modality in batch.media:
                if "media_positions" in getattr(self.projectors[modality], "time_inputs", ()):
                    raise ValueError(f"data.packing: the {modality} projector numbers media within a sample "
                                     "(media position embeddings), which a packed row does not keep; train unpacked")
        media = self.encode_media(batch.media)
        embeds = self.fusion.embed(input_ids, self.llm.embed(input_ids), media)
        if batch.position_ids is None:
            state = self.fusion.begin(input_ids, media)
            positions = _positions(attention_mask)
            llm_mask = attention_mask if cache is None else _pad_to_cache(attention_mask, cache)
        else:  # packed rows: samples told apart by their positions restarting at 0
            if not self.fusion.supports_packing:
                raise ValueError(f"data.packing: the {type(self.fusion).__name__} fusion cannot keep packed samples apart")
            if use_cache:
                raise ValueError("packed rows (Batch.position_ids) are for training: a KV cache would mix their samples")
            positions = batch.position_ids
            state = self.fusion.begin(input_ids, media, segments=packed_segments(positions))
            # No 2-D mask: the LLM derives the block-diagonal causal mask (or flash-attention varlen) from the positions.
            llm_mask = None
        hidden, cache = self._decode(embeds, llm_mask, positions, state, input_ids, past=cache, use_cache=use_cache)
        return Prefill(hidden, cache, state, positions, attention_mask)

    def _decode(self, embeds, attention_mask, position_ids, state, input_ids, past=None, use_cache=False):
        kwargs = self.fusion.layer_kwargs(state, input_ids) if state is not None else {}
        hidden, past = self.llm.hidden_states(
            embeds, attention_mask, position_ids, past_key_values=past, use_cache=use_cache, **kwargs
        )
        self.fusion.check_call(state, kwargs)
        return hidden, past

    # -- scoring -------------------------------------------------------------------------------

    @torch.no_grad()
    def loglikelihood(
        self,
        prompts: Batch,
        continuations: Sequence[Sequence[Continuation]],
        mean: bool = False,
        share_prompt_cache: bool = True,
    ) -> list[list[float]]:
        """Per prompt row, the log-likelihood of each of its continuations given the prompt.

        Sums log p over each continuation's scored tokens (`mean`: their mean instead). When the
        fusion allows (`Fusion.shares_prompt_cache`) and `share_prompt_cache` is on, every prompt
        runs once and all its continuations are scored in one pass over its repeated KV cache;
        otherwise each prompt + continuation row runs in full. Both score the same tokens.
        """
        if len(continuations) != len(prompts):
            raise ValueError(f"loglikelihood: {len(prompts)} prompts but continuations for {len(continuations)}")
        flat = [c for per in continuations for c in per]
        if not flat:
            return [[] for _ in continuations]
        owner = torch.tensor([i for i, per in enumerate(continuations) for _ in per], device=prompts.input_ids.device)
        if share_prompt_cache and self.fusion.shares_prompt_cache:
            total, count = self._score_from_shared_prompt(prompts, flat, owner)
        else:
            total, count = self._score_full_rows(prompts, flat, owner)
        if mean:
            total = total / count.clamp(min=1)
        values = total.cpu().tolist()
        out, start = [], 0
        for per in continuations:
            out.append(values[start:start + len(per)])
            start += len(per)
        return out

    def _continuation_tensors(self, flat: Sequence[Continuation], device: torch.device):
        width = max(len(c.ids) for c in flat)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(flat), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(flat), width), dtype=torch.long, device=device)
        scored = torch.zeros((len(flat), width), dtype=torch.bool, device=device)
        for r, c in enumerate(flat):
            ids[r, : len(c.ids)] = torch.tensor(c.ids, device=device)
            mask[r, : len(c.ids)] = 1
            scored[r, : len(c.ids)] = torch.tensor(c.mask, device=device)
        return ids, mask, scored

    def _score_from_shared_prompt(self, prompts: Batch, flat: Sequence[Continuation], owner: torch.Tensor):
        device = prompts.input_ids.device
        pre = self.prefill(prompts, use_cache=True)
        cand_ids, cand_mask, scored = self._continuation_tensors(flat, device)
        cache = pre.cache
        cache.reorder_cache(owner)  # each prompt's cache, once per continuation
        full_mask = torch.cat([pre.attention_mask[owner], cand_mask], 1)
        width = cand_ids.shape[1]
        cand_pos = pre.next_position[owner].unsqueeze(1) + torch.arange(width, device=device)
        h2, _ = self._decode(self.llm.embed(cand_ids), full_mask, cand_pos, None, cand_ids, cache, use_cache=True)
        # Token j of a continuation is predicted by the state before it: the prompt's last one for j = 0.
        before = torch.cat([pre.last_hidden[owner].unsqueeze(1), h2[:, :-1]], 1)
        logp = torch.log_softmax(self.llm.logits(before[scored]).float(), -1)
        logp = logp.gather(-1, cand_ids[scored].unsqueeze(-1)).squeeze(-1)
        rows = scored.nonzero()[:, 0]
        total = torch.zeros(len(flat), device=device).index_add_(0, rows, logp)
        return total, scored.sum(1)

    def _score_full_rows(self, prompts: Batch, flat: Sequence[Continuation], owner: torch.Tensor):
        device = prompts.input_ids.device
        real = prompts.attention_mask.bool()
        rows_ids, rows_labels = [], []
        for r, c in enumerate(flat):
            prompt = prompts.input_ids[owner[r]][real[owner[r]]].tolist()
            rows_ids.append(prompt + list(c.ids))
            rows_labels.append([IGNORE_INDEX] * len(prompt) + [i if s else IGNORE_INDEX for i, s in zip(c.ids, c.mask)])
        width = max(len(r) for r in rows_ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((len(flat), width), pad, dtype=torch.long)
        labels = torch.full((len(flat), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(flat), width), dtype=torch.long)
        for r, (row, lab) in enumerate(zip(rows_ids, rows_labels)):
            ids[r, : len(row)] = torch.tensor(row)
            labels[r, : len(row)] = torch.tensor(lab)
            mask[r, : len(row)] = 1
        media = {}
        owners = owner.tolist()
        for modality, item in prompts.media.items():
            # Each row gets its prompt's media, in text order (as the collator stacks them row by row).
            of_prompt = {o: (item.sample_index == o).nonzero().flatten() for o in set(owners)}
            select = torch.cat([of_prompt[o] for o in owners])
            if len(select):
                row_of = torch.cat([torch.full((len(of_prompt[o]),), r, dtype=torch.long) for r, o in enumerate(owners)])
                media[modality] = MediaBatch(item.data[select], row_of.to(item.sample_index.device), item.encoded)
        batch = Batch(ids.to(device), mask.to(device), labels.to(device), media)
        out = self(batch, logits="labels")
        targets = batch.labels[:, 1:]
        where = targets != IGNORE_INDEX
        logp = torch.log_softmax(out.logits.float(), -1).gather(-1, targets[where].unsqueeze(-1)).squeeze(-1)
        rows = where.nonzero()[:, 0]
        total = torch.zeros(len(targets), device=logp.device).index_add_(0, rows, logp)
        return total, where.sum(1)

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
        static_cache: bool = True,
        onednn: bool = True,
    ) -> torch.Tensor:
        """Batched decoding with KV cache; returns the new tokens [B, <=max_new_tokens] (pad after EOS).

        Media are encoded once per prompt, and cross-attention keys/values once per prompt.
        Left or right padding both work: positions come from the attention mask.
        `streamer` follows Hugging Face's streamer protocol (`put(tokens)`, `end()`), but receives only
        the new tokens, one [B] tensor per step (rows already finished get pad), never the prompt.
        `merge_lora` folds LoRA into the adapted weights while decoding (fewer ops per token), in place and
        undone bit for bit afterwards (`lamm.llm.lora_merge`): True, False, or "auto" (as True when the adapted
        weights take at most 1 GiB, e.g. not for a 7B LLM's q,v, where the merge passes cost more than they save).
        `static_cache` keeps keys/values in one buffer sized for prompt + new tokens, written in place
        (a dynamic cache re-allocates every layer's keys/values at every step); False: a dynamic cache.
        `onednn` runs the LLM's and the fusion's fp32 CPU linears on oneDNN, which streams weights faster than
        MKL at decoding's few rows (`lamm.llm.onednn_linear`); no effect on other devices and dtypes.
        """
        with merged_lora(self, merge_lora), onednn_linears(self.llm, onednn), onednn_linears(self.fusion, onednn):
            return self._generate(batch, max_new_tokens, do_sample, temperature, top_p, eos_token_id,
                                  use_cache, generator, streamer, static_cache)

    def _generate(self, batch, max_new_tokens, do_sample, temperature, top_p, eos_token_id, use_cache,
                  generator, streamer, static_cache=True) -> torch.Tensor:
        tok = self.llm.tokenizer
        eos = _as_list(eos_token_id if eos_token_id is not None else tok.eos_token_id)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        input_ids, attention_mask = batch.input_ids, batch.attention_mask
        eos_t = torch.tensor(eos, device=input_ids.device)

        prompt_length = input_ids.shape[1]
        # The last new token needs no decoder step after it: prompt + max_new_tokens - 1 positions.
        cache = self.llm.static_cache(len(input_ids), prompt_length + max(max_new_tokens - 1, 0)) \
            if use_cache and static_cache else None
        if use_cache:
            pre = self.prefill(batch, use_cache=True, cache=cache)
            state, past, positions = pre.state, pre.cache, pre.positions
            if cache is not None:  # one mask as wide as the cache, opened position by position
                attention_mask = _pad_to_cache(attention_mask, cache)
        else:  # reference path: keep what re-running the whole sequence needs
            media = self.encode_media(batch.media)
            embeds_so_far = self.fusion.embed(input_ids, self.llm.embed(input_ids), media)
            state = self.fusion.begin(input_ids, media)
            positions = _positions(attention_mask)
            hidden, _ = self._decode(embeds_so_far, attention_mask, positions, state, input_ids)
            pre = Prefill(hidden, None, state, positions, attention_mask)
        last_hidden = pre.last_hidden
        next_position = pre.next_position
        ids_so_far = input_ids
        finished = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        for step in range(max_new_tokens):
            step_logits = self.llm.logits(last_hidden).float()
            token = _pick(step_logits, do_sample, temperature, top_p, generator)
            token = torch.where(finished, torch.full_like(token, pad), token)
            new_tokens.append(token)
            if streamer is not None:
                streamer.put(token)
            finished |= torch.isin(token, eos_t)
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            step_ids = token.unsqueeze(1)
            step_embeds = self.llm.embed(step_ids)
            if cache is not None:
                attention_mask[:, prompt_length + step] = 1
            else:
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

    def wrap_modules(self) -> list[nn.Module]:
        """Every part's repeated blocks (encoder blocks, perceiver layers, cross-attention blocks, decoder
        layers), from the component contracts: what FSDP shards and activation checkpointing recomputes one by one."""
        units: list[nn.Module] = []
        for part in [*self.encoders.values(), *self.projectors.values(), self.fusion, self.llm]:
            wrap = getattr(part, "wrap_modules", None)  # plug-in parts may predate the contract hook
            units += wrap() if wrap is not None else []
        return units

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


def packed_segments(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T]: which packed sample of its row each token belongs to (a new one wherever positions restart)."""
    return (position_ids == 0).long().cumsum(1) - 1


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding on either side."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def _pad_to_cache(attention_mask: torch.Tensor, cache: Any) -> torch.Tensor:
    """The attention mask widened with zeros to a preallocated cache's length (its unwritten slots)."""
    width = cache.get_max_length()
    return F.pad(attention_mask, (0, width - attention_mask.shape[1]))


def _position_in_sample(sample_index: torch.Tensor) -> torch.Tensor:
    """[N]: each medium's index among the media of its own sample (media are in text order per sample)."""
    same = sample_index.unsqueeze(0) == sample_index.unsqueeze(1)
    return torch.tril(same, diagonal=-1).sum(1)


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


