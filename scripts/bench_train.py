"""Training and generation speed of lamm's MultimodalLM against the peers that ship inside transformers,
measured side by side in one run on one shared configuration.

    /work/main/.venv/bin/python -P scripts/bench_train.py                  # defaults (~6 min here)
    /work/main/.venv/bin/python -P scripts/bench_train.py --steps 10 --gen-repeats 5
    /work/main/.venv/bin/python -P scripts/bench_train.py --models ours_prefix,llava --no-gen
    /work/main/.venv/bin/python -P scripts/bench_train.py --peer-logits-to-keep   # peers compute logits only at the tail

Shared configuration
    LLM      real SmolLM2-135M-Instruct (lamm's `smollm2_135m` loader), frozen, fp32, peft LoRA r=8 alpha=16
             dropout=0.05 on the decoder's q_proj and v_proj only
    vision   384 wide, 6 layers, 6 heads, MLP 1536, 224 px / patch 32 = 49 patches, frozen, random
             (ours: `small_vit`; LLaVA: CLIPVisionModel (+CLS = 50 tokens, CLS dropped by LLaVA);
             Idefics: IdeficsVisionTransformer (+CLS = 50 tokens, all 50 fed to its perceiver))
    batch    4 samples x exactly 128 LLM positions, one image each, loss on the last 8 tokens only
    prefix   ours: small_vit -> mlp (384->576->576, GELU) -> placeholders.  Peer: LlavaForConditionalGeneration
             (LLaVA projector has the same shape; ours' projector weights are copied into it)
    xattn    ours: small_vit -> perceiver (64 latents, depth 2, 6 heads x 64, ff x4) -> gated_xattn every 2nd
             layer (9 heads x 64, ff x4).  Peer: IdeficsForVisionText2Text (perceiver 64 latents, depth 2,
             6 heads x 64; gated cross-attention every 2nd layer, 9 heads, SwiGLU MLP 1536 - same parameter
             count as ours' ff x4)
    generate batch 4, one image + 32-token prompt, 32 new tokens forced (greedy, no EOS stop)

Timing: every model is built first; then the training steps of all models are interleaved round by round
(so load from other work on this shared CPU hits every model alike) and the median step is reported; same
for generation.  Each step is forward + backward + AdamW step over the trainable parameters.
Memory: peak process RSS sampled every 2 ms by a psutil thread during each step, minus the RSS right
before the step (glibc's free heap is returned with malloc_trim(0) first), i.e. the step's transient
memory (activations, gradients, optimizer state growth); the resident weights of all models are printed
separately.  torch has no CPU allocator statistics, and tracemalloc / ru_maxrss do not see torch's heap
per phase, hence RSS sampling.
FLOPs: counted on one extra (untimed) step of each model with torch.utils.flop_counter.FlopCounterMode -
every matmul that actually runs (2*m*n*k), so backward counts only the gradients autograd computes - plus
SDPA, which the counter does not know on CPU: 4*B*H*Lq*Lk*dh forward, 8*B*H*Lq*Lk*dh backward (causal
masking not discounted).  An analytic formula for the LLM part is printed next to it.  The CPU's fp32
peak is measured in the same run from a 2048^3 torch.mm.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

# ----------------------------------------------------------------------------------------------
# measurement helpers


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class PeakRSS:
    """Peak resident set size over a `with` block, sampled by a thread (bytes above the RSS at entry)."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.base = self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        _malloc_trim()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def delta(self) -> int:
        return self.peak - self.base


def _sdpa_flop_mapping():
    """FlopCounterMode formulas for CPU flash attention (the counter ships none for it)."""
    import torch

    aten = torch.ops.aten

    def fwd(q, k, v, *args, out_shape=None, **kwargs):
        b, h, lq, d = q
        return 2 * b * h * lq * k[-2] * d + 2 * b * h * lq * k[-2] * v[-1]

    def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        b, h, lq, d = q
        return 2 * (2 * b * h * lq * k[-2] * d + 2 * b * h * lq * k[-2] * v[-1])

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd,
    }


