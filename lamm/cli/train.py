"""`lamm-train`: the Hydra app that trains a composed model with Lightning.

    lamm-train experiment=quickstart
    lamm-train -m model/fusion=prefix,gated_xattn      # one run folder per fusion
    lamm-train --cfg job                                # print the resolved config
    lamm-train resume=auto                              # continue the newest run of this run_name
    lamm-train --config-dir DIR experiment=NAME         # a recipe in DIR/experiment/NAME.yaml
    lamm-train experiment=path/to/recipe.yaml           # a recipe file from anywhere (or just the path)
    lamm-train --trust-recipe experiment=...            # allow _target_ / resolver calls in the recipe

Recipes are checked for code-running constructs before Hydra reads them (lamm/recipes/safety.py),
and run.json records the recipe's SHA-256 (lamm/recipes/hashing.py).
"""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from lamm.config import register_resolvers
from lamm.plain_config import to_plain

log = logging.getLogger("lamm.train")
# The command line as typed (main() rewrites sys.argv for Hydra: staged recipe files, no --trust-recipe).
TYPED_COMMAND: list[str] = []


def data_config(cfg: DictConfig) -> dict[str, Any]:
    """The data node without lamm-train's own `synth` key, generating the built-in data if asked."""
    data = to_plain(cfg.data)
    synth = data.pop("synth", None)
    if synth and synth.get("kinds"):  # debug=fast sizes every data config's `synth`; the synth_* configs name kinds
        ensure_synthetic_data(Path(cfg.paths.data_dir) / f"synth-{synth.get('seed', 0)}", synth)
    return data


def ensure_synthetic_data(out_dir: Path, synth: dict[str, Any]) -> None:
    """Generate the built-in offline data once: kinds missing from the folder's manifest, or written
    with other split sizes than the config asks or by an older format (never trains on stale data)."""
    from lamm.datasets.synth import FORMAT_VERSION, generate, read_manifest, resolve_sizes

    kinds = list(synth.get("kinds", ["shapes"]))
    wanted = resolve_sizes(synth.get("sizes"), kinds)
    have = (read_manifest(out_dir) or {}).get("kinds", {})
    current = {k: e for k, e in have.items() if e.get("format_version") == FORMAT_VERSION}
    todo = [k for k in kinds if (current.get(k) or {}).get("sizes") != wanted[k]]
    if todo:
        stale = {k: have[k].get("sizes") for k in todo if k in have}
        log.info("generating built-in data %s into %s%s", todo, out_dir,
                 f" (replacing data of other sizes or an older format: {stale})" if stale else "")
        generate(out_dir, seed=int(synth.get("seed", 0)), sizes=synth.get("sizes"), kinds=tuple(todo))


