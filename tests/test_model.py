"""MultimodalLM: fusion equivalences at init, media masking, cached generation, policy, combinations."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lamm.batch import Batch, MediaBatch
from lamm.build import build_model
from lamm.fusion.base import MediaCountError
from lamm.testing import (
    TINY_ENCODERS,
    TINY_FUSIONS,
    TINY_PROJECTORS,
    media_text,
    random_media,
    text_batch,
    tiny_model_config,
)

ENCODER_MODALITY = {"small_cnn": "image", "small_vit": "image", "open_clip": "image", "timm": "image",
                    "video": "video", "point_bert": "pointcloud"}


def open_gates(model, value: float = 0.8) -> None:
    """Give the cross-attention blocks non-zero gates so media actually change the output."""
    for block in model.fusion.blocks.values():
        nn.init.constant_(block.attn_gate, value)
        nn.init.constant_(block.ff_gate, value / 2)


def distinct_media(model) -> None:
    """A random CNN maps every noise image to nearly the same tokens at init; offset the tokens by
    each image's mean so tests that swap an image see a clear difference."""
    for encoder in model.encoders.values():
        if not getattr(encoder, "_distinct", False):
            encoder.register_forward_hook(lambda mod, inp, out: out + 3 * inp[0].flatten(1).mean(1)[:, None, None])
            encoder._distinct = True


def bare_logits(model, batch) -> torch.Tensor:
    """The underlying HF model on the same tokens, no lamm code in the way."""
    mask = batch.attention_mask
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return model.llm.causal_lm(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions).logits


@pytest.fixture()  # function scope: tests open its gates
def xattn_model():
    return build_model(tiny_model_config(fusion="gated_xattn")).eval()


@pytest.fixture(scope="module")
def prefix_model():
    return build_model(tiny_model_config(fusion="prefix")).eval()


def two_image_batch(model, first: torch.Tensor, second: torch.Tensor):
    distinct_media(model)
    ph = media_text(model, "image")
    texts = [f"Look at this {ph} then this {ph} and say which colour", f"One {ph} shape here"]
    return text_batch(model, texts, {"image": (torch.cat([first, second, second]), [0, 0, 1])})


def test_gated_xattn_at_init_equals_bare_llm(xattn_model) -> None:
    images = random_media(xattn_model, "image", 2)
    batch = two_image_batch(xattn_model, images[:1], images[1:])
    ours = xattn_model(batch, logits="all").logits
    assert torch.allclose(ours, bare_logits(xattn_model, batch), atol=1e-5)


def test_prefix_without_media_equals_bare_llm(prefix_model) -> None:
    batch = text_batch(prefix_model, ["What colour is the sky?", "Hello there, assistant"])
    ours = prefix_model(batch, logits="all").logits
    assert torch.allclose(ours, bare_logits(prefix_model, batch), atol=1e-5)


def _positions(batch, token_id: int, row: int = 0) -> list[int]:
    return (batch.input_ids[row] == token_id).nonzero().flatten().tolist()


def conditioned_hidden(model, batch) -> torch.Tensor:
    """Hidden states right after the first cross-attention block, before any self-attention mixes them.

    The LLM's own self-attention legitimately carries what earlier tokens saw to later tokens, so
    the media mask is checked where it acts: on the block's output.
    """
    first = model.fusion.layer_ids[0]
    seen = []
    handle = model.llm.decoder_layers[first].register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True,
    )
    try:
        model(batch)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("only_latest", [True, False])
def test_xattn_media_mask(only_latest: bool) -> None:
    cfg = tiny_model_config(fusion="gated_xattn")
    cfg["fusion"]["only_latest_media"] = only_latest
    model = build_model(cfg).eval()
    open_gates(model)
    images = random_media(model, "image", 3)
    a = two_image_batch(model, images[:1], images[2:])
    b = two_image_batch(model, images[1:2], images[2:])  # only the first image differs
    ha, hb = conditioned_hidden(model, a), conditioned_hidden(model, b)
    first, second = _positions(a, model.llm.media_token_ids["<image>"])
    assert torch.equal(ha[0, :first], hb[0, :first])  # before any media: nothing seen
    assert not torch.allclose(ha[0, first:second], hb[0, first:second], atol=1e-4)
    after_second_same = torch.allclose(ha[0, second:], hb[0, second:], atol=1e-6)
    assert after_second_same == only_latest  # immediate mode: only the most recent medium counts
    assert torch.equal(ha[1], hb[1])  # another sample is never affected


