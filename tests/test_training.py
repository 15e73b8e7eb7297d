"""Training: loss goes down, lamm-train runs end to end, multirun, exact resume after SIGKILL, DDP, export, bad input."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from lamm.build import build_model
from lamm.testing import colour_answer_batch, fit_fixed_batch, text_batch, tiny_model_config
from lamm.training.module import LammModule
from lamm.training.optim import OptimConfig

LAMM_TRAIN = str(Path(sys.executable).parent / "lamm-train")
TINY = ["debug=fast", "data.synth.sizes.train=32", "data.synth.sizes.test=8"]


def run_train(tmp_path: Path, *overrides: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    flags = [o for o in overrides if o.startswith("-")]  # Hydra wants -m before the overrides
    rest = [o for o in overrides if not o.startswith("-")]
    args = [LAMM_TRAIN, *flags, *TINY, f"paths.runs_dir={tmp_path / 'runs'}", f"paths.data_dir={tmp_path / 'data'}", *rest]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"lamm-train failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "runs").glob("**/run.json"))


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.ckpt" / "weights.safetensors"))


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(fusion: str) -> None:
    model = build_model(tiny_model_config(fusion=fusion))
    module = LammModule(model, OptimConfig(lr=1e-2, warmup_steps=0, gate_lr_multiplier=10.0), max_steps=20)
    losses = fit_fixed_batch(model, module.configure_optimizers()["optimizer"], colour_answer_batch(model), steps=20)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("fusion", ["prefix", "gated_xattn"])
def test_bf16_frozen_llm_under_autocast_learns(fusion: str) -> None:
    """The quickstart's AMX path: frozen LLM weights in bf16, trainable parts fp32, bf16 autocast."""
    cfg = tiny_model_config(fusion=fusion)
    cfg["llm"] = {**cfg["llm"], "dtype": "bfloat16"}
    model = build_model(cfg)
    assert {p.dtype for p in model.trainable_parameters().values()} == {torch.float32}
    module = LammModule(model, OptimConfig(lr=1e-2, warmup_steps=0, gate_lr_multiplier=10.0), max_steps=20)
    losses = fit_fixed_batch(model, module.configure_optimizers()["optimizer"], colour_answer_batch(model), steps=20,
                             autocast_dtype=torch.bfloat16)
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()  # inference needs no autocast: fp32 parts and the bf16 LLM meet at explicit casts
    with torch.no_grad():
        assert torch.isfinite(model(colour_answer_batch(model)).loss)
        assert model.generate(colour_answer_batch(model), max_new_tokens=2).shape[1] >= 1


def test_lamm_train_end_to_end_run_folder(tmp_path: Path) -> None:
    result = run_train(tmp_path, "trainer.max_steps=4", "checkpoint.every_n_steps=2", "evaluate=[shapes_ppl]")
    [run] = run_dirs(tmp_path)
    assert "held-out: shapes_ppl" in result.stdout and (run / "eval/shapes_ppl/results.json").exists()
    for name in ("config.yaml", "run.json", "loss.png", "logs/metrics.csv", "checkpoints/last.ckpt/weights.safetensors",
                 "checkpoints/last.ckpt/state.pt", "export/adapter/adapter_config.json", "export/lamm_weights.safetensors"):
        assert (run / name).exists(), name
    info = (run / "run.json").read_text()
    assert '"torch": "2.14.1"' in info and "config_sha256" in info and "git_revision" in info
    state = torch.load(run / "checkpoints/last.ckpt/state.pt", weights_only=True)
    assert state["global_step"] == 4 and state["LammDataModule"]["consumed"] == 16
    assert "skipped 0 samples" in result.stdout


def test_multirun_gives_one_folder_per_fusion(tmp_path: Path) -> None:
    run_train(tmp_path, "-m", "model/fusion=prefix,gated_xattn", "trainer.max_steps=2")
    runs = run_dirs(tmp_path)
    assert len(runs) == 2
    fusions = {OmegaConf.load(r / "config.yaml").model.fusion.name for r in runs}
    assert fusions == {"prefix", "gated_xattn"}
    assert all((r / "checkpoints/last.ckpt/weights.safetensors").exists() for r in runs)


