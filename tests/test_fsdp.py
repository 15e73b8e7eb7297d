"""FSDP (trainer=fsdp_cpu: FSDP2 on 2 gloo CPU processes): wrap policy from the contracts, sharded
checkpoints saved twice and more, SIGKILL + resume=auto gives the uninterrupted run's weights exactly,
the consolidated export loads with plain peft, bad strategy options are one line."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lamm.build import build_model
from lamm.testing import text_batch, tiny_model_config

LAMM_TRAIN = str(Path(sys.executable).parent / "lamm-train")
# 4 steps of 2 x 4 samples, a checkpoint after every step: the killed run saves at least twice before the kill.
COMMON = ["debug=fast", "data.synth.sizes.train=32", "data.synth.sizes.test=8", "trainer=fsdp_cpu",
          "trainer.max_steps=4", "checkpoint.every_n_steps=1", "model/fusion=gated_xattn", "model.fusion.every=2",
          "data.num_workers=0", "seed=5"]


def command(folder: Path, *overrides: str) -> list[str]:
    return [LAMM_TRAIN, *COMMON, f"paths.runs_dir={folder / 'runs'}", f"paths.data_dir={folder / 'data'}",
            *overrides]


def last_run(folder: Path) -> Path:
    return max((p.parent for p in (folder / "runs").glob("**/run.json")), key=lambda r: r.stat().st_mtime)


def started(args: list[str], folder: Path, **options) -> subprocess.Popen:
    """The run in the background, its output into a file (a pipe nobody reads while it runs could fill up)."""
    with open(folder / "output.txt", "a") as out:  # the child keeps its own copy of the file
        return subprocess.Popen(args, cwd=folder, stdout=out, stderr=subprocess.STDOUT, **options)


def checked(proc: subprocess.Popen, folder: Path, what: str) -> str:
    proc.wait(timeout=600)
    out = (folder / "output.txt").read_text()
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """An uninterrupted 2-process run and, beside it, one killed (whole job, SIGKILL) after its second
    save and resumed with resume=auto. The killed and resumed runs also recompute the policy's blocks in
    backward (gradient_checkpointing=true), which must change no number either."""
    root = tmp_path_factory.mktemp("fsdp")
    straight, killed = root / "straight", root / "killed"
    straight.mkdir(), killed.mkdir()
    reference = started(command(straight, "run_name=straight"), straight)
    victim = started(command(killed, "run_name=killed", "gradient_checkpointing=true"), killed, start_new_session=True)
    saved_steps: list[int] = []
    deadline = time.time() + 400
    while time.time() < deadline and victim.poll() is None:
        state = next((killed / "runs").glob("**/checkpoints/last.ckpt/state.pt"), None)
        try:
            step = torch.load(state, weights_only=True)["global_step"] if state else None
        except (OSError, RuntimeError, EOFError):  # replaced while we read it
            step = None
        if step is not None and step not in saved_steps:
            saved_steps.append(step)
        if step in (2, 3):
            break
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)  # rank 0 and the rank it launched, as a scheduler kills a job
    victim.wait()
    (killed / "output.txt").write_text("")  # from here on: the resumed run's output
    resumed = started(command(killed, "run_name=killed", "gradient_checkpointing=true", "resume=auto"), killed)
    return {"straight": checked(reference, straight, "uninterrupted run"),
            "resumed": checked(resumed, killed, "resumed run"),
            "straight_run": last_run(straight), "resumed_run": last_run(killed), "saved_steps": saved_steps,
            "killed_run": min((p.parent for p in (killed / "runs").glob("**/run.json")),
                              key=lambda r: r.stat().st_mtime)}


def test_resume_after_sigkill_gives_the_uninterrupted_weights_exactly(runs) -> None:
    assert runs["saved_steps"] and runs["saved_steps"][-1] in (2, 3), runs["saved_steps"]
    assert runs["resumed_run"] != runs["killed_run"]
    assert "Restored all states from the checkpoint" in runs["resumed"]
    expected = load_file(str(runs["straight_run"] / "checkpoints/last.ckpt/weights.safetensors"))
    got = load_file(str(runs["resumed_run"] / "checkpoints/last.ckpt/weights.safetensors"))
    assert got.keys() == expected.keys() and any("lora_" in k for k in got)
    differ = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not differ, differ[:5]


def test_checkpoints_are_sharded_folders_and_ranks_agree_on_what_they_share(runs) -> None:
    from lamm.training.checkpoint_io import read_checkpoint, sharded_weights
    from lamm.training.export import load_for_inference

    last = runs["straight_run"] / "checkpoints/last.ckpt"
    names = {p.name for p in last.iterdir()}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "state.pt", "weights.safetensors"} <= names, names
    state = torch.load(last / "state.pt", weights_only=True)
    assert state["global_step"] == 4 and len(state["rng_per_rank"]) == 2 and "state_dict" not in state
    for out in (runs["straight"], runs["resumed"]):
        assert "all 2 ranks agree: step 4, the same" in out and "exactly once" in out
    # The killed run's mid-run checkpoint has no consolidated file: one process reads its shards.
    mid = runs["killed_run"] / "checkpoints/last.ckpt"
    assert not (mid / "weights.safetensors").exists()
    weights = sharded_weights(mid)
    final = load_file(str(last / "weights.safetensors"))
    assert weights.keys() == final.keys()
    assert all(weights[k].shape == final[k].shape for k in final)
    model, _ = load_for_inference(mid)  # what lamm-eval and init_from do with it
    assert torch.equal(model.fusion.blocks["1"].to_q.weight, weights["model.fusion.blocks.1.to_q.weight"])
    with pytest.raises(ValueError, match=r"is a sharded \(FSDP\) checkpoint: resume it with trainer.strategy=fsdp"):
        read_checkpoint(mid)  # what an unsharded trainer's resume reads


def test_consolidated_export_loads_with_plain_peft(runs) -> None:
    from peft import PeftModel

    from lamm.registry import LLMS
    from lamm.training.export import load_for_inference

    run = runs["straight_run"]
    model, _ = load_for_inference(run)
    base = LLMS.build("tiny_random").causal_lm  # the same seeded base weights
    peft_model = PeftModel.from_pretrained(base, str(run / "export" / "adapter")).eval()
    with torch.no_grad():  # text rows still pass the trained gated FFN (as in OpenFlamingo); closed, the rest is LLM + adapter
        for block in model.fusion.blocks.values():
            block.ff_gate.zero_()
    batch = text_batch(model, ["What colour is the shape?", "Hello"])
    ours = model(batch, logits="all").logits
    positions = (batch.attention_mask.cumsum(1) - 1).clamp(min=0)
    theirs = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    adapter = load_file(str(run / "export/adapter/adapter_model.safetensors"))
    assert adapter and all("lora_" in n for n in adapter)


def test_wrap_policy_comes_from_the_component_contracts() -> None:
    from lamm.training.fsdp import shard_units

    cfg = tiny_model_config(encoder="open_clip", projector="perceiver", fusion="gated_xattn")
    model = build_model(cfg)
    kinds = [type(u).__name__ for u in shard_units(model)]
    assert kinds.count("LlamaDecoderLayer") == 4 and kinds.count("GatedCrossAttentionBlock") == 2
    # open_clip's tower up to layer -2, found without a per-family table
    assert kinds.count("ResidualAttentionBlock") == 2
    assert kinds.count("PerceiverAttention") == kinds.count("FeedForward") == 1
    assert model.encoders["image"] in shard_units(model) and model.projectors["image"] in shard_units(model)


def test_a_bad_fsdp_option_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([LAMM_TRAIN, "debug=fast", f"paths.runs_dir={tmp_path}", "trainer=fsdp_cpu",
                             "trainer.strategy.mixed_precision=fp8"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trainer.strategy.mixed_precision must be null or one of bf16, fp16, got 'fp8'" in result.stderr
    assert not list(tmp_path.glob("**/checkpoints"))


def test_activation_checkpointing_by_the_wrap_policy_changes_no_number() -> None:
    """The units the policy names recompute in backward (not store) their activations: same loss and gradients."""
    from lamm.testing import colour_answer_batch
    from lamm.training.fsdp import recompute_in_backward

    def loss_and_grads(checkpointed: bool):
        torch.manual_seed(0)
        model = build_model(tiny_model_config(projector="perceiver", fusion="gated_xattn"))
        with torch.no_grad():  # open the gates so the cross-attention blocks carry gradient
            for name, p in model.named_parameters():
                if name.endswith(("attn_gate", "ff_gate")):
                    p.fill_(0.5)
        if checkpointed:
            for unit in model.wrap_modules():
                recompute_in_backward(unit)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = model(colour_answer_batch(model)).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.trainable_parameters().items()}, sum(saved)

    plain_loss, plain_grads, plain_saved = loss_and_grads(False)
    loss, grads, saved = loss_and_grads(True)
    assert torch.equal(loss, plain_loss) and saved < plain_saved / 2, (saved, plain_saved)
    assert all(g is not None for g in grads.values())
    assert all(torch.equal(grads[n], plain_grads[n]) for n in plain_grads)