def test_text_before_first_media_sees_nothing(xattn_model, prefix_model) -> None:
    for model in (xattn_model, prefix_model):
        if model is xattn_model:
            open_gates(model)
        images = random_media(model, "image", 3)
        a, b = two_image_batch(model, images[:1], images[2:]), two_image_batch(model, images[1:2], images[1:2])
        la, lb = model(a, logits="all").logits, model(b, logits="all").logits
        first = _positions(a, model.llm.media_token_ids["<image>"])[0]
        assert torch.allclose(la[0, :first], lb[0, :first], atol=1e-5)
        assert not torch.allclose(la[0, first:], lb[0, first:], atol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_cached_generation_equals_uncached(fusion: str, padding_side: str, xattn_model, prefix_model) -> None:
    model = xattn_model if fusion == "gated_xattn" else prefix_model
    if fusion == "gated_xattn":
        open_gates(model)
    images = random_media(model, "image", 2)
    ph = media_text(model, "image")
    texts = [f"Look at this {ph} then this {ph} and say which colour", f"One {ph} shape here"]
    batch = text_batch(model, texts, {"image": (torch.cat([images, images[1:]]), [0, 0, 1])}, padding_side)
    cached = model.generate(batch, max_new_tokens=10, eos_token_id=-1)
    uncached = model.generate(batch, max_new_tokens=10, eos_token_id=-1, use_cache=False)
    assert cached.shape == (2, 10)
    assert torch.equal(cached, uncached)
    if padding_side == "right":  # and padding never changes what a row generates
        left = text_batch(model, texts, {"image": (torch.cat([images, images[1:]]), [0, 0, 1])}, "left")
        assert torch.equal(cached, model.generate(left, max_new_tokens=10, eos_token_id=-1))


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_batched_generation_equals_one_by_one(fusion: str, xattn_model, prefix_model) -> None:
    model = xattn_model if fusion == "gated_xattn" else prefix_model
    if fusion == "gated_xattn":
        open_gates(model)
    images = random_media(model, "image", 3)
    batch = two_image_batch(model, images[:1], images[1:2])
    together = model.generate(batch, max_new_tokens=6, eos_token_id=-1)
    ph = media_text(model, "image")
    alone = text_batch(model, [f"One {ph} shape here"], {"image": (images[1:2], [0])})
    assert torch.equal(together[1], model.generate(alone, max_new_tokens=6, eos_token_id=-1)[0])


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_generation_with_merged_lora_equals_unmerged_and_restores_weights(fusion: str) -> None:
    from peft.tuners.lora import LoraLayer

    from lamm.llm.lora_merge import merged_lora

    model = build_model(tiny_model_config(fusion=fusion)).eval()
    if fusion == "gated_xattn":
        open_gates(model)
    torch.manual_seed(0)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert layers
    for layer in layers:  # B starts at zero; give the adapters something to merge
        nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    images = random_media(model, "image", 2)
    batch = two_image_batch(model, images[:1], images[1:])
    plain = model.generate(batch, max_new_tokens=8, eos_token_id=-1, merge_lora=False)
    merged = model.generate(batch, max_new_tokens=8, eos_token_id=-1, merge_lora=True)
    assert torch.equal(plain, merged)
    with merged_lora(model, True) as count:
        assert count == len(layers) and all(layer.merged for layer in layers)
        assert not torch.equal(layers[0].get_base_layer().weight, before[_name(model, layers[0])][1])
        # merged in place: no copy of any weight is held while decoding
        assert all(layer.get_base_layer().weight.data_ptr() == before[_name(model, layer)][0].data_ptr()
                   for layer in layers)
    after = dict(model.named_parameters())
    for name, (param, value) in before.items():  # same tensors, same bits: no unmerge rounding drift
        assert after[name] is param and torch.equal(param, value), name
    assert not any(layer.merged for layer in layers)


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_merge_matches_the_adapter_and_restores_every_bit(use_dora: bool) -> None:
    """Plain LoRA merges in place; DoRA (not a plain addition) into a copy; both give the weights back exactly."""
    from peft import LoraConfig, inject_adapter_in_model

    from lamm.llm.lora_merge import merged_lora

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 24))
    net = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], use_dora=use_dora), net)
    for name, param in net.named_parameters():
        if "lora_B" in name or "magnitude" in name:
            nn.init.normal_(param, std=0.3)
    weights = [net[0].base_layer.weight, net[2].base_layer.weight]
    before = [(w.data_ptr(), w.detach().clone()) for w in weights]
    x = torch.randn(5, 48)
    with torch.no_grad():
        unmerged = net(x)
        with merged_lora(net, True) as count:
            merged = net(x)
            assert count == 2 and [w.data_ptr() == p for w, (p, _) in zip(weights, before)] == [not use_dora] * 2
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert all(w.data_ptr() == p and torch.equal(w, value) for w, (p, value) in zip(weights, before))
    assert not net[0].merged and not net[2].merged