def count_flops(fn: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_sdpa_flop_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` fp32 GFLOP/s of an n^3 torch.mm on this CPU, now."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _params(model) -> tuple[int, int]:
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ----------------------------------------------------------------------------------------------
# the runners


@dataclass
class Runner:
    name: str
    fusion: str
    model: object
    train_step: Callable[[], float]  # one optimizer step, returns the loss
    generate: Callable[[], "object"] | None
    notes: list[str] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    step_mem: list[int] = field(default_factory=list)
    gen_times: list[float] = field(default_factory=list)
    flops: int = 0
    losses: list[float] = field(default_factory=list)


def _optimizer(model):
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)


def _wrap_step(model, loss_fn):
    opt = _optimizer(model)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def build_ours(args, fusion: str, data) -> Runner:
    import torch

    from lamm.batch import Batch, MediaBatch
    from lamm.build import build_model

    torch.manual_seed(args.seed)
    encoder = {"name": "small_vit", "image_size": 224, "patch_size": 32, "width": 384, "depth": 6, "heads": 6}
    if fusion == "prefix":
        projector = {"name": "mlp", "depth": 2}
        fusion_cfg = {"name": "prefix"}
    else:
        projector = {"name": "perceiver", "num_latents": 64, "depth": args.perceiver_depth, "heads": 6,
                     "dim_head": 64, "ff_mult": 4}
        fusion_cfg = {"name": "gated_xattn", "every": 2, "heads": 9, "dim_head": 64, "ff_mult": 4}
    cfg = {
        "llm": {"name": "smollm2_135m"},
        "encoder": encoder,
        "projector": projector,
        "fusion": fusion_cfg,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "v_proj"]},
        "policy": {"encoder": "frozen", "projector": "full", "fusion": "full", "llm": "lora"},
    }
    model = build_model(cfg)
    model.train()
    placeholders = model.fusion.layout.placeholders_per_medium(model.media_specs()["image"].projected_tokens)
    ids, labels, gen_ids = data.layout(placeholders)
    mask = torch.ones_like(ids)
    media = {"image": MediaBatch(data.images, torch.arange(len(ids)))}
    batch = Batch(ids, mask, labels, media)
    gen_batch = Batch(gen_ids, torch.ones_like(gen_ids), None, media)

    def loss_fn():
        return model(batch, logits="none").loss

    def gen():
        model.eval()
        out = model.generate(gen_batch, max_new_tokens=args.gen_new, eos_token_id=-1)
        model.train()
        assert out.shape == (len(gen_ids), args.gen_new), out.shape
        return out

    name = "ours_prefix" if fusion == "prefix" else "ours_xattn"
    runner = Runner(name, fusion, model, _wrap_step(model, loss_fn), gen)
    runner.notes.append(f"attn_implementation={model.llm.causal_lm.config._attn_implementation}")
    return runner


def _lora_peer(model, pattern: str):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=pattern)
    # get_peft_model freezes every non-adapter parameter; the caller re-enables what trains.
    return get_peft_model(model, config)


def build_llava(args, data, smol, ours_prefix: Runner | None) -> Runner:
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(args.seed)
    text_config = copy.deepcopy(smol.causal_lm.config)
    vision_config = CLIPVisionConfig(
        hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
        image_size=224, patch_size=32, hidden_act="gelu", projection_dim=384,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=data.image_id,
        image_seq_length=49,
        vision_feature_layer=-1,  # ours uses the last encoder layer too
        vision_feature_select_strategy="default",  # drop CLS -> 49 tokens
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    sd = smol.causal_lm.state_dict()
    lm_sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    missing, unexpected = model.model.language_model.load_state_dict(lm_sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"LLaVA language model: missing {missing}, unexpected {unexpected}")
    tied = model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
    if not tied:
        model.lm_head.weight.data.copy_(sd["lm_head.weight"] if "lm_head.weight" in sd else sd["model.embed_tokens.weight"])
    notes = [f"LLM: all {len(lm_sd)} SmolLM2 tensors copied (lm_head {'tied' if tied else 'copied'})"]
    if ours_prefix is not None:
        src = ours_prefix.model.projectors["image"].net
        with torch.no_grad():
            model.model.multi_modal_projector.linear_1.weight.copy_(src[0].weight)
            model.model.multi_modal_projector.linear_1.bias.copy_(src[0].bias)
            model.model.multi_modal_projector.linear_2.weight.copy_(src[2].weight)
            model.model.multi_modal_projector.linear_2.bias.copy_(src[2].bias)
        notes.append("projector: ours' mlp weights copied")
    notes.append("vision tower: CLIPVisionModel, same sizes, own random init (not shareable: CLS + pre-LN)")
    _lora_peer(model, r"model\.language_model\.layers\.\d+\.self_attn\.(q_proj|v_proj)")
    model.model.multi_modal_projector.requires_grad_(True)
    model.train()
    model.model.vision_tower.eval()
    notes.append(f"attn_implementation={model.config.text_config._attn_implementation}")

    ids, labels, gen_ids = data.layout(49)  # LLaVA: one <image> token per patch feature
    mask = torch.ones_like(ids)
    keep = args.loss_tokens + 1 if args.peer_logits_to_keep else 0

    def loss_fn():
        lab = labels[:, -keep:] if keep else labels
        return model(input_ids=ids, attention_mask=mask, pixel_values=data.images, labels=lab,
                     logits_to_keep=keep).loss

    def gen():
        model.eval()
        out = model.generate(input_ids=gen_ids, attention_mask=torch.ones_like(gen_ids), pixel_values=data.images,
                             max_new_tokens=args.gen_new, min_new_tokens=args.gen_new, do_sample=False,
                             pad_token_id=smol.tokenizer.pad_token_id)
        model.train()
        model.model.vision_tower.eval()
        assert out.shape[1] - gen_ids.shape[1] == args.gen_new, out.shape
        return out

    return Runner("llava", "prefix", model, _wrap_step(model, loss_fn), gen, notes)


def build_idefics(args, data, smol) -> Runner:
    import torch
    from transformers import IdeficsConfig, IdeficsForVisionText2Text

    torch.manual_seed(args.seed)
    c = smol.causal_lm.config
    heads, kv_heads, head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    config = IdeficsConfig(
        vocab_size=c.vocab_size, additional_vocab_size=0, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers, num_attention_heads=heads,
        dropout=0.0, hidden_act=c.hidden_act, rms_norm_eps=c.rms_norm_eps,
        pad_token_id=smol.tokenizer.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        tie_word_embeddings=True, cross_layer_interval=2, freeze_text_layers=True, freeze_vision_layers=True,
        freeze_lm_head=True, use_resampler=True, max_position_embeddings=c.max_position_embeddings,
        rope_parameters=dict(c.rope_parameters),
        vision_config=dict(embed_dim=384, image_size=224, patch_size=32, intermediate_size=1536,
                           num_hidden_layers=6, num_attention_heads=6, hidden_act="gelu"),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=64, resampler_depth=args.perceiver_depth,
                              resampler_n_heads=6, resampler_head_dim=64),
    )
    model = IdeficsForVisionText2Text(config)
    sd = smol.causal_lm.state_dict()
    target = model.state_dict()
    load, expanded, skipped = {}, [], []
    for k, v in sd.items():
        if k not in target:
            skipped.append(k)
            continue
        if v.shape != target[k].shape and k.endswith(("k_proj.weight", "v_proj.weight")):
            # Idefics has no grouped-query attention: repeat each K/V head for the query heads sharing it
            # (the same function as Llama's repeat_kv, at 3x the K/V projection cost).
            v = v.view(kv_heads, head_dim, -1).repeat_interleave(heads // kv_heads, 0).reshape(target[k].shape)
            expanded.append(k)
        load[k] = v
    missing, unexpected = model.load_state_dict(load, strict=False)
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if not tied:
        model.lm_head.weight.data.copy_(sd.get("lm_head.weight", sd["model.embed_tokens.weight"]))
    own = sorted({m.split(".")[1] if m.startswith("model.") else m.split(".")[0] for m in missing})
    notes = [
        f"LLM: {len(load)} of {len(sd)} SmolLM2 tensors loaded into the Idefics decoder "
        f"({len(expanded)} k/v_proj GQA->MHA expanded {kv_heads}->{heads} heads; lm_head {'tied' if tied else 'copied'})",
        f"not from SmolLM2 (own random init): {', '.join(own)}",
    ]
    if skipped or unexpected:
        notes.append(f"SmolLM2 tensors with no Idefics slot: {skipped + list(unexpected)}")
    _lora_peer(model, r"model\.layers\.\d+\.self_attn\.(q_proj|v_proj)")
    model.model.perceiver_resampler.requires_grad_(True)
    model.model.gated_cross_attn_layers.requires_grad_(True)
    model.train()
    model.model.vision_model.eval()
    notes.append(f"attn_implementation={model.config._attn_implementation}")

    ids, labels, gen_ids = data.layout(1)  # Idefics: one <image> marker per image
    mask = torch.ones_like(ids)
    pixels = data.images.unsqueeze(1)  # [B, num_images=1, 3, H, W]
    img_mask = torch.ones(len(ids), ids.shape[1], 1, dtype=torch.long)  # every token sees the image (it is first)
    gen_img_mask = torch.ones(len(gen_ids), gen_ids.shape[1], 1, dtype=torch.long)
    keep = args.loss_tokens + 1 if args.peer_logits_to_keep else 0

    def loss_fn():
        lab = labels[:, -keep:] if keep else labels
        return model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_attention_mask=img_mask,
                     labels=lab, logits_to_keep=keep).loss

    def gen():
        model.eval()
        out = model.generate(input_ids=gen_ids, attention_mask=torch.ones_like(gen_ids), pixel_values=pixels,
                             image_attention_mask=gen_img_mask, max_new_tokens=args.gen_new,
                             min_new_tokens=args.gen_new, do_sample=False,
                             pad_token_id=smol.tokenizer.pad_token_id)
        model.train()
        model.model.vision_model.eval()
        assert out.shape[1] - gen_ids.shape[1] == args.gen_new, out.shape
        return out

    return Runner("idefics", "gated_xattn", model, _wrap_step(model, loss_fn), gen, notes)


class Data:
    """One shared batch: images, random text ids, and the token layout per fusion."""

    def __init__(self, args, tokenizer, image_id: int) -> None:
        import torch

        g = torch.Generator().manual_seed(args.seed)
        self.args = args
        self.image_id = image_id
        b, t = args.batch, args.seq
        self.images = torch.randn(b, 3, 224, 224, generator=g)
        low, high = 100, min(len(tokenizer), 49152) - 100  # ordinary vocabulary, no special tokens
        self.text = torch.randint(low, high, (b, t), generator=g)
        self.prompt = torch.randint(low, high, (b, args.gen_prompt), generator=g)

    def layout(self, n_media: int):
        """(train ids [B, T], labels [B, T] with only the last `loss_tokens` set, generation prompt ids),
        each row starting with `n_media` image placeholders (as many as the model writes per image)."""
        import torch

        b, t = self.text.shape
        media = torch.full((b, n_media), self.image_id)
        ids = torch.cat([media, self.text[:, : t - n_media]], 1)  # exactly T positions
        labels = torch.full_like(ids, -100)
        labels[:, -self.args.loss_tokens:] = ids[:, -self.args.loss_tokens:]
        gen_ids = torch.cat([media, self.prompt], 1)
        return ids, labels, gen_ids


def llm_formula(args, smol, positions_with_logits: int, kv_expand: int = 1) -> tuple[int, str]:
    """Analytic training FLOPs of the LLM part alone (LoRA and fusion excluded)."""
    c = smol.causal_lm.config
    d, L, V, f = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    kv = c.num_key_value_heads * c.head_dim * kv_expand
    n_dec = L * (2 * d * d + 2 * d * kv + 3 * d * f)
    tokens = args.batch * args.seq
    fwd_lin = 2 * n_dec * tokens
    fwd_att = 4 * L * args.seq**2 * d * args.batch
    head = 2 * d * V * positions_with_logits
    total = 2 * fwd_lin + 3 * fwd_att + 2 * head
    text = (f"N_dec={n_dec / 1e6:.1f}M, tokens={tokens}, P={positions_with_logits}: "
            f"2*(2*N_dec*tokens) + 3*(4*L*T^2*d*B) + 2*(2*d*V*P) = {total / 1e9:.0f} GFLOP")
    return total, text


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ours_prefix,llava,ours_xattn,idefics",
                        help="comma list from ours_prefix, llava, ours_xattn, idefics")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps per model")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    parser.add_argument("--gen-warmup", type=int, default=1)
    parser.add_argument("--gen-repeats", type=int, default=5, help="timed generate() calls per model")
    parser.add_argument("--no-gen", action="store_true", help="skip the generation measurement")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting step")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128, help="LLM positions per sample (image tokens + text)")
    parser.add_argument("--loss-tokens", type=int, default=8, help="response tokens that carry labels")
    parser.add_argument("--gen-prompt", type=int, default=32)
    parser.add_argument("--gen-new", type=int, default=32)
    parser.add_argument("--perceiver-depth", type=int, default=2)
    parser.add_argument("--peer-logits-to-keep", action="store_true",
                        help="peers compute logits only at the last loss_tokens+1 positions (not their default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "inherit"],
                        help="OMP_WAIT_POLICY set before torch loads (default PASSIVE; 'inherit' keeps the env's). "
                             "On this shared 2-core CPU, spinning OpenMP workers (libgomp's default) slow small-op "
                             "workloads such as decoding by 10-30x whenever another process holds a core")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - {"ours_prefix", "llava", "ours_xattn", "idefics"}
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}")

    import os

    if args.omp_wait_policy != "inherit":
        if "torch" in sys.modules:
            raise RuntimeError("--omp-wait-policy must be applied before torch is imported")
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import psutil
    import torch
    import transformers

    from lamm.registry import LLMS

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    proc = psutil.Process()
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads={torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"fp32, batch={args.batch}, positions={args.seq}, loss tokens={args.loss_tokens}, "
          f"steps={args.warmup}+{args.steps}, generate {args.gen_prompt}+image -> {args.gen_new} new "
          f"x{args.gen_warmup}+{args.gen_repeats}")

    t0 = time.perf_counter()
    smol = LLMS.build("smollm2_135m")  # pristine SmolLM2 (+ lamm's media tokens) for the peers' weights
    smol.causal_lm.eval().requires_grad_(False)
    image_id = smol.media_token_ids["<image>"]
    data = Data(args, smol.tokenizer, image_id)
    print(f"SmolLM2 loaded in {time.perf_counter() - t0:.1f} s; vocab {smol.causal_lm.config.vocab_size} "
          f"(lamm's media tokens added), <image> id {image_id}")

    runners: list[Runner] = []
    ours_prefix = None
    for name in names:
        t0 = time.perf_counter()
        if name == "ours_prefix":
            ours_prefix = build_ours(args, "prefix", data)
            runner = ours_prefix
        elif name == "ours_xattn":
            runner = build_ours(args, "gated_xattn", data)
        elif name == "llava":
            runner = build_llava(args, data, smol, ours_prefix)
        else:
            runner = build_idefics(args, data, smol)
        trainable, total = _params(runner.model)
        print(f"built {name:12s} in {time.perf_counter() - t0:5.1f} s: params {total / 1e6:.1f}M, "
              f"trainable {trainable / 1e6:.3f}M")
        for note in runner.notes:
            print(f"    {note}")
        runners.append(runner)
    gc.collect()
    _malloc_trim()
    print(f"RSS with all models resident: {proc.memory_info().rss / 2**30:.2f} GiB")

    # -- training: warm up, then interleave timed steps round by round ---------------------------
    for r in runners:
        for _ in range(args.warmup):
            r.losses.append(r.train_step())
    for _ in range(args.steps):
        for r in runners:
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                r.losses.append(r.train_step())
                r.step_times.append(time.perf_counter() - t0)
            r.step_mem.append(mem.delta)

    peak = matmul_peak_gflops()
    if not args.no_flops:
        for r in runners:
            r.flops = count_flops(r.train_step)
    peak_after = matmul_peak_gflops()

    # -- generation -------------------------------------------------------------------------------
    if not args.no_gen:
        with torch.no_grad():
            for r in runners:
                for _ in range(args.gen_warmup):
                    r.generate()
            for _ in range(args.gen_repeats):
                for r in runners:
                    t0 = time.perf_counter()
                    r.generate()
                    r.gen_times.append(time.perf_counter() - t0)

    # -- report -----------------------------------------------------------------------------------
    peak_gflops = max(peak, peak_after)
    tokens = args.batch * args.seq
    print()
    print(f"fp32 matmul peak (2048^3 torch.mm, best of 5, before/after FLOP counting): "
          f"{peak:.1f} / {peak_after:.1f} GFLOP/s -> using {peak_gflops:.1f}")
    print()
    header = (f"{'model':12s} {'fusion':11s} {'step s (med)':>12s} {'min..max':>13s} {'samples/s':>9s} "
              f"{'tokens/s':>8s} {'step mem MiB':>12s} {'GFLOP/step':>10s} {'GFLOP/s':>7s} {'%peak':>5s} "
              f"{'gen s (med)':>11s} {'gen tok/s':>9s}")
    print(header)
    print("-" * len(header))
    summary = {}
    for r in runners:
        med = statistics.median(r.step_times)
        gflop = r.flops / 1e9
        achieved = gflop / med if r.flops else float("nan")
        gen_med = statistics.median(r.gen_times) if r.gen_times else float("nan")
        summary[r.name] = (med, gen_med)
        print(f"{r.name:12s} {r.fusion:11s} {med:12.3f} {min(r.step_times):6.2f}..{max(r.step_times):<6.2f} "
              f"{args.batch / med:9.2f} {tokens / med:8.0f} {max(r.step_mem) / 2**20:12.0f} "
              f"{gflop:10.0f} {achieved:7.1f} {100 * achieved / peak_gflops:5.1f} "
              f"{gen_med:11.3f} {args.batch * args.gen_new / gen_med:9.1f}")
    print()
    print("losses (first .. last step, sanity):", ", ".join(f"{r.name} {r.losses[0]:.2f}..{r.losses[-1]:.2f}"
                                                       for r in runners))
    print()
    print("FLOP formula (the GFLOP/step column): counted over one real training step with")
    print("  torch.utils.flop_counter: every executed matmul 2*m*n*k (backward: only the grads autograd computes,")
    print("  i.e. input-grads through frozen weights downstream of the first trainable parameter + weight-grads of")
    print("  trainable ones; the frozen vision tower runs forward only) + SDPA 4*B*H*Lq*Lk*dh fwd, 8*B*H*Lq*Lk*dh bwd.")
    print("  Analytic LLM-only check (frozen linears: fwd + input-grad = 2x; attention: fwd + 2x bwd = 3x;")
    print("  lm_head over the P positions with logits: 2x):")
    for r in runners:
        if r.name.startswith("ours"):
            p = args.batch * args.loss_tokens
        else:
            p = args.batch * (args.loss_tokens + 1 if args.peer_logits_to_keep else args.seq)
        _, text = llm_formula(args, smol, p, kv_expand=3 if r.name == "idefics" else 1)
        print(f"    {r.name:12s} {text}")
    print()
    print("ratios (targets >= 1.1x):")
    pairs = [("ours_prefix", "llava"), ("ours_xattn", "idefics")]
    for ours, peer in pairs:
        if ours in summary and peer in summary:
            (o_step, o_gen), (p_step, p_gen) = summary[ours], summary[peer]
            train = p_step / o_step
            gen = p_gen / o_gen
            print(f"  {ours} vs {peer}: training throughput {train:.2f}x {'OK' if train >= 1.1 else 'BELOW TARGET'}; "
                  f"generation {gen:.2f}x {'OK' if gen >= 1.1 else 'BELOW TARGET'}")
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
