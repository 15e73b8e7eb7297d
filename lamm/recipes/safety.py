"""Refuse recipe YAML that could run code, by reading its raw text before Hydra or OmegaConf touch it.

A shared recipe names components by registry name only. What is refused (unless the user passes
`--trust-recipe`):

- `_target_` anywhere: Hydra's `instantiate` imports and calls whatever it names (e.g. `os.system`).
- an interpolation calling a resolver (`${name:...}`) other than the pure lookups in
  `ALLOWED_RESOLVERS`. Custom resolvers can do anything; `oc.env` is refused too, because it copies
  environment variables (tokens, keys) into the resolved config that run folders and reports save;
  `oc.decode` / `oc.create` turn text into config (and so into further interpolations).
  Plain references (`${model.fusion.name}`, `${steps.${model.fusion.name}}`) are allowed.
- Hydra's own runtime configuration from a recipe: a top-level `hydra` key in a global-package file,
  a `# @package` header or a defaults entry that targets `hydra`, and files in a `hydra/` group folder.
  It holds logging factories (`()`, `class`), callbacks and `job.env_set` (e.g. LD_PRELOAD for every
  subprocess): all ways to run code without `_target_`.

Files are parsed with PyYAML's `compose` (nodes and line numbers, no object construction), so reading
a hostile file cannot run it either. A folder given with `--config-dir` is scanned whole: any file in
it can be pulled in by a defaults list, so every file counts as part of the recipe.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

# Pure lookups: a key with a default, a mapping's keys or values, Hydra's own config, the time, and
# lamm's `cpu_bf16` (one of two given values, by this CPU's features).
ALLOWED_RESOLVERS = frozenset({"oc.select", "oc.dict.keys", "oc.dict.values", "hydra", "now", "cpu_bf16"})
REFUSED_KEY = "_target_"
PLAIN_TAG_PREFIX = "tag:yaml.org,2002:"  # str, int, map, ...: the tags plain YAML resolves to
PYTHON_TAG_PREFIX = PLAIN_TAG_PREFIX + "python/"  # !!python/object/apply:os.system and the like
TRUST_HINT = "pass --trust-recipe if you trust this file"
_PACKAGE_RE = re.compile(r"^\s*#\s*@package\s+(\S+)")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, located by file, 1-based line and dotted key."""

    path: Path
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        key = f" {self.key}:" if self.key else ""
        return f"{self.path}:{self.line}:{key} {self.message}"