@pytest.mark.parametrize("warmup", [[], ["encoder_warmup.steps=5"]], ids=["lm", "encoder_warmup"])
def test_exact_resume_after_sigkill(tmp_path: Path, warmup: list[str]) -> None:
    # With an encoder warm-up of 5 steps the kill lands inside it (step 4) or just after it (step 6).
    common = ["trainer.max_steps=8", "checkpoint.every_n_steps=2", "seed=3", "model/fusion=gated_xattn",
              "model.fusion.every=2", "data.num_workers=0", *warmup]
    straight = tmp_path / "straight"
    straight.mkdir()
    run_train(straight, *common, "run_name=straight")
    expected = final_weights(run_dirs(straight)[0])

    killed = tmp_path / "killed"
    killed.mkdir()
    args = [LAMM_TRAIN, *TINY, f"paths.runs_dir={killed / 'runs'}", f"paths.data_dir={killed / 'data'}",
            *common, "run_name=killed", "trainer.max_steps=8"]
    proc = subprocess.Popen(args, cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill as soon as a mid-run checkpoint (step 4 or 6) is on disk
        ckpts = list((killed / "runs").glob("**/checkpoints/last.ckpt/state.pt"))
        if ckpts and torch.load(ckpts[0], weights_only=True)["global_step"] in (4, 6):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = torch.load(ckpts[0], weights_only=True)["global_step"]
    assert step < 8
    run_train(killed, *common, "run_name=killed", "resume=auto")
    resumed = max(run_dirs(killed), key=lambda r: r.stat().st_mtime)
    got = final_weights(resumed)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6), name


def test_a_run_with_an_encoder_warmup_loads_for_inference(tmp_path: Path) -> None:
    """Its checkpoints also hold the warm-up heads (for resume); the rebuilt model leaves them out."""
    from lamm.training.export import load_for_inference

    run_train(tmp_path, "trainer.max_steps=3", "encoder_warmup.steps=2")
    [run] = run_dirs(tmp_path)
    assert any(k.startswith("warmup_heads.") for k in final_weights(run))
    model, _ = load_for_inference(run)
    assert not any("warmup" in name for name, _ in model.named_parameters())


def test_checkpoint_and_export_carry_batchnorm_statistics(tmp_path: Path) -> None:
    """Eval mode normalises with BatchNorm's running statistics: buffers, not parameters, yet trained."""
    from lamm.training.export import LAMM_WEIGHTS, export_model

    model = build_model(tiny_model_config())
    model.train()
    model(colour_answer_batch(model))  # a training-mode forward moves the running statistics
    state = LammModule(model, OptimConfig(), max_steps=1).state_dict()
    stats = [k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats and all(k.startswith("model.encoders.") for k in stats)
    fresh = LammModule(build_model(tiny_model_config()), OptimConfig(), max_steps=1)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.state_dict()[k], state[k]) for k in stats)
    export_model(model, tmp_path)
    assert {k.removeprefix("model.") for k in stats} <= set(load_file(str(tmp_path / LAMM_WEIGHTS)))


def test_init_from_fills_a_frozen_encoder_with_its_batchnorm_statistics(tmp_path: Path) -> None:
    """A from-scratch CNN trained in one run and frozen in the next keeps its running statistics."""
    from lamm.training.checkpoint_io import write_checkpoint
    from lamm.training.export import init_from_run, load_for_inference
    from lamm.training.run_folder import CONFIG_FILE

    def save_as_training_does(model, path: Path) -> None:
        write_checkpoint({"state_dict": LammModule(model, OptimConfig(), max_steps=1).state_dict()}, path)

    trained = build_model(tiny_model_config())
    trained.train()
    trained(colour_answer_batch(trained))  # moves the running statistics
    with torch.no_grad():
        for p in trained.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    first = tmp_path / "first.ckpt"
    save_as_training_does(trained, first)
    frozen = build_model(tiny_model_config(policy={"encoder": "frozen"}))
    copied = init_from_run(frozen, first)
    source = trained.encoders.state_dict()
    assert any(k.endswith("running_mean") for k in source)
    for name, value in frozen.encoders.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert all(f"encoders.{k}" in copied for k in source)
    # The second run's checkpoint holds only what it trained; reloading it takes the frozen CNN from
    # the run named by init_from, as training did.
    run = tmp_path / "second"
    run.mkdir()
    OmegaConf.save(OmegaConf.create({"model": tiny_model_config(policy={"encoder": "frozen"}),
                                     "init_from": str(first)}), run / CONFIG_FILE)
    save_as_training_does(frozen, run / "checkpoints" / "last.ckpt")
    reloaded, _ = load_for_inference(run)
    for name, value in reloaded.encoders.state_dict().items():
        assert torch.equal(value, source[name]), name


