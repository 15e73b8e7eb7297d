"""Training and generation speed and peak memory of lamm's MultimodalLM against its peers (HF LLaVA, HF
IDEFICS, OpenFlamingo from PyPI), measured side by side in one run on one shared configuration.

    .venv/bin/python -P scripts/bench_train.py                   # everything, 5 interleaved rounds
    .venv/bin/python -P scripts/bench_train.py --quick           # smoke run: 2 rounds, 8 new tokens
    .venv/bin/python -P scripts/bench_train.py --models ours_prefix,llava --no-gen
    .venv/bin/python -P scripts/bench_train.py --no-train --no-gen   # only the peak-RSS processes
    .venv/bin/python -P scripts/bench_train.py --compile             # ours trains with compiled blocks (compile=true)

Shared configuration
    LLM      real SmolLM2-135M-Instruct (lamm's `smollm2_135m` loader), frozen, fp32, peft LoRA r=8 alpha=16
             dropout=0.05 on the decoder's q_proj and v_proj only
    vision   384 wide, 6 layers, 6 heads, MLP 1536, 224 px / patch 32 = 49 patches, frozen, random
             (ours: `small_vit`; LLaVA: CLIPVisionModel (+CLS = 50 tokens, CLS dropped by LLaVA);
             Idefics: IdeficsVisionTransformer (+CLS, all 50 fed to its perceiver); OpenFlamingo: open_clip
             ViT (+CLS, its 49 patch tokens fed to its perceiver))
    batch    4 samples x exactly 128 LLM positions, one image each; labels on the response: the last
             `--label-fraction` (default half) of each sample's positions, as in instruction data
    prefix   ours: small_vit -> mlp (384->576->576, GELU) -> placeholders.  Peer: LlavaForConditionalGeneration
             (LLaVA projector has the same shape; ours' projector weights are copied into it)
    xattn    ours: small_vit -> perceiver (64 latents, depth 2, 6 heads x 64, ff x4) -> gated_xattn every 2nd
             layer (9 heads x 64, ff x4).  Peers: IdeficsForVisionText2Text (perceiver 64 latents, depth 2,
             6 heads x 64; gated cross-attention every 2nd layer, 9 heads, SwiGLU MLP 1536 - same parameter
             count as ours' ff x4) and OpenFlamingo 2.0.1 (its perceiver set to the same depth 2, 6 heads x 64,
             64 latents; its cross-attention every 2nd layer has a fixed 8 heads x 64, ff x4)
    generate batch 4, one image + 32-token prompt, 32 new tokens forced (greedy, no EOS stop); each model
             through its own generation API (OpenFlamingo: a greedy loop over its forward with its KV cache
             and cached media, since its generate() cannot run on transformers 5.x)

Timing: every model is built first; then `--rounds` rounds each run one training step of every model, the
order reversed every other round (A B, B A, ...), so load from other work on this shared CPU hits every
model alike; generation likewise.  The table's ratio is the median over rounds of (peer time / ours time),
> 1 meaning ours is faster, with its min..max spread.  Each step is forward + backward + AdamW step over the
trainable parameters.
Memory: each model alone in a fresh process (built, SmolLM2 for the peers' weights freed, glibc heap trimmed),
its peak RSS sampled every 2 ms by a psutil thread over 2 training steps, then over 2 generate() calls.
The per-model table's "step mem" is the transient RSS growth of a step in the shared process.
FLOPs: counted on one extra (untimed) training step and one generate() of each model with
torch.utils.flop_counter.FlopCounterMode - every matmul that actually runs (2*m*n*k) - plus SDPA, which the
counter does not know on CPU: 4*B*H*Lq*Lk*dh forward, 8*B*H*Lq*Lk*dh backward.  The CPU's fp32 peak is
measured in the same run from a 2048^3 torch.mm; "x FLOP limit" = generate() time per new token / (its FLOPs
per new token / that peak).  "x read limit" = the same time / (bytes of the weights one decode step reads, ours'
LLM and fusion, / the GB/s a sum streams 512 MiB at, measured in the same run): a decode step reads each 4-byte
weight once for 2 x batch FLOPs (2 FLOPs per byte at batch 4), so in fp32 the read limit, not the FLOP limit, is the floor.
The table is also written as JSON (`--json`).
"""
from __future__ import annotations