class UnsafeRecipeError(ValueError):
    """A recipe holds something that could run code; `problems` lists each place."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def package_header(text: str) -> str | None:
    """The `# @package X` of a config file (Hydra reads it from the leading comment block)."""
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return None
        match = _PACKAGE_RE.match(line)
        if match:
            return match.group(1)
    return None


def resolver_names(value: str) -> list[str]:
    """Names of the resolvers an OmegaConf string calls (parsed by OmegaConf's own grammar)."""
    if "${" not in value:
        return []
    from omegaconf import grammar_parser
    from omegaconf.errors import GrammarParseError
    from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

    try:
        tree = grammar_parser.parse(value)
    except GrammarParseError:  # malformed: OmegaConf refuses it at resolution, so nothing can run
        return []
    found: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            found.append(node.resolverName().getText())
        stack.extend(c for c in (getattr(node, "children", None) or []) if hasattr(c, "children"))
    return found


def walk_nodes(node: yaml.Node, path: str) -> Iterator[tuple[str, yaml.Node, yaml.Node | None]]:
    """(dotted key, value node, key node) for every node below `node`."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            child = f"{path}.{key}" if path else key
            yield child, value_node, key_node
            yield from walk_nodes(value_node, child)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}[{i}]"
            yield child, item, None
            yield from walk_nodes(item, child)


def _targets_hydra(entry: str) -> bool:
    """True for a defaults-list key that selects a `hydra/...` group or writes into the `hydra` package."""
    entry = entry.replace("override ", "").replace("optional ", "").strip()
    group, _, package = entry.partition("@")
    parts = [p for p in group.split("/") if p]
    return (parts[:1] == ["hydra"]) or package.split(".")[0] == "hydra" or package.startswith("_global_.hydra")


def scan_text(text: str, path: Path, is_global: bool = True, in_hydra_group: bool = False) -> list[Problem]:
    """Every refused construct in one YAML text (`is_global`: its keys land at the config root)."""
    if in_hydra_group:
        return [Problem(path, 1, "", f"configures Hydra itself (a file in a hydra/ group folder); {TRUST_HINT}")]
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        return [Problem(path, line, "", f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]
    if len(documents) > 1:
        line = documents[1].start_mark.line + 1 if documents[1] is not None else 1
        return [Problem(path, line, "", "not valid YAML for a config: several documents (---) in one file")]
    problems: list[Problem] = []
    package = package_header(text)
    if package and (package == "hydra" or package.startswith(("hydra.", "_global_.hydra"))):
        problems.append(Problem(path, 1, "", f"`# @package {package}` writes into Hydra's own config; {TRUST_HINT}"))
    global_package = package == "_global_" or (package is None and is_global)
    for doc in documents:
        if doc is None:
            continue
        for key, value, key_node in [("", doc, None), *walk_nodes(doc, "")]:
            line = (key_node or value).start_mark.line + 1
            leaf = key.rsplit(".", 1)[-1]
            if not value.tag.startswith(PLAIN_TAG_PREFIX) or value.tag.startswith(PYTHON_TAG_PREFIX):
                tag = value.tag.replace(PLAIN_TAG_PREFIX, "!!")
                problems.append(Problem(path, value.start_mark.line + 1, key,
                                        f"the YAML tag {tag} asks the loader to build an object; recipes are "
                                        f"plain data (no tags), and no loader here runs such tags"))
            if key_node is not None and leaf == REFUSED_KEY:
                target = value.value if isinstance(value, yaml.ScalarNode) else "..."
                problems.append(Problem(path, line, key, f"`_target_: {target}` is an import path; recipes name "
                                                         f"components by registry name only; {TRUST_HINT}"))
            if key == "hydra" and global_package:
                problems.append(Problem(path, line, key, f"a recipe may not configure Hydra itself (logging, "
                                                         f"callbacks, environment); {TRUST_HINT}"))
            if key.startswith("defaults[") and key.count("[") == 1 and key_node is None:
                entries = [k.value for k, _ in value.value] if isinstance(value, yaml.MappingNode) else \
                    [value.value] if isinstance(value, yaml.ScalarNode) else []
                if any(isinstance(e, str) and _targets_hydra(e) for e in entries):
                    problems.append(Problem(path, line, key, f"a defaults entry may not select Hydra's own "
                                                             f"config groups; {TRUST_HINT}"))
            if isinstance(value, yaml.ScalarNode) and isinstance(value.value, str):  # keys are never resolved
                for name in resolver_names(value.value):
                    if name not in ALLOWED_RESOLVERS:
                        problems.append(Problem(path, value.start_mark.line + 1, key,
                                                f"interpolation calls the resolver `{name}` (allowed: plain "
                                                f"${{key}} references and {', '.join(sorted(ALLOWED_RESOLVERS))}); "
                                                f"{TRUST_HINT}"))
    return problems


def scan_file(path: Path, is_global: bool = True, in_hydra_group: bool = False,
              display: Path | None = None) -> list[Problem]:
    """`scan_text` of a file (problems name `display`, e.g. the original of a staged copy)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return [Problem(display or path, 1, "", f"not UTF-8 text ({exc.reason})")]
    return scan_text(text, display or path, is_global, in_hydra_group)


def scan_dir(folder: Path) -> list[Problem]:
    """`scan_file` of every YAML file under a config folder (top-level files are global: primary configs)."""
    folder = Path(folder)
    problems: list[Problem] = []
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        relative = path.relative_to(folder).parts
        problems += scan_file(path, is_global=len(relative) == 1, in_hydra_group=relative[0] == "hydra")
    return problems


def require_safe(problems: list[Problem]) -> None:
    """Raise UnsafeRecipeError if there are problems."""
    if problems:
        raise UnsafeRecipeError(problems)