def test_lora_merge_interrupted_part_way_restores_every_weight(monkeypatch) -> None:
    """A Ctrl-C (lamm-chat carries on after one) or an error in the middle of merging leaves no layer merged."""
    from peft import LoraConfig, inject_adapter_in_model

    from lamm.llm import lora_merge

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 24))
    net = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"]), net)
    for name, param in net.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.3)
    weights = [net[0].base_layer.weight, net[2].base_layer.weight]
    before = [w.detach().clone() for w in weights]
    monkeypatch.setattr(lora_merge, "_BLOCK_ELEMENTS", 400)  # several blocks per layer: interrupted inside one
    real_addmm, calls = torch.addmm, []

    def addmm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 9:  # the second layer's third block, after the first layer merged whole
            raise KeyboardInterrupt
        return real_addmm(*args, **kwargs)

    monkeypatch.setattr(torch, "addmm", addmm)
    with pytest.raises(KeyboardInterrupt), torch.no_grad(), lora_merge.merged_lora(net, True):
        pass
    assert all(torch.equal(w, value) for w, value in zip(weights, before))
    assert not net[0].merged and not net[2].merged


def _name(model, layer) -> str:
    return next(n for n, m in model.named_modules() if m is layer) + ".base_layer.weight"


def test_xattn_keys_values_computed_once_per_prompt(xattn_model, monkeypatch) -> None:
    calls = []
    for block in xattn_model.fusion.blocks.values():
        original = block.keys_values
        monkeypatch.setattr(block, "keys_values", lambda media, f=original: calls.append(1) or f(media))
    images = random_media(xattn_model, "image", 2)
    xattn_model.generate(two_image_batch(xattn_model, images[:1], images[1:]), max_new_tokens=5, eos_token_id=-1)
    assert len(calls) == len(xattn_model.fusion.blocks)


def test_generation_stops_at_eos(prefix_model) -> None:
    batch = text_batch(prefix_model, ["Hello", "What is it"])
    first = prefix_model.generate(batch, max_new_tokens=3, eos_token_id=-1)
    stopped = prefix_model.generate(batch, max_new_tokens=8, eos_token_id=int(first[0, 0]))
    assert stopped[0, 0] == first[0, 0]
    assert stopped.shape[1] <= 8