import argparse
import copy
from contextlib import nullcontext
import ctypes
import gc
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
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


def read_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Best-of-`repeats` GB/s at which a sum streams `mib` MiB of fp32 from memory on this CPU, now."""
    import torch

    x = torch.ones(mib * 2**18)
    x.sum()  # warm up (pages resident)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def unique_bytes(modules) -> int:
    """Bytes of the distinct parameter storages of `modules` (tied weights once)."""
    storages = {}
    for module in modules:
        for p in module.parameters():
            storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(storages.values())


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
    gen_flops: int = 0
    decode_bytes: int = 0  # weights one decode step reads (ours: the LLM and the fusion); 0 = not counted
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
    from lamm.training.compiled_blocks import compiled_blocks

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

    blocks = compiled_blocks(model) if args.compile else None  # lamm-train's compile=true

    def loss_fn():
        with blocks.active() if blocks is not None else nullcontext():
            return model(batch, logits="none").loss

    def gen():
        model.eval()
        out = model.generate(gen_batch, max_new_tokens=args.gen_new, eos_token_id=-1, onednn=not args.no_onednn)
        model.train()
        assert out.shape == (len(gen_ids), args.gen_new), out.shape
        return out

    name = "ours_prefix" if fusion == "prefix" else "ours_xattn"
    runner = Runner(name, fusion, model, _wrap_step(model, loss_fn), gen,
                    decode_bytes=unique_bytes([model.llm, model.fusion]))
    runner.notes.append(f"attn_implementation={model.llm.causal_lm.config._attn_implementation}")
    if blocks is not None:
        runner.notes.append(f"compile=true: {len(blocks)} blocks compiled for training steps")
    return runner


def _lora_peer(model, pattern: str):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=pattern)
    # get_peft_model freezes every non-adapter parameter; the caller re-enables what trains.
    return get_peft_model(model, config)


def build_llava(args, data, smol, ours_prefix: Runner | None) -> Runner:
    import torch

    pad_id = smol.tokenizer.pad_token_id  # the closures below must not keep `smol` alive
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
                             pad_token_id=pad_id)
        model.train()
        model.model.vision_tower.eval()
        assert out.shape[1] - gen_ids.shape[1] == args.gen_new, out.shape
        return out

    return Runner("llava", "prefix", model, _wrap_step(model, loss_fn), gen, notes)


def build_idefics(args, data, smol) -> Runner:
    import torch

    pad_id = smol.tokenizer.pad_token_id  # the closures below must not keep `smol` alive
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
                             pad_token_id=pad_id)
        model.train()
        model.model.vision_model.eval()
        assert out.shape[1] - gen_ids.shape[1] == args.gen_new, out.shape
        return out

    return Runner("idefics", "gated_xattn", model, _wrap_step(model, loss_fn), gen, notes)


OPENFLAMINGO = "open-flamingo==2.0.1"


def install_openflamingo(target: str):
    """OpenFlamingo's own code from PyPI, installed with `--no-deps` into `target` (never into the venv)."""
    import importlib
    import subprocess

    if not any(p.name.startswith("open_flamingo") for p in Path(target).glob("*")):
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target,
                        OPENFLAMINGO, "einops", "einops-exts"], check=True, timeout=900)
    if target not in sys.path:
        sys.path.append(target)  # appended: the venv's own packages keep precedence
    return importlib.import_module("open_flamingo")


