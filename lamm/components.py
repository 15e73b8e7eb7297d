"""A config node that names a registered component: check that its keys bind to the factory, and build it.

The same check serves building (`build_component`, which stops at the first problem) and
`lamm recipes validate` (`component_problems`, which lists them all), so both say the same words.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping

from lamm.plain_config import MISSING, to_plain
from lamm.registry import Registry, UnknownComponentError
from lamm.suggest import did_you_mean


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config node: the dotted key it is about and what is wrong there."""

    key: str
    message: str
    unknown_name: bool = False  # raised as UnknownComponentError, which callers catch by type

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


def type_name(value: Any) -> str:
    """The YAML word for a value's type (mapping, list, null, ...)."""
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "mapping",
            type(None): "null"}.get(type(value), type(value).__name__)


_ANNOTATION_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),),
    "list": (list,), "tuple": (list,), "Sequence": (list,), "dict": (dict,), "Mapping": (dict,),
}


def fits_annotation(value: Any, annotation: Any) -> tuple[bool, str]:
    """(fits, expected) for a parameter annotation like `int | None` or `Sequence[str]`; unknown ones fit."""
    if annotation is inspect.Parameter.empty or value == MISSING:
        return True, ""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    alternatives = [a.strip().split("[", 1)[0].split(".")[-1] for a in re.split(r"\|(?![^\[]*\])", text)]
    if any(a not in _ANNOTATION_TYPES for a in alternatives):
        return True, ""  # Any, a class, a protocol: nothing simple to say
    allowed = tuple(t for a in alternatives for t in _ANNOTATION_TYPES[a])
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    return ok, " or ".join("null" if a == "None" else a for a in alternatives)


def binding_problems(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str,
                     fixed: Collection[str] = (), check_types: bool = False) -> list[tuple[str, str]]:
    """(argument, message) for each key of `kwargs` that `factory` has no parameter for, each required
    parameter neither `kwargs` nor `fixed` (the names the caller passes itself) gives, and, with
    `check_types`, each value its parameter's annotation (or default) rules out. `what` names the
    factory in messages, e.g. "encoder 'small_cnn'"."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return []
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    problems = []
    for arg, value in kwargs.items():
        param = params.get(arg)
        if param is None:
            if not takes_any:
                names = [p for p in params if p not in fixed]
                problems.append((arg, f"{what} has no parameter {arg!r}.{did_you_mean(arg, names)} "
                                      f"Parameters: {', '.join(names) or '(none)'}"))
            continue
        if not check_types:
            continue
        annotation = param.annotation
        if annotation is inspect.Parameter.empty and param.default not in (None, inspect.Parameter.empty):
            annotation = type(param.default).__name__
        ok, expected = fits_annotation(value, annotation)
        if not ok:
            problems.append((arg, f"expected {expected} ({what}), found {type_name(value)} {value!r}"))
    for pname, param in params.items():
        required = param.default is inspect.Parameter.empty and param.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if required and pname not in kwargs and pname not in fixed:
            problems.append((pname, f"missing required key ({what} needs it)"))
    return problems


def name_problems(registry: Registry, node: Any, key: str) -> list[ConfigProblem]:
    """`node` is a registry name or a mapping whose `name` is registered in `registry`."""
    if isinstance(node, str):  # `metrics: [accuracy]` is shorthand for [{name: accuracy}]
        node, name_key = {"name": node}, key
    else:
        name_key = f"{key}.name"
    if not isinstance(node, dict):
        return [ConfigProblem(key, f"expected a mapping with a `name` (a {registry.kind} name), "
                                   f"found {type_name(node)}")]
    name = node.get("name")
    if name is None or name == MISSING:
        return [ConfigProblem(name_key, f"missing required key (a {registry.kind}: {', '.join(registry.names())})")]
    try:
        registry.get(name)
    except UnknownComponentError as exc:
        return [ConfigProblem(name_key, str(exc), unknown_name=True)]
    return []


def component_problems(registry: Registry, node: Any, key: str, fixed: Collection[str] = (),
                       check_types: bool = False, nested: Mapping[str, Registry] | None = None) -> list[ConfigProblem]:
    """Every problem of a config node naming a component of `registry` (see `binding_problems`);
    `nested` maps an argument that is itself a component node to its registry."""
    node = to_plain(node)
    problems = name_problems(registry, node, key)
    if problems:
        return problems
    node = {"name": node} if isinstance(node, str) else node
    name, kwargs = node["name"], {k: v for k, v in node.items() if k != "name"}
    nested = {} if nested is None else nested
    what = f"{registry.kind} {name!r}"
    for arg, message in binding_problems(registry.get(name), kwargs, what, fixed, check_types):
        if not (arg in nested and arg in kwargs):  # a given nested node is checked as a node below
            problems.append(ConfigProblem(f"{key}.{arg}", message))
    for arg, sub_registry in nested.items():
        if arg in kwargs:
            problems += component_problems(sub_registry, kwargs[arg], f"{key}.{arg}", (), check_types, nested)
    return problems


def check_component(registry: Registry, node: Any, key: str, fixed: Collection[str] = (),
                    nested: Mapping[str, Registry] | None = None) -> None:
    """Raise the first of `component_problems`: UnknownComponentError for a name nobody registered
    (with its did-you-mean), ValueError `KEY: message` otherwise."""
    problems = component_problems(registry, node, key, fixed, nested=nested)
    if problems and problems[0].unknown_name:
        raise UnknownComponentError(problems[0].message)
    if problems:
        raise ValueError(str(problems[0]))


def build_component(registry: Registry, node: Any, key: str, **fixed: Any) -> Any:
    """`registry.build(node.name, **fixed, **rest_of_node)` once `check_component` passes."""
    check_component(registry, node, key, fixed)
    node = to_plain(node)
    node = {"name": node} if isinstance(node, str) else node
    name = node.pop("name")
    try:
        return registry.get(name)(**fixed, **node)
    except TypeError as exc:  # a component that builds parts of its own (video's image_encoder)
        if "argument" in str(exc) or "keyword" in str(exc):
            raise ValueError(f"{key}: {registry.kind} {name!r}: {exc}") from exc
        raise
