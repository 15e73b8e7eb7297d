"""`lamm recipes validate`: check a recipe without building a model or reading data.

Checked, each problem as one line `FILE:LINE: KEY: message`:
- the YAML parses, and nothing in it could run code (`lamm.recipes.safety`);
- experiments: the `# @package _global_` header, every defaults-list group and option exists;
- the composed config has the required keys (model parts, data.name, trainer.max_steps for an
  experiment; a scenario or desiderata, and metrics, for a benchmark);
- every registry name exists and its keys bind to the component's parameters (`lamm.components`, the
  same check building runs, so both say the same words);
- values have the type of the shipped default at the same key, or of the component's parameter.
Lines come from PyYAML's node marks; a key the file does not set points at the defaults entry that
brought it in.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from lamm.components import ConfigProblem, component_problems, name_problems, type_name
from lamm.config import config_search_dirs, group_options, is_config_group
from lamm.plain_config import MISSING, to_plain
from lamm.recipes.hashing import sha256_file
from lamm.recipes.required import unmet_requirements
from lamm.recipes.safety import Problem, package_header, scan_text, walk_nodes
from lamm.recipes.staging import stage_file
from lamm.suggest import did_you_mean

# Keys only a benchmark recipe has (an experiment file is recognised by everything else).
# Blocks that run several evaluations from one recipe (lamm/benchmarks/desiderata.py, fewshot_runs.py, suite.py).
MULTI_RUN_KEYS = ("desiderata", "fewshot", "suite")
BENCHMARK_KEYS = {"scenario", "instruction", "inferencer", "metrics", *MULTI_RUN_KEYS}
# Sections whose keys are a fixed set (a typo there is silently ignored or fails late).
STRICT_SECTIONS = ("trainer", "optim", "checkpoint", "paths")
# Keys whose shipped default has one type but that accept several (Lightning: devices=4 | "auto" | [0, 1]).
LOOSE_KEYS = {"trainer.devices", "trainer.precision", "trainer.strategy", "trainer.gradient_clip_val"}
_KEY_MESSAGE = re.compile(r"^(?:benchmark\.)?([\w.\[\]]+): (.*)$")


@dataclass
class Report:
    """The outcome of validating one recipe file."""

    path: Path
    kind: str
    sha256: str = ""
    problems: list[Problem] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)  # `???` values to give on the command line

    @property
    def ok(self) -> bool:
        return not self.problems


class _Lines:
    """Dotted key -> 1-based line in the recipe file; keys it does not set fall back to their defaults entry."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.keys: dict[str, int] = {}
        self.groups: dict[str, int] = {}  # config group (model/encoder) -> line of its defaults entry
        if root is not None:
            for key, value, key_node in walk_nodes(root, ""):
                self.keys[key] = (key_node or value).start_mark.line + 1

    def __call__(self, key: str) -> int:
        if key in self.keys:
            return self.keys[key]
        for group, line in self.groups.items():
            package = group.strip("/").replace("/", ".")
            if key == package or key.startswith(package + "."):
                return line
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            if ".".join(parts[:n]) in self.keys:
                return self.keys[".".join(parts[:n])]
        return 1


class _Checker:
    """Collects problems for one file (one per key: the first explanation is the clearest)."""

    def __init__(self, path: Path, lines: _Lines) -> None:
        self.path, self.lines = path, lines
        self.problems: list[Problem] = []

    def add(self, key: str, message: str, line: int | None = None) -> None:
        if any(p.key == key and key for p in self.problems):
            return
        self.problems.append(Problem(self.path, line or self.lines(key), key, message))

    def add_all(self, problems: list[ConfigProblem]) -> None:
        for problem in problems:
            self.add(problem.key, problem.message)

    def add_message(self, message: str, fallback_key: str = "") -> None:
        """A message from lamm's own checks, which start with the key they are about."""
        match = _KEY_MESSAGE.match(message)
        key, text = (match.group(1), match.group(2)) if match else (fallback_key, message)
        self.add(key, text)


# ---------------------------------------------------------------------------------------------- types

def fits_default(value: Any, default: Any) -> bool:
    """True if `value` may stand where the shipped default `default` stands (None on either side fits)."""
    if value is None or default is None or value == MISSING:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return not isinstance(value, (list, dict))
    if isinstance(default, list):
        return isinstance(value, list)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


# ------------------------------------------------------------------------------------------ helpers