def build_openflamingo(args, data, smol, open_flamingo, workdir: Path) -> Runner:
    import json

    import open_clip
    import torch
    from open_flamingo.src.helpers import PerceiverResampler
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from lamm.llm.loaders import cache_dir

    torch.manual_seed(args.seed)
    clip = workdir / "clip"  # an open_clip `local-dir` folder: the shared ViT's config and random weights
    clip.mkdir(parents=True, exist_ok=True)
    vision_cfg = {"image_size": 224, "patch_size": 32, "width": 384, "layers": 6, "head_width": 64, "mlp_ratio": 4}
    text_cfg = {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 2, "layers": 1}
    (clip / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 384, "vision_cfg": vision_cfg,
                                                                           "text_cfg": text_cfg}}))
    weights = open_clip.create_model(f"local-dir:{clip}").state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(clip / "open_clip_model.safetensors"))
    llm_folder = cache_dir() / "llm" / "smollm2_135m"  # the HF folder lamm's smollm2_135m loader converted
    if not (llm_folder / "config.json").exists():
        raise RuntimeError(f"{llm_folder} has no converted SmolLM2; run `lamm-train` once or load smollm2_135m")
    model, _, tokenizer = open_flamingo.create_model_and_transforms(
        f"local-dir:{clip}", None, str(llm_folder), str(llm_folder), cross_attn_every_n_layers=2)
    # The shared perceiver (depth, 6 heads x 64, 64 latents) instead of OpenFlamingo's default depth 6 x 8 heads.
    model.perceiver = PerceiverResampler(dim=384, depth=args.perceiver_depth, dim_head=64, heads=6, num_latents=64)
    media_id = tokenizer.encode("<image>")[-1]
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                        target_modules=r"lang_encoder\.model\.layers\.\d+\.decoder_layer\.self_attn\.(q_proj|v_proj)")
    get_peft_model(model, config)  # freezes every non-adapter parameter, embeddings included
    model.perceiver.requires_grad_(True)
    model.lang_encoder.gated_cross_attn_layers.requires_grad_(True)
    model.train()
    model.vision_encoder.eval()
    lora = sum(1 for n, _ in model.named_modules() if n.endswith(("q_proj.lora_A", "v_proj.lora_A")))
    notes = [f"OpenFlamingo {OPENFLAMINGO} from PyPI (--no-deps); LLM from lamm's converted SmolLM2 folder, "
             f"its <image>/<|endofchunk|> tokens added by OpenFlamingo; {lora} LoRA layers",
             "vision: open_clip ViT 384 wide x 6, patch 32 (+CLS; OpenFlamingo feeds the 49 patch tokens)",
             "perceiver: OpenFlamingo's, replaced by depth 2, 6 heads x 64, 64 latents (shared config)",
             "cross-attention: OpenFlamingo's fixed 8 heads x 64 every 2nd layer (ours: 9 heads), input "
             "embeddings frozen (OpenFlamingo trains them by default)",
             "generation: greedy loop over OpenFlamingo's forward with its KV cache and cached media "
             "(its generate() cannot run on transformers 5.x: generate no longer passes attention_mask)"]

    ids, labels, gen_ids = data.layout(1, media_id)
    mask = torch.ones_like(ids)
    vision_x = data.images[:, None, None]  # [B, T_img=1, F=1, C, H, W]

    def loss_fn():
        return model(vision_x, ids, attention_mask=mask, labels=labels).loss

    def gen():
        model.eval()
        model.cache_media(input_ids=gen_ids, vision_x=vision_x)
        try:
            attention = torch.ones_like(gen_ids)
            out = model(None, gen_ids, attention_mask=attention, clear_conditioned_layers=False, use_cache=True)
            tokens = []
            for step in range(args.gen_new):
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(token)
                if step == args.gen_new - 1:
                    break
                attention = torch.cat([attention, torch.ones_like(token)], 1)
                past = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
                out = model(None, token, attention_mask=attention, clear_conditioned_layers=False,
                            past_key_values=past, use_cache=True)
        finally:
            model.uncache_media()
            model.lang_encoder.clear_conditioned_layers()
        model.train()
        model.vision_encoder.eval()
        return torch.cat(tokens, 1)

    return Runner("openflamingo", "gated_xattn", model, _wrap_step(model, loss_fn), gen, notes)


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

    def layout(self, n_media: int, image_id: int | None = None):
        """(train ids [B, T], labels [B, T] set on the last `loss_tokens` positions (the response), generation
        prompt ids), each row starting with `n_media` image placeholders (as many as the model writes per image)."""
        import torch

        b, t = self.text.shape
        media = torch.full((b, n_media), self.image_id if image_id is None else image_id)
        ids = torch.cat([media, self.text[:, : t - n_media]], 1)  # exactly T positions
        labels = torch.full_like(ids, -100)
        labels[:, -self.args.loss_tokens:] = ids[:, -self.args.loss_tokens:]
        gen_ids = torch.cat([media, self.prompt], 1)
        return ids, labels, gen_ids