def test_ddp_two_cpu_processes_agree(tmp_path: Path) -> None:
    # 2 encoder warm-up steps (no gradient reaches the LLM side) then 2 language-model steps.
    result = run_train(tmp_path, "trainer=ddp_cpu", "trainer.max_steps=4", "encoder_warmup.steps=2", "data.num_workers=0",
                       timeout=400)
    assert "all 2 ranks hold identical trainable weights" in result.stdout + result.stderr


def test_exported_adapter_loads_with_plain_peft(tmp_path: Path) -> None:
    from peft import PeftModel

    from lamm.registry import LLMS
    from lamm.training.export import load_for_inference

    run_train(tmp_path, "trainer.max_steps=3", "optim.lr=1e-2")
    [run] = run_dirs(tmp_path)
    model, _ = load_for_inference(run)
    base = LLMS.build("tiny_random").causal_lm  # the same seeded base weights, media rows added
    peft_model = PeftModel.from_pretrained(base, str(run / "export" / "adapter")).eval()
    batch = text_batch(model, ["What colour is the shape?", "Hello"])
    ours = model(batch, logits="all").logits
    positions = (batch.attention_mask.cumsum(1) - 1).clamp(min=0)
    theirs = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=positions).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    lora = [n for n in load_file(str(run / "export/adapter/adapter_model.safetensors"))]
    assert lora and all("lora_" in n for n in lora)


def test_unknown_config_key_lists_valid_keys(tmp_path: Path) -> None:
    result = run_train(tmp_path, "model.fusion.evry=3", check=False)
    assert result.returncode == 2
    assert "unknown config key 'model.fusion.evry': model.fusion has name" in result.stderr


def test_unwritable_output_folder_is_one_line(tmp_path: Path) -> None:
    result = run_train(tmp_path, "hydra.run.dir=/proc/lamm-run", check=False)
    assert result.returncode == 2
    assert "lamm-train: error: output folder /proc/lamm-run is not writable" in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_from_another_model_config_is_a_clear_mismatch(tmp_path: Path) -> None:
    run_train(tmp_path, "trainer.max_steps=2", "run_name=a")
    ckpt = next((tmp_path / "runs").glob("**/checkpoints/last.ckpt"))
    result = run_train(tmp_path, "trainer.max_steps=4", "run_name=b", "model/projector=linear", f"resume={ckpt}",
                       check=False)
    assert result.returncode == 2
    assert "checkpoint does not match this model config" in result.stderr
    assert "projectors.image" in result.stderr


def test_nan_loss_stops_with_step_and_ids_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from lamm.cli.train import train
    from lamm.config import compose
    from lamm.model import MultimodalLM
    from lamm.training.module import NonFiniteLossError

    cfg = compose("train", [*TINY, f"paths.runs_dir={tmp_path}/runs", f"paths.data_dir={tmp_path}/data",
                            "trainer.max_steps=6", "checkpoint.every_n_steps=1", "data.num_workers=0"])
    calls = {"n": 0}
    original = MultimodalLM.forward

    def poisoned(self, batch, logits="labels"):
        out = original(self, batch, logits)
        calls["n"] += 1
        if calls["n"] > 3:  # the 4th training step diverges
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MultimodalLM, "forward", poisoned)
    run = tmp_path / "runs" / "nan"
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 3, batch 3, sample ids \['shapes_train"):
        train(cfg, run)
    state = torch.load(run / "checkpoints/last.ckpt/state.pt", weights_only=True)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in final_weights(run).values())