def _get(tree: Any, key: str) -> tuple[bool, Any]:
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _missing_values(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [k for key, v in tree.items() for k in _missing_values(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(tree, list):
        return [k for i, v in enumerate(tree) for k in _missing_values(v, f"{prefix}[{i}]")]
    return [prefix] if tree == MISSING else []


def _resolved(cfg: Any, checker: _Checker, key_prefix: str = "") -> dict | None:
    """The config as plain containers, interpolations resolved (`???` kept); a failure is a problem."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return to_plain(cfg)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "").removeprefix(key_prefix)
        checker.add(key, f"cannot resolve: {str(exc).splitlines()[0]}")
        return None


def _compose(checker: _Checker, config_name: str, overrides: list[str], dirs: Sequence[Path]) -> Any:
    from lamm.config import compose

    try:
        return compose(config_name, overrides, config_dirs=dirs)
    except Exception as exc:  # Hydra's composition errors: one line, at the defaults list
        checker.add("defaults", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return None


def _all_groups(dirs: Sequence[Path]) -> list[str]:
    groups = set()
    for folder in config_search_dirs(dirs):
        for sub in folder.rglob("*"):
            if sub.is_dir() and any(sub.glob("*.yaml")):
                groups.add(sub.relative_to(folder).as_posix())
    return sorted(groups)


# --------------------------------------------------------------------------------------- experiments

def _check_defaults(checker: _Checker, defaults: Any, lines: _Lines, dirs: Sequence[Path]) -> None:
    """Every defaults entry names an existing group and option (Hydra's own message is less precise)."""
    if not isinstance(defaults, list):
        checker.add("defaults", f"expected a list, found {type_name(defaults)}")
        return
    for i, entry in enumerate(defaults):
        where = f"defaults[{i}]"
        if entry == "_self_":
            continue
        optional = False
        if isinstance(entry, str):  # another experiment this one extends (or an absolute /group/option)
            group, _, option = entry.strip("/").rpartition("/") if entry.startswith("/") else ("experiment", "", entry)
            options, line = [option], lines(where)
        elif isinstance(entry, dict) and len(entry) == 1:
            raw, value = next(iter(entry.items()))
            optional = "optional " in str(raw)
            group = str(raw).replace("override ", "").replace("optional ", "").strip().split("@", 1)[0]
            line = lines(f"{where}.{raw}")
            if not group.startswith("/"):  # Hydra reads it relative to the experiment group
                if is_config_group(f"experiment/{group}", dirs):
                    group = f"experiment/{group}"
                elif is_config_group(group, dirs):
                    checker.add(where, f"group {group!r} is read relative to experiment/; write /{group}", line)
                    continue
            group = group.strip("/")
            lines.groups[group] = line
            options = value if isinstance(value, list) else [value]
        else:
            checker.add(where, "expected `_self_`, an experiment name or one `group: option` mapping", lines(where))
            continue
        if not is_config_group(group, dirs):
            checker.add(where, f"unknown config group {group!r}.{did_you_mean(group, _all_groups(dirs))}", line)
            continue
        known = group_options(group, dirs)
        for option in options:
            if optional or option in (None, MISSING) or (isinstance(option, str) and "${" in option):
                continue  # null removes the group (required keys are checked after composition)
            if str(option) not in known:
                checker.add(where, f"unknown option {option!r} for group {group}.{did_you_mean(option, known)} "
                                   f"Options: {', '.join(known)}", line)


def _check_parts(checker: _Checker, model: dict, part: str, registry: Any, fixed: tuple[str, ...] = (),
                 nested: dict | None = None) -> None:
    """model.<part>: one component, or one per modality, each checked against the registry."""
    node = model.get(part)
    if part == "encoder":
        from lamm.policy import split_encoder_node

        node, _ = split_encoder_node(node)  # lamm-train's flag, not an encoder argument
    key = f"model.{part}"
    if node is None or node == MISSING:
        checker.add(key, f"missing required key (choose one with model/{part}=NAME)")
        return
    if isinstance(node, dict) and "name" not in node and node and all(isinstance(v, dict) for v in node.values()):
        for modality, sub in node.items():  # one component per modality
            checker.add_all(component_problems(registry, sub, f"{key}.{modality}", fixed, check_types=True,
                                               nested=nested))
    else:
        checker.add_all(component_problems(registry, node, key, fixed, check_types=True, nested=nested))


def _check_experiment(checker: _Checker, text: str, data: dict, lines: _Lines, dirs: list[Path],
                      report: Report) -> None:
    from lamm.registry import DATASETS, ENCODERS, FUSIONS, LLMS, PROJECTORS

    if package_header(text) != "_global_":
        checker.add("", "missing the `# @package _global_` header: without it the values land under "
                        "`experiment.` instead of the top level", 1)
    _check_defaults(checker, data.get("defaults", []), lines, dirs)
    if checker.problems:
        return
    with tempfile.TemporaryDirectory(prefix="lamm-validate-") as tmp:
        folder = Path(tmp)
        name = stage_file(checker.path, "experiment", folder, dirs)
        # The same defaults list without this file's own values: the shipped defaults it starts from.
        base = {"defaults": [d for d in data.get("defaults", []) if d != "_self_"]}
        (folder / "experiment" / f"{name}__base.yaml").write_text("# @package _global_\n" + yaml.safe_dump(base))
        cfg = _compose(checker, "train", [f"experiment={name}"], [*dirs, folder])
        base_cfg = _compose(_Checker(checker.path, lines), "train", [f"experiment={name}__base"], [*dirs, folder])
    if cfg is None:
        return
    resolved = _resolved(cfg, checker)
    base_resolved = _resolved(base_cfg, _Checker(checker.path, lines)) if base_cfg is not None else None
    if resolved is None:
        return
    report.needs = _missing_values(resolved) + [key for key, _ in unmet_requirements(cfg)]
    model = resolved.get("model") or {}
    _check_parts(checker, model, "llm", LLMS)
    _check_parts(checker, model, "encoder", ENCODERS, nested={"image_encoder": ENCODERS})
    _check_parts(checker, model, "projector", PROJECTORS, ("in_dim", "out_dim"))  # what build_model passes
    _check_parts(checker, model, "fusion", FUSIONS, ("hidden_size", "num_layers"))
    try:
        from lamm.policy import TrainablePolicy

        TrainablePolicy.from_config(model.get("policy"))
    except (ValueError, TypeError) as exc:
        checker.add_message(str(exc), "model.policy")
    data_cfg = resolved.get("data") or {}
    if not isinstance(data_cfg, dict) or data_cfg.get("name") in (None, MISSING):
        checker.add("data.name", "missing required key (choose a data config with data=NAME)")
    else:
        # Names only: a dataset factory takes the whole data config, not its keys.
        checker.add_all(name_problems(DATASETS, data_cfg, "data"))
        for i, sub in enumerate(data_cfg.get("datasets") or []):
            checker.add_all(name_problems(DATASETS, sub, f"data.datasets[{i}]"))
    max_steps = (resolved.get("trainer") or {}).get("max_steps")
    if max_steps in (None, MISSING):
        checker.add("trainer.max_steps", "missing required key (a positive int)")
    elif not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps <= 0:
        checker.add("trainer.max_steps", f"expected a positive int, found {type_name(max_steps)} {max_steps!r}")
    benchmarks = group_options("benchmark", dirs)
    evaluate = resolved.get("evaluate") or []
    for i, bench in enumerate(evaluate if isinstance(evaluate, list) else [evaluate]):
        if bench not in benchmarks:
            checker.add(f"evaluate[{i}]", f"unknown benchmark recipe {bench!r}.{did_you_mean(bench, benchmarks)}")
    if base_resolved is not None:
        _check_against_defaults(checker, data, resolved, base_resolved)


def _check_against_defaults(checker: _Checker, data: dict, resolved: dict, base: dict) -> None:
    """Each value this file sets has the type of the shipped default it replaces; no typos in strict sections."""
    def leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
        if isinstance(node, dict) and node:
            return [kv for k, v in node.items() for kv in leaves(v, f"{prefix}{k}.")]
        return [(prefix.rstrip("."), node)]

    for key, _ in leaves({k: v for k, v in data.items() if k != "defaults"}, ""):
        section, _, rest = key.partition(".")
        if section in STRICT_SECTIONS and rest and isinstance(base.get(section), dict):
            first = rest.split(".")[0]
            if first not in base[section]:
                hint = did_you_mean(f"{section}.{first}", [f"{section}.{k}" for k in base[section]])
                checker.add(key, f"unknown key in {section}.{hint} Keys: {', '.join(base[section])}")
                continue
        has_default, default = _get(base, key)
        found, value = _get(resolved, key)
        if not (has_default and found) or key in LOOSE_KEYS or fits_default(value, default):
            continue
        checker.add(key, f"expected {type_name(default)} like the shipped default ({default!r}), "
                         f"found {type_name(value)} {value!r}")


# ---------------------------------------------------------------------------------------- benchmarks

def _check_benchmark(checker: _Checker, data: dict, dirs: list[Path], report: Report) -> None:
    from lamm.benchmarks.desiderata import desiderata_recipes
    from lamm.benchmarks.evaluator import RECIPE_KEYS, recipe_key_problems
    from lamm.registry import INFERENCERS, INSTRUCTIONS, METRICS, SCENARIOS

    # A suite composes its member recipes through Hydra's defaults list into `recipes`.
    suite_keys = {"defaults", "recipes"} if "suite" in data else set()
    checker.add_all(recipe_key_problems(data, RECIPE_KEYS | set(MULTI_RUN_KEYS) | suite_keys))
    if "scenario" not in data and not set(MULTI_RUN_KEYS) & set(data):
        checker.add("scenario", "missing required key (a scenario by registry name, e.g. "
                                "{name: synth_shapes}, or a desiderata, fewshot or suite block)", 1)
        return
    with tempfile.TemporaryDirectory(prefix="lamm-validate-") as tmp:
        name = stage_file(checker.path, "benchmark", Path(tmp), dirs)
        cfg = _compose(checker, "eval", [f"benchmark={name}"], [*dirs, Path(tmp)])
    if cfg is None:
        return
    bench = _resolved(cfg.benchmark, checker, "benchmark.")
    if bench is None:
        return
    report.needs = _missing_values(bench)
    for key, expected in (("name", str), ("description", str), ("batch_size", int)):
        if bench.get(key) is not None and not isinstance(bench[key], expected):
            checker.add(key, f"expected {expected.__name__}, found {type_name(bench[key])} {bench[key]!r}")
    if "desiderata" in bench:
        try:
            subs = desiderata_recipes(bench["desiderata"])
        except ValueError as exc:
            checker.add_message(str(exc), "desiderata")
            return
        parts = [(r.scenario, r.instruction, r.inferencer, r.metrics, f"desiderata.{dim}") for dim, _, r in subs]
        scenario_key = "desiderata.scenario"
    elif "fewshot" in bench or "suite" in bench:  # every evaluation it will run, as lamm-eval checks them
        from lamm.benchmarks.fewshot_runs import fewshot_recipes
        from lamm.benchmarks.suite import suite_specs

        block = "fewshot" if "fewshot" in bench else "suite"
        try:
            subs = (fewshot_recipes(str(bench.get("name", "fewshot")), bench["fewshot"]) if block == "fewshot"
                    else [(None, None, spec) for spec in suite_specs(bench)])
        except ValueError as exc:
            checker.add_message(str(exc), block)
            return
        parts = [(r.scenario, r.instruction, r.inferencer, r.metrics, block) for _, _, r in subs]
        scenario_key = f"{block}.scenario"
    else:
        parts = [(bench.get("scenario"), bench.get("instruction"), bench.get("inferencer"), bench.get("metrics"), "")]
        scenario_key = "scenario"
    for scenario, instruction, inferencer, metrics, where in parts:
        checker.add_all(component_problems(SCENARIOS, scenario, scenario_key, check_types=True,
                                           nested={"scenario": SCENARIOS}))
        if instruction is not None:
            checker.add_all(component_problems(INSTRUCTIONS, instruction, where or "instruction", check_types=True))
        if inferencer is not None:
            checker.add_all(component_problems(INFERENCERS, inferencer, where or "inferencer", check_types=True))
        metric_list = metrics if isinstance(metrics, list) else [metrics] if metrics else []
        if not where and not metric_list and "metrics" in data:
            checker.add("metrics", "empty; name at least one metric (e.g. [accuracy])")
        for i, metric in enumerate(metric_list):
            checker.add_all(component_problems(METRICS, metric, where or f"metrics[{i}]", check_types=True))


# ------------------------------------------------------------------------------------------- entry

def guess_kind(path: Path, data: Any) -> str:
    """experiment or benchmark: from the folder it sits in, else from its keys."""
    if path.parent.name in ("experiment", "benchmark"):
        return path.parent.name
    if isinstance(data, dict) and BENCHMARK_KEYS & set(data):
        return "benchmark"
    return "experiment"


def validate_file(path: str | Path, kind: str | None = None, extra_dirs: Sequence[str | Path] = (),
                  trusted: bool = False) -> Report:
    """Every problem of one recipe file (see the module docstring); nothing is built or run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    report = Report(path, kind or "experiment", sha256_file(path))
    text = path.read_text(encoding="utf-8")
    safety = scan_text(text, path, is_global=False)  # also reports YAML syntax errors, with their line
    if safety and (not trusted or safety[0].message.startswith("not valid YAML")):
        report.problems = safety  # nothing is composed or resolved from a refused file
        return report
    data = yaml.safe_load(text) or {}
    lines = _Lines(yaml.compose(text, Loader=yaml.SafeLoader))
    checker = _Checker(path, lines)
    report.kind = kind or guess_kind(path, data)
    if not isinstance(data, dict):
        checker.add("", f"expected a mapping of keys, found {type_name(data)}", 1)
    else:
        dirs = [Path(d) for d in extra_dirs]
        if path.parent.name == report.kind:  # a file inside a config folder sees its sibling groups
            dirs.append(path.parent.parent)
        if report.kind == "experiment":
            _check_experiment(checker, text, data, lines, dirs, report)
        else:
            _check_benchmark(checker, data, dirs, report)
    report.problems = sorted(checker.problems, key=lambda p: p.line)
    return report