# ----------------------------------------------------------------------------------------------


MODELS = ("ours_prefix", "llava", "ours_xattn", "idefics", "openflamingo")
# (ours, peer, generation target: ours at least this many times faster)
PAIRS = (("ours_prefix", "llava", 1.5), ("ours_xattn", "openflamingo", 2.0), ("ours_xattn", "idefics", 2.0))
TRAIN_TARGET = {"llava": 1.25, "openflamingo": 1.3, "idefics": 1.3}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma list from {', '.join(MODELS)}")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds, 8 new tokens, no FLOP counting, no memory processes")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds: each times one training step and one generate() per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps and generate() calls per model")
    parser.add_argument("--no-gen", action="store_true", help="skip the generation measurement")
    parser.add_argument("--no-train", action="store_true", help="skip the training measurement")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting step")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-model peak-RSS processes")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128, help="LLM positions per sample (image tokens + text)")
    parser.add_argument("--label-fraction", type=float, default=0.5,
                        help="share of each sample's positions that carry labels: its last ones, the response")
    parser.add_argument("--gen-prompt", type=int, default=32)
    parser.add_argument("--gen-new", type=int, default=32)
    parser.add_argument("--perceiver-depth", type=int, default=2)
    parser.add_argument("--peer-logits-to-keep", action="store_true",
                        help="peers compute logits only at the labelled tail (not their default)")
    parser.add_argument("--compile", action="store_true",
                        help="ours' training steps with compiled blocks (lamm-train compile=true); compiled in the warm-up")
    parser.add_argument("--no-onednn", action="store_true", help="ours' generate() with onednn=False (MKL linears)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "inherit"],
                        help="OMP_WAIT_POLICY set before torch loads (default PASSIVE; 'inherit' keeps the env's). "
                             "On this shared 2-core CPU, spinning OpenMP workers (libgomp's default) slow small-op "
                             "workloads such as decoding by 10-30x whenever another process holds a core")
    parser.add_argument("--json", default="bench_train.json", help="where the table is written as JSON")
    parser.add_argument("--workdir", default=None,
                        help="folder for OpenFlamingo's wheel and vision folder (default: a temporary one)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.gen_new, args.no_flops, args.no_memory = 2, 8, True, True
    args.loss_tokens = max(1, round(args.seq * args.label_fraction))
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = set(names) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.names = names
    return args


def build_all(args, names, workdir: Path, log=print) -> list[Runner]:
    """Build the named models on the shared data; SmolLM2 for the peers' weights is freed afterwards."""
    from lamm.registry import LLMS

    t0 = time.perf_counter()
    smol = LLMS.build("smollm2_135m")  # pristine SmolLM2 (+ lamm's media tokens) for the peers' weights
    smol.causal_lm.eval().requires_grad_(False)
    data = Data(args, smol.tokenizer, smol.media_token_ids["<image>"])
    log(f"SmolLM2 loaded in {time.perf_counter() - t0:.1f} s; vocab {smol.causal_lm.config.vocab_size} "
        f"(lamm's media tokens added), <image> id {data.image_id}")
    runners: list[Runner] = []
    ours_prefix = None
    for name in names:
        t0 = time.perf_counter()
        if name == "ours_prefix":
            ours_prefix = runner = build_ours(args, "prefix", data)
        elif name == "ours_xattn":
            runner = build_ours(args, "gated_xattn", data)
        elif name == "llava":
            runner = build_llava(args, data, smol, ours_prefix)
        elif name == "idefics":
            runner = build_idefics(args, data, smol)
        else:
            runner = build_openflamingo(args, data, smol, install_openflamingo(str(workdir / "wheel")), workdir)
        trainable, total = _params(runner.model)
        log(f"built {name:12s} in {time.perf_counter() - t0:5.1f} s: params {total / 1e6:.1f}M, "
            f"trainable {trainable / 1e6:.3f}M")
        for note in runner.notes:
            log(f"    {note}")
        runners.append(runner)
    del smol, data, ours_prefix
    gc.collect()
    _malloc_trim()
    return runners


def interleaved(runners: list[Runner], rounds: int, fn: Callable[[Runner], float]) -> None:
    """`rounds` rounds, each running every model once, in reverse order every other round (A B, B A, ...),
    so load from other work on this shared CPU hits every model alike."""
    for i in range(rounds):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            fn(r)


def memory_child(args, name: str, workdir: Path) -> None:
    """In a fresh process: build one model, then its peak RSS over training steps and generate() calls."""
    import json

    import torch

    (runner,) = [r for r in build_all(args, [name], workdir, log=lambda *a: None) if r.name == name]
    with PeakRSS() as train:
        for _ in range(2):
            runner.train_step()
    gc.collect()
    _malloc_trim()
    with PeakRSS() as gen, torch.no_grad():
        for _ in range(2):
            runner.generate()
    print(json.dumps({"model": name, "resident_gib": train.base / 2**30, "train_peak_gib": train.peak / 2**30,
                      "gen_peak_gib": gen.peak / 2**30}))


def measure_memory(args, names: list[str], workdir: Path) -> dict[str, dict]:
    import json
    import subprocess

    out = {}
    for name in names:
        cmd = [sys.executable, "-P", __file__, "--memory-child", name, "--models", name,
               "--threads", str(args.threads), "--workdir", str(workdir), "--batch", str(args.batch),
               "--seq", str(args.seq), "--label-fraction", str(args.label_fraction),
               "--gen-prompt", str(args.gen_prompt), "--gen-new", str(args.gen_new),
               "--perceiver-depth", str(args.perceiver_depth), "--omp-wait-policy", args.omp_wait_policy,
               *(["--no-onednn"] if args.no_onednn else []), *(["--compile"] if args.compile else [])]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:  # reported, and the timing still runs
            print(f"memory run of {name} failed:\n{result.stderr[-3000:]}")
            continue
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"peak RSS of {name} alone: training {out[name]['train_peak_gib']:.2f} GiB, "
              f"generation {out[name]['gen_peak_gib']:.2f} GiB")
    return out