def test_policy_marks_and_steps_only_declared_parameters() -> None:
    model = build_model(tiny_model_config(fusion="gated_xattn", policy={"encoder": "frozen"}))
    trainable = model.trainable_parameters()
    assert trainable and not any(n.startswith("encoders.") for n in trainable)
    assert any(n.startswith("projectors.") for n in trainable)
    assert any(n.startswith("fusion.") for n in trainable)
    assert "llm.media_token_embedding" in trainable
    llm_trainable = [n for n in trainable if n.startswith("llm.") and n != "llm.media_token_embedding"]
    assert llm_trainable and all("lora_" in n for n in llm_trainable)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers_before = {n: b.clone() for n, b in model.encoders.named_buffers()}
    assert buffers_before  # small_cnn has BatchNorm running statistics
    model.train()
    assert not model.encoders.training and model.projectors.training
    images = random_media(model, "image", 1)
    batch = text_batch(model, [f"A {media_text(model, 'image')} red circle"], {"image": (images, [0])})
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    model(batch).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)
    buffers_after = dict(model.encoders.named_buffers())
    assert all(torch.equal(b, buffers_before[n]) for n, b in buffers_after.items())  # frozen BatchNorm stats too
    frozen_with_grad = [n for n, p in model.named_parameters() if n not in trainable and p.grad is not None]
    assert not frozen_with_grad


COMBINATIONS = [(e, p, f) for e in TINY_ENCODERS for p in TINY_PROJECTORS for f in TINY_FUSIONS]


@pytest.mark.parametrize("encoder,projector,fusion", COMBINATIONS)
def test_forward_backward_every_combination(encoder: str, projector: str, fusion: str) -> None:
    model = build_model(tiny_model_config(encoder, projector, fusion))
    if fusion == "gated_xattn":
        open_gates(model)  # at 0 the gates (rightly) block every gradient to the media path
    modality = ENCODER_MODALITY[encoder]
    ph = media_text(model, modality)
    batch = text_batch(model, [f"Look {ph} here", f"{ph} and {ph} there"],
                       {modality: (random_media(model, modality, 3), [0, 1, 1])}, padding_side="right")
    loss = model(batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    projector_grads = [p.grad for p in model.projectors.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in projector_grads)
    assert any(g.abs().sum() > 0 for g in projector_grads)


def test_mixed_modalities_in_one_batch() -> None:
    cfg = tiny_model_config()
    cfg["encoder"] = {"image": TINY_ENCODERS["small_cnn"], "video": TINY_ENCODERS["video"],
                      "pointcloud": TINY_ENCODERS["point_bert"]}
    cfg["projector"] = TINY_PROJECTORS["perceiver"]
    for fusion in TINY_FUSIONS.values():
        cfg["fusion"] = fusion
        model = build_model(cfg)
        if fusion["name"] == "gated_xattn":
            open_gates(model)
        i, v, p = (media_text(model, m) for m in ("image", "video", "pointcloud"))
        batch = text_batch(model, [f"{i} then {v}", "no media at all", f"{p} cloud {i}"], {
            "image": (random_media(model, "image", 2), [0, 2]),
            "video": (random_media(model, "video", 1), [0]),
            "pointcloud": (random_media(model, "pointcloud", 1), [2]),
        })
        loss = model(batch).loss
        loss.backward()
        assert torch.isfinite(loss)
        for modality, projector in model.projectors.items():
            assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in projector.parameters()), modality


def test_media_count_mismatch_is_one_clear_error(prefix_model, xattn_model) -> None:
    for model in (prefix_model, xattn_model):
        ph = media_text(model, "image")
        images = random_media(model, "image", 2)
        too_many = text_batch(model, [f"one {ph} only"], {"image": (images, [0, 0])})
        with pytest.raises(MediaCountError, match=r"sample 0: 2 image media need .* but the text has"):
            model(too_many)
        too_few = text_batch(model, [f"{ph} and {ph}"], {"image": (images[:1], [0])})
        with pytest.raises(MediaCountError, match="sample 0"):
            model(too_few)


def test_wrong_media_shape_names_expected_and_got(prefix_model) -> None:
    ph = media_text(prefix_model, "image")
    batch = text_batch(prefix_model, [f"a {ph}"], {"image": (torch.randn(1, 1, 32, 32), [0])})
    with pytest.raises(ValueError, match=r"expects .*got \[1, 1, 32, 32\]"):
        prefix_model(batch)