def resolve_resume(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to resume from: None, the newest run of this run_name (auto), or a path."""
    from lamm.training.checkpoint_io import resolve_checkpoint
    from lamm.training.run_folder import find_latest_checkpoint

    if cfg.resume in (None, "", "none"):
        return None
    if cfg.resume == "auto":
        found = find_latest_checkpoint(Path(cfg.paths.runs_dir), cfg.run_name)
        if found is None or run_dir in found.parents:
            log.info("resume=auto: no earlier run named %r; starting fresh", cfg.run_name)
            return None
        return str(found)
    resolve_checkpoint(cfg.resume)  # fails early, naming the path, when it is not a checkpoint
    return str(cfg.resume)


def build_trainer(cfg: DictConfig, run_dir: Path, methods: Sequence[Any] = ()):
    """The run's Lightning Trainer (lamm/training/trainer.py: `trainer.*` passes through, loggers and
    callbacks by name, accumulation from data.global_batch_size)."""
    from lamm.training.trainer import build_trainer as build

    return build(cfg, run_dir, methods)


def train(cfg: DictConfig, run_dir: Path) -> Path:
    """Train per `cfg` into `run_dir`; returns the run folder."""
    import lightning as L
    from rich.console import Console

    from lamm.build import build_model
    from lamm.policy import (check_frozen_encoders_have_weights, check_gradients_flow, parameter_report,
                             split_encoder_node)
    from lamm.training.datamodule import LammDataModule
    from lamm.training.deepspeed_zero import model_after_training
    from lamm.training.export import EXPORT_DIR, export_model, init_from_run
    from lamm.training.method import build_methods
    from lamm.training.module import LammModule
    from lamm.training.optim import OptimConfig
    from lamm.training.run_folder import check_writable, lock_run, write_run_info
    from lamm.training.trainer import check_run_config

    check_writable(run_dir)
    check_run_config(cfg)  # trainer keys, loggers, callbacks, global batch: one line before any model is built
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    ckpt_path = resolve_resume(cfg, run_dir)
    lock_run(run_dir, ckpt_path)  # refused while another process trains this run or resumes the same one
    data_cfg = data_config(cfg)
    model = build_model(cfg.model)
    console = Console(soft_wrap=True)  # paths and counts stay on one line when piped (rich wraps at 80 columns)
    if cfg.get("init_from"):
        copied = init_from_run(model, cfg.init_from)
        console.print(f"init_from {cfg.init_from}: {len(copied)} tensors copied")
    _, allow_random_frozen = split_encoder_node(to_plain(cfg.model.encoder))
    check_frozen_encoders_have_weights(model, model.policy, allow_random_frozen, copied if cfg.get("init_from") else ())
    check_gradients_flow(model, model.policy)  # gates frozen at 0 (no init_from, or one without trained gates)
    counts = parameter_report(model)
    console.print("trainable parameters: " + ", ".join(f"{k} {t:,}/{n:,}" for k, (t, n) in counts.items() if n))
    max_steps = int(cfg.trainer.max_steps)
    methods = build_methods(cfg, model, max_steps)  # e.g. the encoder warm-up (lamm/training/method.py)
    module = LammModule(model, OptimConfig.from_config(cfg.optim), max_steps,
                        gradient_checkpointing=bool(cfg.gradient_checkpointing), methods=methods,
                        compile=bool(cfg.get("compile", False)))
    if module.compiled_blocks is not None:
        kinds = sorted({type(u).__name__ for u in module.compiled_blocks.units})
        console.print(f"compile: {len(module.compiled_blocks)} blocks ({', '.join(kinds)}) run compiled in training steps")
    trainer = build_trainer(cfg, run_dir, methods)
    datamodule = LammDataModule(data_cfg, model, max_steps, trainer.accumulate_grad_batches)
    if trainer.is_global_zero:
        from lamm.recipes.hashing import current_recipe

        write_run_info(run_dir, cfg, {"resumed_from": ckpt_path, "run_dir": str(run_dir),
                                      "command": TYPED_COMMAND or sys.argv}, recipe=current_recipe("experiment"))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    # The final state, whatever the checkpoint interval (every rank joins: saving can be collective).
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    model = model_after_training(trainer, module, model, run_dir)  # DeepSpeed: rebuilt from the consolidated shards
    if trainer.is_global_zero:
        from lamm.training.fsdp import consolidate, is_sharded

        if is_sharded(trainer.strategy):  # each rank holds a shard: export and evaluate the whole model, on rank 0
            from lamm.training.export import load_for_inference

            consolidate(run_dir / "checkpoints" / "last.ckpt")
            model = load_for_inference(run_dir)[0]
        export_model(model, run_dir / EXPORT_DIR)
        summary = datamodule.skipped_summary()
        if summary:
            console.print(summary)
        if cfg.get("evaluate"):
            from lamm.training.heldout import evaluate_after_training

            evaluate_after_training(model, cfg, run_dir, list(cfg.evaluate))
        console.print(f"run folder: {run_dir}")
    return run_dir


def _hydra_entry() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from lamm.cli.errors import error_boundary, settle_failed_run

    @hydra.main(version_base="1.3", config_path="pkg://lamm.conf", config_name="train")
    def _main(cfg: DictConfig) -> None:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        # Inside the task function: Hydra would print its own trace for anything that escapes it.
        with error_boundary("lamm-train", on_error=lambda exc: settle_failed_run(run_dir, exc)):
            train(cfg, run_dir)

    _main()


def check_override_keys(argv: list[str], config_name: str = "train",
                        extra_dirs: Sequence[str | Path] = (), check_required: bool = False) -> str | None:
    """One line naming an overridden key that does not exist, with the valid keys beside it, or the
    composition error of a bad group choice or value.

    A key whose value is MISSING (`???`, e.g. `data.path` of the shipped data configs) exists.
    `extra_dirs` are the command line's own config folders (--config-dir, staged recipe files), so
    their groups count as groups. Under `-m` a swept group is checked with its first choice.
    `check_required`: also the recipe's `required:` keys (lamm/recipes/required.py), when not sweeping.
    """
    from omegaconf import ListConfig

    from lamm.cli.errors import describe
    from lamm.config import compose, is_config_group

    sweep = "-m" in argv or "--multirun" in argv
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "hydra"))]
    if not sweep:  # the common case: everything composes, so every key exists and every value reads
        try:
            composed = composed_config(config_name, tuple(overrides), tuple(map(str, extra_dirs)))
        except Exception as exc:
            failure = exc
        else:
            if check_required:
                from lamm.recipes.required import requirement_problem

                return requirement_problem(composed)
            return None
    plain = [a for a in argv if "=" in a and not a.startswith(("-", "+", "~", "hydra"))]
    is_group = {a: is_config_group(a.split("=", 1)[0], extra_dirs) for a in plain}  # data=..., model/llm=...
    keys = [a.split("=", 1)[0] for a in plain if not is_group[a]]
    groups = [a.split(",", 1)[0] if sweep else a for a in plain if is_group[a]]
    try:
        cfg = compose(config_name, groups, config_dirs=extra_dirs)
    except Exception as exc:  # a bad group choice or a broken recipe: one line, Hydra's words
        return describe(exc)[0]
    for key in keys:
        node: Any = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
                node = node[int(part)] if depth < len(parts) - 1 else None
                continue
            # `keys()` lists MISSING values too (`in` does not).
            if not isinstance(node, DictConfig) or part not in node.keys():
                where = ".".join(parts[:depth]) or "the top level"
                valid = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else \
                    f"{len(node)} items" if isinstance(node, ListConfig) else "(a value, not a mapping)"
                return f"unknown config key '{key}': {where} has {valid}"
            if depth < len(parts) - 1:  # a MISSING leaf exists but cannot be read
                node = node[part]
    if not sweep:  # the keys exist, so a value is wrong (a type, a bad interpolation): name it
        from hydra.core.override_parser.overrides_parser import OverridesParser

        for item in overrides:  # name the override Hydra could not parse (its message does not)
            try:
                OverridesParser.create().parse_overrides([item])
            except Exception:
                return f"cannot parse the override '{item}': {describe(failure)[0]}"
        return describe(failure)[0]
    return None


@functools.lru_cache(maxsize=4)
def composed_config(config_name: str, overrides: tuple[str, ...], extra_dirs: tuple[str, ...]) -> DictConfig:
    """One composition per command line: the checks before Hydra starts share it (each costs ~0.5 s)."""
    from lamm.config import compose

    return compose(config_name, list(overrides), config_dirs=list(extra_dirs))


def check_output_folder(argv: list[str], extra_dirs: Sequence[str | Path] = ()) -> str | None:
    """One line when the runs folder (or an explicit hydra.run.dir) cannot be written, before Hydra starts."""
    from lamm.training.run_folder import check_writable

    explicit = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if explicit:
        target = Path(explicit[-1])
    else:
        plain = [a for a in argv if "=" in a and not a.startswith(("-", "hydra"))]
        try:
            target = Path(composed_config("train", tuple(plain), tuple(map(str, extra_dirs))).paths.runs_dir)
        except Exception:  # composition problems get Hydra's own message
            return None
    try:
        check_writable(target)
    except PermissionError as exc:
        return str(exc)
    return None


def with_imported_architecture(argv: list[str]) -> list[str]:
    """`init_from=FOLDER` of an imported model (`lamm import`) first applies the overrides that rebuild its
    architecture; the user's own overrides of the same keys or groups win. The import's data settings (its
    prompt template) apply where the chosen data config has the key: a mixture's sources keep their own
    templates and interleaved documents render as documents (stderr says so)."""
    source = next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("init_from=")), None)
    if not source:
        return argv
    from lamm.zoo.writer import read_import_record  # torch: only when there is an init_from to read

    record = read_import_record(source)
    if record is None:
        return argv

    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    typed = {key(a) for a in argv if "=" in a}
    imported = [o for o in record["overrides"] if key(o) not in typed]
    unused = unused_data_settings(imported, argv)
    for override in unused:
        print(f"lamm-train: init_from {source}: its {override} is not used: the chosen data config has no "
              f"{key(override)} (a mixture sets it per source: data.datasets.N.{key(override)[5:]})", file=sys.stderr)
    return [o for o in imported if o not in unused] + argv


def unused_data_settings(imported: list[str], argv: list[str]) -> list[str]:
    """The imported `data.*` overrides whose key the data config the command line chooses does not have."""
    from omegaconf import OmegaConf

    from lamm.config import compose
    from lamm.recipes.launch import user_config_dirs

    data = [o for o in imported if o.startswith("data.")]
    if not data:
        return []
    plain = [a for a in argv if "=" in a and not a.startswith(("-", "hydra"))]
    try:
        cfg = compose("train", [o for o in imported if o not in data] + plain, config_dirs=user_config_dirs(argv))
    except Exception:  # a bad command line: check_override_keys reports it in its own words
        return []

    def has(dotted: str) -> bool:  # `keys()` lists `???` values too (`select` does not tell them apart)
        parent, _, leaf = dotted.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None)
        return isinstance(node, DictConfig) and leaf in node.keys()

    return [o for o in data if not has(o.split("=", 1)[0])]


def main() -> None:
    """Entry point of the `lamm-train` console script."""
    from lamm.cli.errors import error_boundary
    from lamm.cli.usage import print_help, wants_help

    TYPED_COMMAND[:] = sys.argv
    if wants_help(sys.argv[1:]):
        from lamm.recipes.launch import user_config_dirs

        print_help("lamm-train", __doc__, "train", extra=user_config_dirs(sys.argv[1:]))
        return
    with error_boundary("lamm-train"):  # the checks before Hydra starts: recipe safety, keys, output folder
        from lamm.recipes.launch import prepare_argv, user_config_dirs

        # Recipe files staged, refused constructs reported (one line each), --trust-recipe taken out.
        sys.argv[1:] = with_imported_architecture(prepare_argv(sys.argv[1:], "experiment"))
        argv, extra = sys.argv[1:], user_config_dirs(sys.argv[1:])
        # `--cfg` only prints the config, so a recipe's required keys may still be unset there.
        problem = check_override_keys(argv, extra_dirs=extra, check_required="--cfg" not in argv) or (
            None if "-m" in argv or "--multirun" in argv or "--cfg" in argv else check_output_folder(argv, extra))
    if problem:
        print(f"lamm-train: error: {problem}", file=sys.stderr)
        sys.exit(2)
    register_resolvers()

    from lamm.cli.sweep import register as register_sweep_resolver

    register_sweep_resolver()  # conf/hydra/default.yaml names sweep job folders with it
    _hydra_entry()


if __name__ == "__main__":
    main()