def ratio_row(kind: str, ours: Runner, peer: Runner, ours_times: list[float], peer_times: list[float],
              unit: str, per: float, target: float) -> dict:
    """Per-round speed ratio peer time / ours time (> 1: ours faster), median and spread over the rounds."""
    ratios = [p / o for o, p in zip(ours_times, peer_times)]
    row = {"metric": kind, "ours": ours.name, "peer": peer.name, "unit": unit,
           "ours_value": statistics.median(ours_times) if per == 0 else per / statistics.median(ours_times),
           "peer_value": statistics.median(peer_times) if per == 0 else per / statistics.median(peer_times),
           "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
           "rounds": len(ratios), "target": target}
    row["meets_target"] = row["ratio"] >= target
    return row


def main() -> None:
    args = parse_args()
    import os
    import tempfile

    if args.omp_wait_policy != "inherit":
        if "torch" in sys.modules:
            raise RuntimeError("--omp-wait-policy must be applied before torch is imported")
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import json

    import psutil
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_train_")
        args.workdir = tmp.name
    workdir = Path(args.workdir)
    if args.memory_child:
        memory_child(args, args.memory_child, workdir)
        return
    proc = psutil.Process()
    t_start = time.perf_counter()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads={torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, fp32, batch={args.batch}, "
          f"positions={args.seq}, labels on the last {args.loss_tokens} of {args.seq} positions of each sample "
          f"(the response, {100 * args.loss_tokens / args.seq:.0f}%), {args.warmup} warm-up + {args.rounds} "
          f"interleaved rounds, generate {args.gen_prompt}+image -> {args.gen_new} new (greedy, no EOS stop)")

    memory = {} if args.no_memory else measure_memory(args, args.names, workdir)
    if args.no_train and args.no_gen:
        runners = []
    else:
        runners = build_all(args, args.names, workdir)
    print(f"RSS with all models resident: {proc.memory_info().rss / 2**30:.2f} GiB")
    by_name = {r.name: r for r in runners}

    if not args.no_train:
        for r in runners:
            for _ in range(args.warmup):
                r.losses.append(r.train_step())

        def train_once(r: Runner) -> None:
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                r.losses.append(r.train_step())
                r.step_times.append(time.perf_counter() - t0)
            r.step_mem.append(mem.delta)
            print(f"  training step {r.name}: {r.step_times[-1]:.2f} s", flush=True)

        interleaved(runners, args.rounds, train_once)

    peak = matmul_peak_gflops()
    if not args.no_flops:
        for r in runners:
            if not args.no_train:
                r.flops = count_flops(r.train_step)
            if not args.no_gen and r.generate is not None:
                try:
                    with torch.no_grad():
                        r.gen_flops = count_flops(r.generate)
                except AssertionError as err:  # FlopCounterMode's module tracker fails on some no-grad graphs
                    print(f"FLOPs of {r.name}'s generate() not counted: {err}")
    peak = max(peak, matmul_peak_gflops())
    bandwidth = read_bandwidth_gbs()

    if not args.no_gen:
        with torch.no_grad():
            for r in runners:
                for _ in range(args.warmup):
                    r.generate()

            def gen_once(r: Runner) -> None:
                t0 = time.perf_counter()
                r.generate()
                r.gen_times.append(time.perf_counter() - t0)
                print(f"  generate {r.name}: {r.gen_times[-1]:.2f} s", flush=True)

            interleaved(runners, args.rounds, gen_once)

    # -- report -----------------------------------------------------------------------------------
    print()
    print(f"fp32 matmul peak (2048^3 torch.mm, best of 5, before/after FLOP counting): {peak:.1f} GFLOP/s")
    print()
    header = (f"{'model':13s} {'fusion':11s} {'step s (med)':>12s} {'min..max':>13s} {'samples/s':>9s} "
              f"{'step mem MiB':>12s} {'GFLOP/step':>10s} {'%peak':>5s} {'gen s (med)':>11s} {'ms/new token':>12s} "
              f"{'x FLOP limit':>12s} {'x read limit':>12s}")
    print(header)
    print("-" * len(header))
    per_model = {}
    for r in runners:
        med = statistics.median(r.step_times) if r.step_times else float("nan")
        gen_med = statistics.median(r.gen_times) if r.gen_times else float("nan")
        per_token = gen_med / args.gen_new
        limit = r.gen_flops / args.gen_new / (peak * 1e9) if r.gen_flops else float("nan")
        achieved = r.flops / 1e9 / med if r.flops else float("nan")
        read_limit = r.decode_bytes / (bandwidth * 1e9) if r.decode_bytes else float("nan")
        per_model[r.name] = {"fusion": r.fusion, "step_s": med, "samples_per_s": args.batch / med,
                             "step_mem_mib": max(r.step_mem) / 2**20 if r.step_mem else None,
                             "train_gflop_per_step": r.flops / 1e9, "gen_s": gen_med,
                             "ms_per_new_token": 1e3 * per_token, "gen_gflop": r.gen_flops / 1e9,
                             "x_flop_limit_per_new_token": per_token / limit,
                             "decode_weight_bytes": r.decode_bytes, "x_read_limit_per_new_token": per_token / read_limit,
                             "notes": r.notes,
                             "losses": r.losses, "step_times": r.step_times, "gen_times": r.gen_times}
        print(f"{r.name:13s} {r.fusion:11s} {med:12.3f} "
              f"{(min(r.step_times) if r.step_times else float('nan')):6.2f}.."
              f"{(max(r.step_times) if r.step_times else float('nan')):<6.2f} {args.batch / med:9.2f} "
              f"{(max(r.step_mem) / 2**20 if r.step_mem else float('nan')):12.0f} {r.flops / 1e9:10.0f} "
              f"{100 * achieved / peak:5.1f} {gen_med:11.3f} {1e3 * per_token:12.1f} {per_token / limit:12.1f} "
              f"{per_token / read_limit:12.1f}")
    if runners and runners[0].losses:
        print()
        print("losses (first .. last step, sanity):", ", ".join(f"{r.name} {r.losses[0]:.2f}..{r.losses[-1]:.2f}"
                                                           for r in runners))
    print("x FLOP limit: (generate() time / new tokens) / (FLOPs of one generate() counted by "
          "torch.utils.flop_counter / new tokens / matmul peak); prefill included in both")
    print(f"x read limit: (generate() time / new tokens) / (bytes of the weights one decode step reads / {bandwidth:.1f} GB/s, "
          "the rate a sum streams 512 MiB here); ours only. A decode step reads each 4-byte weight once for "
          "2 x batch FLOPs, so in fp32 this, not the FLOP limit, is the floor (read limit / FLOP limit = "
          f"{peak / (args.batch / 2) / bandwidth:.1f} at batch {args.batch} on this CPU)")

    rows = []
    for ours, peer, gen_target in PAIRS:
        o, p = by_name.get(ours), by_name.get(peer)
        if o is not None and p is not None and o.step_times:
            rows.append(ratio_row("training samples/s", o, p, o.step_times, p.step_times, "samples/s",
                                  args.batch, TRAIN_TARGET[peer]))
        if o is not None and p is not None and o.gen_times:
            rows.append(ratio_row(f"generation {args.batch}x{args.gen_new} new tokens", o, p, o.gen_times,
                                  p.gen_times, "s", 0, gen_target))
        if ours in memory and peer in memory:
            for phase in ("train", "gen"):
                a, b = memory[ours][f"{phase}_peak_gib"], memory[peer][f"{phase}_peak_gib"]
                rows.append({"metric": f"peak RSS, {'training' if phase == 'train' else 'generation'}",
                             "ours": ours, "peer": peer, "unit": "GiB", "ours_value": a, "peer_value": b,
                             "ratio": b / a, "ratio_min": None, "ratio_max": None, "rounds": 1, "target": 1.0,
                             "meets_target": a <= b})
    print()
    print(f"ours vs peer, interleaved over {args.rounds} rounds (ratio = per-round peer time / ours time, "
          f"> 1: ours faster; for memory peer RSS / ours RSS, each model alone in a fresh process):")
    head = f"{'metric':34s} {'ours':12s} {'peer':13s} {'ours':>9s} {'peer':>9s} {'ratio':>6s} {'spread':>12s} {'target':>7s}"
    print(head)
    print("-" * len(head))
    for row in rows:
        spread = (f"{row['ratio_min']:.2f}..{row['ratio_max']:.2f}" if row["ratio_min"] is not None else "-")
        unit = row["unit"]
        print(f"{row['metric']:34s} {row['ours']:12s} {row['peer']:13s} {row['ours_value']:>6.2f} {unit:<2s} "
              f"{row['peer_value']:>6.2f} {unit:<2s} {row['ratio']:5.2f}x {spread:>12s} "
              f">={row['target']:.2f}x {'OK' if row['meets_target'] else 'BELOW'}")
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("memory_child", "workdir")},
              "torch": torch.__version__, "transformers": transformers.__version__,
              "matmul_peak_gflops": peak, "read_bandwidth_gbs": bandwidth, "models": per_model, "memory": memory, "table": rows}
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nwritten {args.json}; total wall time {time.perf_counter() - t_start:.0f} s")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