def test_media_for_a_modality_without_encoder(prefix_model) -> None:
    batch = text_batch(prefix_model, ["no placeholders"], {"video": (torch.randn(1, 2, 3, 32, 32), [0])})
    with pytest.raises(ValueError, match="no video encoder"):
        prefix_model(batch)


def test_xattn_every_beyond_the_llm_depth_is_refused() -> None:
    cfg = tiny_model_config(fusion="gated_xattn")
    cfg["fusion"]["every"] = 5
    with pytest.raises(ValueError, match="model.fusion.every must be between 1 and the LLM's 4 layers, got 5"):
        build_model(cfg)


def test_gated_xattn_with_media_norm_at_init_equals_bare_llm() -> None:
    cfg = tiny_model_config(fusion="gated_xattn")
    cfg["fusion"]["media_norm"] = True
    model = build_model(cfg).eval()
    assert model.fusion.media_norm is not None
    images = random_media(model, "image", 2)
    batch = two_image_batch(model, images[:1], images[1:])
    assert torch.allclose(model(batch, logits="all").logits, bare_logits(model, batch), atol=1e-5)


def test_gated_xattn_residual_output_scale() -> None:
    """At init the LLM is unchanged; once open, each block adds rms(x) * its raw output."""
    from lamm.fusion.gated_xattn import GatedCrossAttentionBlock

    cfg = tiny_model_config(fusion="gated_xattn")
    cfg["fusion"]["output_scale"] = "residual"
    model = build_model(cfg).eval()
    images = random_media(model, "image", 2)
    batch = two_image_batch(model, images[:1], images[1:])
    assert torch.allclose(model(batch, logits="all").logits, bare_logits(model, batch), atol=1e-5)

    torch.manual_seed(0)
    plain, scaled = GatedCrossAttentionBlock(16, 2, 8, 2), GatedCrossAttentionBlock(16, 2, 8, 2, "residual")
    scaled.load_state_dict(plain.state_dict())
    nn.init.constant_(plain.ff_gate, 0.0), nn.init.constant_(scaled.ff_gate, 0.0)
    nn.init.constant_(plain.attn_gate, 0.5), nn.init.constant_(scaled.attn_gate, 0.5)
    x, media = 7.0 * torch.randn(1, 3, 16), torch.randn(1, 4, 16)
    allowed = torch.ones(1, 3, 4, dtype=torch.bool)
    delta_plain = plain(x, plain.keys_values(media), allowed, allowed.any(-1)) - x
    delta_scaled = scaled(x, scaled.keys_values(media), allowed, allowed.any(-1)) - x
    rms = x.pow(2).mean(-1, keepdim=True).sqrt()
    assert torch.allclose(delta_scaled, delta_plain * rms, atol=1e-5)
    with pytest.raises(ValueError, match="model.fusion.output_scale must be one of none, residual"):
        GatedCrossAttentionBlock(16, output_scale="layer")


def test_lr_multipliers_reach_their_parameter_groups() -> None:
    from lamm.training.optim import OptimConfig, param_groups

    model = build_model(tiny_model_config(fusion="gated_xattn"))
    cfg = OptimConfig(lr=1.0, gate_lr_multiplier=10.0, encoder_lr_multiplier=2.0, fusion_lr_multiplier=3.0)
    lr_of = {id(p): g["lr"] for g in param_groups(model, cfg) for p in g["params"]}
    named = dict(model.named_parameters())
    gate = next(n for n in named if n.endswith("attn_gate"))
    block_weight = next(n for n in named if n.startswith("fusion.") and n.endswith("to_q.weight"))
    encoder_weight = next(n for n in named if n.startswith("encoders."))
    assert lr_of[id(named[gate])] == 10.0
    assert lr_of[id(named[block_weight])] == 3.0
    assert lr_of[id(named[encoder_weight])] == 2.0


