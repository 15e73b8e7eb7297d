"""`compile=true`: each repeated block runs torch.compile'd (inductor) in training steps; the numbers and the
checkpoint layout stay those of the eager run, LoRA dropout masks included (aten's random in both)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BIN = Path(sys.executable).parent


def _train(tmp_path: Path, compile: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # One step: inductor compiles the decoder layer's forward and backward once (a second batch of another
    # length would compile a dynamic-shape version, ~40 s more on 2 cores).
    return subprocess.run(
        [str(BIN / "lamm-train"), "debug=fast", "data.synth.sizes.train=4", "data.synth.sizes.test=2",
         f"paths.data_dir={tmp_path / 'data'}", f"paths.runs_dir={tmp_path / 'runs'}", f"run_name=compile_{compile}",
         "model/policy=lora", "model.encoder.allow_random_frozen=true", "model.lora.dropout=0.1", "trainer.max_steps=1",
         # eps far above |grad|: Adam's first step is ~lr * grad / eps, so the weights carry the gradients'
         # values, not only their signs (at the default eps a first Adam step is lr * sign(grad))
         "optim.eps=10", "optim.lr=0.1", "optim.warmup_steps=0", "logger=[csv]", f"compile={compile}"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)


def test_compiled_training_step_gives_the_eager_weights(tmp_path: Path) -> None:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    weights = {}
    for flag in ("false", "true"):
        run = _train(tmp_path, flag, env)
        assert run.returncode == 0, run.stderr[-3000:]
        (ckpt,) = (tmp_path / "runs" / f"compile_{flag}").glob("*/checkpoints/last.ckpt/weights.safetensors")
        weights[flag] = load_file(ckpt)
        assert ("compile: 4 blocks (LlamaDecoderLayer) run compiled in training steps" in run.stdout) == (flag == "true")
    assert any((tmp_path / "inductor").rglob("*.py")), "inductor wrote no kernels: nothing was compiled"
    eager, compiled = weights["false"], weights["true"]
    assert eager.keys() == compiled.keys()  # same checkpoint layout: no `_orig_mod.` prefixes
    lora_b = [n for n in eager if "lora_B" in n]  # zero before the step: now -lr * grad / eps, the gradient itself
    assert lora_b and all(eager[n].abs().max() > 1e-6 for n in lora_b)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], atol=1e-9, rtol=1e-4, msg=name)
    losses = {flag: _first_loss(tmp_path / "runs" / f"compile_{flag}") for flag in ("false", "true")}
    assert abs(losses["true"] - losses["false"]) < 1e-5, losses


def _first_loss(run: Path) -> float:
    (metrics,) = run.glob("*/logs/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    return float(next(r["train/loss"] for r in rows if r.get("train/loss")))


@pytest.mark.parametrize("strategy", ["trainer=fsdp_cpu", "trainer.strategy=deepspeed_stage_3"])
def test_compile_under_a_sharding_strategy_is_refused_in_one_line(tmp_path: Path, strategy: str) -> None:
    run = subprocess.run([str(BIN / "lamm-train"), "debug=fast", strategy, "compile=true",
                          f"paths.runs_dir={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "compile=true" in lines[0] and "trainer=ddp" in lines[0], run.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))
