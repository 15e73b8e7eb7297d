"""`lamm-eval`: evaluate a model on a benchmark recipe (conf/eval.yaml + conf/benchmark/*.yaml).

    lamm-eval benchmark=shapes_ppl checkpoint=runs/quickstart/<date>       # a trained lamm run
    lamm-eval benchmark=text_qa model.source=hf model.llm.name=hf model.path=/models/llm
    lamm-eval benchmark=desiderata model.source=config model.overrides=[model/llm=tiny_random]
    lamm-eval benchmark=fewshot_vqav2 data_root=/data checkpoint=runs/of/<date>    # shots x seeds, mean and std
    lamm-eval benchmark=flamingo_suite data_root=/data checkpoint=... benchmark.suite.shots=[0,4]  # one table
    torchrun --nproc_per_node 2 --no-python lamm-eval benchmark=shapes_ppl ...  # sharded, merged once
    lamm-eval --config-dir DIR benchmark=NAME ...        # a recipe in DIR/benchmark/NAME.yaml
    lamm-eval benchmark=path/to/recipe.yaml ...          # a recipe file from anywhere (--trust-recipe: see lamm-train)
    lamm-eval compare RUN_A RUN_B [...]                  # shared metrics, differences, paired tests (lamm.cli.compare)

results.json and report.md record the recipe file's SHA-256 (`recipe_file`).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from lamm.config import register_resolvers

log = logging.getLogger("lamm.eval")

def _init_distributed() -> bool:
    """Join the process group torchrun describes (gloo on CPU); True if this call created it."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")
        return True
    return False


def run(cfg: DictConfig) -> dict[str, Any]:
    """Load the model the config names and run its benchmark recipe (or the desiderata, a few-shot recipe, a suite)."""
    from pathlib import Path

    import torch

    from lamm.benchmarks.desiderata import run_desiderata
    from lamm.benchmarks.evaluator import EvalSpec, Evaluator
    from lamm.benchmarks.models import load_model

    torch.manual_seed(int(cfg.seed))
    if int(cfg.get("threads") or 0) > 0:
        torch.set_num_threads(int(cfg.threads))
    model_cfg = dict(cfg.model)
    if cfg.get("checkpoint"):
        model_cfg.update(source="run", path=str(cfg.checkpoint))
    bench = cfg.benchmark
    from lamm.recipes.hashing import current_recipe

    recipe_file = current_recipe("benchmark")  # name, path and sha256 of the YAML, for the reports
    # Parse the recipe before loading the model: a typo fails in a second, not after the load.
    from lamm.benchmarks.build import build_scenario

    if "desiderata" in bench:
        from lamm.benchmarks.desiderata import desiderata_recipes

        recipe = None
        checks = [sub.check() for _, _, sub in desiderata_recipes(bench.desiderata)]
    elif "fewshot" in bench:
        from lamm.benchmarks.fewshot_runs import fewshot_recipes

        recipe = None
        checks = [sub.check() for _, _, sub in fewshot_recipes(str(bench.get("name", "fewshot")), bench.fewshot)]
    elif "suite" in bench:
        from lamm.benchmarks.suite import suite_specs

        recipe = None
        checks = [sub.check() for sub in suite_specs(bench)]
    else:
        recipe = EvalSpec.from_config(bench).check()
        checks = [recipe]
    for r in checks:  # constructors are cheap and check their files: a missing meta file fails before the model loads
        build_scenario(r.scenario)
    from lamm.cli.errors import reading_checkpoint

    with reading_checkpoint(model_cfg.get("path")):
        model, name, hints = load_model(model_cfg)
    model = model.to(cfg.device).eval()
    # A trained run is evaluated with the prompt layout it was trained with, unless told otherwise.
    template = hints.get("template", "auto") if cfg.template == "auto" else cfg.template
    system_prompt = hints.get("system_prompt", "none") if cfg.system_prompt == "auto" else cfg.system_prompt
    kwargs = dict(batch_size=int(cfg.batch_size), template=template, system_prompt=system_prompt,
                  resume=bool(cfg.resume), max_length=cfg.max_length, model_name=name, recipe_file=recipe_file,
                  bootstrap=cfg.get("bootstrap"), check_batch_invariance=bool(cfg.get("check_batch_invariance")))
    out = Path(cfg.output_dir) / name / str(bench.get("name", "recipe"))
    if "fewshot" in bench:
        from lamm.benchmarks.fewshot_runs import run_fewshot

        result = run_fewshot(model, str(bench.get("name", "fewshot")), bench.fewshot, out, **kwargs)
        log.info("few-shot table: %s", out / "fewshot.md")
    elif "suite" in bench:
        from lamm.benchmarks.suite import run_suite

        result = run_suite(model, bench, out, **kwargs)
        log.info("suite table: %s", out / "suite.md")
    elif recipe is None:
        result = run_desiderata(model, bench.desiderata, out, **kwargs)
        log.info("desiderata table: %s", out / "desiderata.md")
    else:
        result = Evaluator(model, recipe, out, **kwargs).run()
        log.info("%s on %s: %s (%d samples) -> %s", recipe.name, name, result["metrics"], result["n"], out)
    return result


@hydra.main(config_path="pkg://lamm.conf", config_name="eval", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from lamm.cli.errors import error_boundary

    created = _init_distributed()
    try:
        with error_boundary("lamm-eval"):  # inside the task function, or Hydra prints its own trace
            run(cfg)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def main() -> None:
    """Console-script entry point: recipe files staged and checked (see lamm.recipes.launch), the
    overrides checked against the composed config, then Hydra."""
    if sys.argv[1:2] == ["compare"]:  # a subcommand, not a Hydra override: no config is composed
        from lamm.cli.compare import main as compare_main

        compare_main(sys.argv[2:])
    from lamm.cli.errors import error_boundary
    from lamm.cli.train import check_override_keys
    from lamm.cli.usage import print_help, wants_help
    from lamm.recipes.launch import prepare_argv, user_config_dirs

    if wants_help(sys.argv[1:]):
        print_help("lamm-eval", __doc__, "eval", groups=["benchmark"], extra=user_config_dirs(sys.argv[1:]))
        return
    with error_boundary("lamm-eval"):
        sys.argv[1:] = prepare_argv(sys.argv[1:], "benchmark")
        problem = check_override_keys(sys.argv[1:], "eval", extra_dirs=user_config_dirs(sys.argv[1:]))
    if problem:
        print(f"lamm-eval: error: {problem}", file=sys.stderr)
        sys.exit(2)
    register_resolvers()
    _main()


if __name__ == "__main__":
    main()