# -- the public boundary: prefill and loglikelihood ------------------------------------------------


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_loglikelihood_equals_full_logits_either_way(fusion: str, padding_side: str, xattn_model, prefix_model) -> None:
    from lamm.batch import Continuation

    model = xattn_model if fusion == "gated_xattn" else prefix_model
    if fusion == "gated_xattn":
        open_gates(model)
    images = random_media(model, "image", 3)
    ph = media_text(model, "image")
    prompts = text_batch(model, [f"Look at {ph} and {ph}: colour?", f"One {ph} shape:"],
                         {"image": (images, [0, 0, 1])}, padding_side, labels=False)
    tok = model.tokenizer
    words = [[" red", " blue the"], [" square", " disc", " cone"]]
    conts = [[Continuation(tok(w, add_special_tokens=False)["input_ids"]) for w in per] for per in words]
    conts[1][0] = Continuation(conts[1][0].ids + (tok.eos_token_id,), [True] * len(conts[1][0].ids) + [False])
    shared = model.loglikelihood(prompts, conts)
    full = model.loglikelihood(prompts, conts, share_prompt_cache=False)
    mean = model.loglikelihood(prompts, conts, mean=True)
    # By hand: one forward over prompt + continuation, summing log p of the scored tokens.
    for row, per in enumerate(conts):
        real = prompts.input_ids[row][prompts.attention_mask[row].bool()].tolist()
        media = images[:2] if row == 0 else images[2:]
        for j, c in enumerate(per):
            ids = torch.tensor([real + list(c.ids)])
            one = Batch(ids, torch.ones_like(ids), None, {"image": MediaBatch(media, torch.zeros(len(media), dtype=torch.long))})
            with torch.no_grad():
                logp = model(one, logits="all").logits[0].float().log_softmax(-1)
            n = len(real)
            expected = sum(float(logp[n + k - 1, t]) for k, (t, s) in enumerate(zip(c.ids, c.mask)) if s)
            assert shared[row][j] == pytest.approx(expected, abs=1e-4)
            assert full[row][j] == pytest.approx(expected, abs=1e-4)
            assert mean[row][j] == pytest.approx(expected / sum(c.mask), abs=1e-4)


def test_prefill_is_what_forward_and_generate_continue_from(prefix_model) -> None:
    images = random_media(prefix_model, "image", 2)
    batch = two_image_batch(prefix_model, images[:1], images[1:])
    with torch.no_grad():
        pre = prefix_model.prefill(batch)
        last = prefix_model(batch, logits="last").logits
    assert pre.cache is not None and pre.state is None  # prefix fusion keeps no per-token state
    assert torch.allclose(prefix_model.llm.logits(pre.last_hidden), last, atol=1e-5)
    assert pre.next_position.tolist() == batch.attention_mask.sum(1).tolist()
    first = prefix_model.generate(batch, max_new_tokens=1, eos_token_id=-1)[:, 0]
    assert torch.equal(first, last.argmax(-1))


def test_loglikelihood_rejects_mismatched_continuations(prefix_model) -> None:
    from lamm.batch import Continuation

    batch = text_batch(prefix_model, ["a", "b"], labels=False)
    with pytest.raises(ValueError, match="2 prompts but continuations for 1"):
        prefix_model.loglikelihood(batch, [[Continuation([5])]])
    with pytest.raises(ValueError, match="2 ids but 1 scored"):
        Continuation([5, 6], [True])


def test_gated_xattn_fails_loudly_when_the_decoder_drops_its_kwargs(xattn_model, monkeypatch) -> None:
    """The fusion's post-call check: a decoder that swallows the layer kwargs would silently ignore media."""
    original = xattn_model.llm.hidden_states
    monkeypatch.setattr(xattn_model.llm, "hidden_states", lambda *args, **kwargs: original(
        *args, **{k: v for k, v in kwargs.items() if k in ("past_key_values", "use_cache")}))
    batch = text_batch(xattn_model, [f"{media_text(xattn_model, 'image')} colour?"],
                       {"image": (random_media(xattn_model, "image", 1), [0])})
    with pytest.raises(RuntimeError, match="did not pass keyword arguments"):
        xattn_model(batch)
    monkeypatch.undo()
    assert torch.isfinite(xattn_model(batch).loss)
