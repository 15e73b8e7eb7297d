"""`LanguageModel`: a Hugging Face causal LM seen through the few operations the framework needs."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Sequence

import torch
from torch import nn

from lamm.tokens import MEDIA_TOKENS, add_media_tokens


def find_decoder_layers(model: nn.Module, num_layers: int | None = None) -> nn.ModuleList:
    """The decoder's layer list, found generically: the longest ModuleList of same-class blocks.

    Works for any HF causal LM (Llama `model.layers`, GPT-2 `transformer.h`, GPT-NeoX
    `gpt_neox.layers`, ...) and through peft wrappers, without a per-family table.
    """
    best: nn.ModuleList | None = None
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if num_layers is not None and len(module) != num_layers:
            continue
        if best is None or len(module) > len(best):
            best = module
    if best is None:
        raise ValueError(
            f"could not find the decoder layers of {type(model).__name__}: no ModuleList of "
            f"{num_layers or 'same-class'} blocks"
        )
    return best


@functools.cache
def _cache_kwarg(backbone_type: type) -> str:
    """`cache` for backbones that take it (transformers >= 5.x, model by model), else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(backbone_type.forward).parameters else "past_key_values"


class LanguageModel(nn.Module):
    """A causal LM plus its tokenizer, with the media tokens added and their embeddings trainable.

    The original vocabulary stays in the (usually frozen) input embedding; the media tokens get
    their own small embedding table so they can train while the rest of the LLM stays frozen
    (and weight decay never touches frozen rows).
    """

    def __init__(self, causal_lm: nn.Module, tokenizer: Any, name: str = "llm") -> None:
        super().__init__()
        self.name = name
        self.tokenizer = tokenizer
        known = tokenizer.get_vocab()
        added = [t for t in MEDIA_TOKENS if t not in known]
        self.media_token_ids = add_media_tokens(tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if causal_lm.get_input_embeddings().num_embeddings < len(tokenizer):
            causal_lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        self.causal_lm = causal_lm
        config = causal_lm.config.get_text_config()
        self.hidden_size: int = config.hidden_size
        self.num_layers: int = config.num_hidden_layers
        self.decoder_layers = find_decoder_layers(causal_lm, self.num_layers)

        ids = [self.media_token_ids[t] for t in MEDIA_TOKENS]
        table = torch.full((causal_lm.get_input_embeddings().num_embeddings,), -1, dtype=torch.long)
        table[ids] = torch.arange(len(ids))
        self.register_buffer("_media_row", table, persistent=False)
        base = causal_lm.get_input_embeddings().weight
        with torch.no_grad():
            # New rows start at the mean embedding, in the HF table too, so a bare forward of the
            # HF model and ours agree until the media tokens train. Tokens the tokenizer already had
            # (an imported OpenFlamingo's <image>) keep their trained rows, which a tied LM head reads.
            others = torch.ones(base.shape[0], dtype=torch.bool)
            others[ids] = False
            new = [self.media_token_ids[t] for t in added]
            base[new] = base[others].mean(0, keepdim=True).to(base.dtype)
        self.media_token_embedding = nn.Parameter(base[ids].detach().clone().float())

    # -- the operations the rest of the framework uses -------------------------------------

    @property
    def backbone(self) -> nn.Module:
        """The decoder stack without the LM head (peft injects LoRA into it in place)."""
        return self.causal_lm.base_model

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings, with the media tokens taken from their own trainable table."""
        embeds = self.causal_lm.get_input_embeddings()(input_ids)
        rows = self._media_row[input_ids]
        is_media = rows >= 0
        if bool(is_media.any()):
            media = self.media_token_embedding.to(embeds.dtype)[rows.clamp(min=0)]
            embeds = torch.where(is_media.unsqueeze(-1), media, embeds)
        return embeds

    def hidden_states(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any = None,
        use_cache: bool = False,
        **layer_kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        """Run the decoder; `layer_kwargs` travel explicitly to every decoder layer."""
        backbone = self.backbone
        # transformers 5.x renames `past_key_values` to `cache` model by model; use the backbone's name.
        cache_kwarg = _cache_kwarg(type(backbone))
        out = backbone(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **{cache_kwarg: past_key_values},
            **layer_kwargs,
        )
        if not use_cache:
            return out.last_hidden_state, None
        cache = getattr(out, "cache", None)
        return out.last_hidden_state, (cache if cache is not None else out.past_key_values)

    def static_cache(self, batch_size: int, length: int) -> Any:
        """An empty preallocated KV cache for `batch_size` rows of up to `length` positions, written in
        place (transformers' `StaticCache`)."""
        from transformers import StaticCache

        config = self.causal_lm.config.get_text_config(decoder=True)
        cache = StaticCache(config=config, max_cache_len=length)
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        weight = self.causal_lm.get_input_embeddings().weight
        # All buffers now, before the prefill's temporaries: made lazily layer by layer in between them, they
        # pin freed memory and the process's peak RSS grows by more than the cache itself. (Under autocast the
        # keys' dtype is not the weights': left to the first write.)
        if not torch.is_autocast_enabled(weight.device.type) and self._kv_widths_are(heads * head_dim):
            cache.early_initialization(batch_size, heads, head_dim, weight.dtype, weight.device)
        return cache

    def _kv_widths_are(self, width: int) -> bool:
        """Every decoder layer has one k_proj and one v_proj of `width` outputs: the one shape an up-front
        static cache assumes (not so for MLA's or per-layer head counts, which stay lazily allocated)."""
        for layer in self.decoder_layers:
            widths = [getattr(m, "out_features", None) for n, m in layer.named_modules()
                      if n.endswith(("k_proj", "v_proj")) and not n.endswith("base_layer")]
            if len(widths) != 2 or any(w != width for w in widths):
                return False
        return True

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits for the given hidden states (call it only where logits are needed)."""
        return self.causal_lm.get_output_embeddings()(hidden)

    def wrap_modules(self) -> list[nn.Module]:
        """The decoder layers: the units a sharded strategy wraps (and activation checkpointing recomputes)."""
        return list(self.decoder_layers)

    # -- LoRA ------------------------------------------------------------------------------

    def apply_lora(
        self,
        r: int,
        alpha: float,
        dropout: float,
        targets: Sequence[str],
        **extra: Any,
    ) -> None:
        """Inject peft LoRA adapters into the LLM in place (the peft wrapper is kept for export)."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(targets),
            task_type="CAUSAL_LM",
            **extra,
        )
        # peft replaces the target Linear layers inside `causal_lm` itself, so `backbone` and
        # `decoder_layers` keep pointing at the adapted modules. The wrapper is kept outside the
        # module tree so its parameters are not listed (or saved) twice.
        object.__setattr__(self, "peft_model", get_peft_model(self.causal_lm, config))

    @property
    def has_lora(self) -> bool:
        return getattr(self, "peft_model", None) is not None

    def chat_prompt(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render messages with the tokenizer's chat template."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
