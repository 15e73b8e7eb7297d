"""A tiny, randomly initialised causal LM and its tokenizer, built offline in well under a second.

Tests and quick experiments use it in place of a real checkpoint. The tokenizer is a byte-level
BPE trained on a small built-in corpus, so any text round-trips; it carries a ChatML template
like SmolLM2's so chat rendering behaves the same as with the real model.
"""
from __future__ import annotations

import functools

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "What colour is the shape? The shape is red. green blue yellow purple orange white black",
    "Which shape is it? circle square triangle star cross diamond ellipse",
    "How many shapes are there? one two three four five six 0 1 2 3 4 5 6 7 8 9",
    "Is it on the left or the right? left right top bottom middle center",
    "Describe the image. A small red circle on a noisy background next to a blue square.",
    "The video shows a shape moving up down left right and changing colour.",
    "The point cloud contains a sphere box cylinder cone torus, larger smaller same size.",
    "Which digit is this? Answer with a single word. yes no true false A B C D",
    "You are a helpful assistant. User: Hello! Assistant: Hi, how can I help you today?",
    "The quick brown fox jumps over the lazy dog. Question Answer Options Context Image",
    "### Instruction: ### Input: ### Response: ### Image: Human: AI: USER: ASSISTANT:",
]


@functools.lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A fresh byte-level BPE tokenizer with a ChatML template (no media tokens yet)."""
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_causal_lm(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A small Llama-architecture model with random weights (seeded)."""
    import torch

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # At width 64 the default 0.02 caps every logit near 1 (RMS-normed hidden x tiny tied
        # embeddings), so the model could never become confident; 0.1 lets tests see learning.
        initializer_range=0.1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()
