"""No module reaches into another lamm package's privates (checked over the source with `ast`).

A *unit* is a top-level package folder: `lamm/<sub>/` (lamm.fusion, lamm.training, ...), each folder
installed under `lamm` (encoders/, projectors/, datasets/, benchmarks/, with all their subfolders),
the core modules directly in `lamm/` (lamm.model, lamm.batch, ... count as one unit, `lamm`), and
scripts/ and tests/. A violation is, in a file of one unit, a name starting with one underscore
(not a dunder) taken from a module of another unit:

- `from lamm.model import _positions` (also relative imports, and private module paths
  such as `import lamm.llm._impl`);
- attribute access on an imported lamm module: `lamm.model._positions`, `m._positions` after
  `import lamm.model as m` or `from lamm import model as m`.

Private names of third-party libraries are out of scope (some expose no public way); private
methods of lamm objects are covered by the public model API the benchmarks, chat and scripts use.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the dotted package it installs as (pyproject.toml's package-dir).
FOLDERS = {
    "lamm": "lamm",
    "encoders": "lamm.encoders",
    "projectors": "lamm.projectors",
    "datasets": "lamm.datasets",
    "benchmarks": "lamm.benchmarks",
    "scripts": "scripts",
    "tests": "tests",
}
# (file, private name) pairs tolerated for now.
ALLOWED = {
    ("benchmarks/build.py", "lamm.build._plain"),  # removed by helpers-merge
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    base = FOLDERS[parts[0]].split(".")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(base + parts[1:])


def _is_module(dotted: str) -> bool:
    """Whether `dotted` names a module or package of this repository."""
    for folder, package in sorted(FOLDERS.items(), key=lambda kv: -len(kv[1])):
        if dotted == package or dotted.startswith(package + "."):
            rest = dotted[len(package):].lstrip(".").split(".") if dotted != package else []
            target = ROOT / folder / Path(*rest) if rest else ROOT / folder
            return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file() or target.is_dir()
    return False


def _unit(dotted: str) -> str:
    """The unit a module belongs to: lamm.<sub> for a sub-package, `lamm` for core modules."""
    parts = dotted.split(".")
    if parts[0] != "lamm":
        return parts[0]
    if len(parts) >= 2 and _package_dir(".".join(parts[:2])) is not None:
        return ".".join(parts[:2])
    return "lamm"


def _package_dir(dotted: str) -> Path | None:
    """The folder of a package (None for a plain module)."""
    for folder, package in FOLDERS.items():
        if dotted == package:
            return ROOT / folder
    candidate = ROOT / "lamm" / dotted.split(".", 1)[1].replace(".", "/") if dotted.startswith("lamm.") else None
    return candidate if candidate is not None and candidate.is_dir() else None


def _resolve_relative(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _dotted(node: ast.AST) -> list[str] | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(names)]
    return None


def violations_in(path: Path) -> list[tuple[int, str]]:
    """(line, dotted private name) for every reach into another unit's privates in one file."""
    return violations_in_source(path.read_text(), _module_of(path), path.name == "__init__.py", str(path))


def violations_in_source(source: str, module: str, is_package: bool = False,
                         filename: str = "<source>") -> list[tuple[int, str]]:
    """`violations_in` for the text of module `module`."""
    unit = _unit(module)
    tree = ast.parse(source, filename=filename)
    found: list[tuple[int, str]] = []
    aliases: dict[str, str] = {}  # local name -> the lamm module it is bound to

    def check(dotted: str, line: int) -> None:
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            if not _is_private(part):
                continue
            owner = ".".join(parts[:i])
            if owner and _is_module(owner) and _unit(owner) != unit:
                found.append((line, dotted))
            return

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            origin = _resolve_relative(node, module, is_package)
            if not _is_module(origin):
                continue
            for alias in node.names:
                check(f"{origin}.{alias.name}", node.lineno)
                if _is_module(f"{origin}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{origin}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_module(alias.name.split(".")[0]):
                    continue
                check(alias.name, node.lineno)
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain and chain[0] in aliases and _is_private(chain[-1]):
                check(".".join([aliases[chain[0]], *chain[1:]]), node.lineno)
    return sorted(set(found))


def all_violations() -> list[str]:
    out = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, dotted in violations_in(path):
                if (rel, dotted) not in ALLOWED:
                    out.append(f"{rel}:{line}: {dotted}")
    return out


def test_no_module_imports_another_packages_private_names() -> None:
    bad = all_violations()
    assert not bad, "private names used across packages:\n" + "\n".join(bad)


def test_the_check_catches_each_form() -> None:
    """The checker flags every form it promises to, and leaves a unit's own privates alone."""
    probe = (
        "import lamm.model\n"
        "import lamm.model as m\n"
        "from lamm import model as mm\n"
        "from lamm.model import _positions, MultimodalLM\n"
        "from lamm.build import (\n    build_model,\n    _plain,\n)\n"
        "from ..fusion.base import _hidden\n"
        "x = lamm.model._positions\n"
        "y = m._last_index\n"
        "z = mm._pick\n"
        "ok = lamm.model.MultimodalLM\n"
    )
    found = [d for _, d in violations_in_source(probe, "lamm.benchmarks.probe")]
    # A unit's own privates are its business: lamm core modules among themselves, tests among themselves.
    assert violations_in_source("from lamm.model import _positions\n", "lamm.policy") == []
    assert violations_in_source("from tests.test_public_api import _unit\n", "tests.test_x") == []
    assert violations_in_source("from tests.test_public_api import _unit\n", "lamm.benchmarks.x") != []
    assert sorted(found) == sorted(["lamm.model._positions", "lamm.build._plain", "lamm.fusion.base._hidden",
                                    "lamm.model._positions", "lamm.model._last_index", "lamm.model._pick"])


def test_units() -> None:
    assert _unit("lamm.model") == _unit("lamm.build") == "lamm"
    assert _unit("lamm.fusion.prefix") == "lamm.fusion"
    assert _unit("lamm.datasets.formats.lamm") == "lamm.datasets"
    assert _unit("tests.test_model") == "tests"


# Modules whose classes make up the model boundary: outside their own unit nobody calls their privates.
MODEL_MODULES = ("lamm/model.py", "lamm/fusion/base.py", "lamm/fusion/prefix.py", "lamm/fusion/gated_xattn.py")


def private_members_reached() -> list[str]:
    """`obj._name` (obj not self/cls) outside a model module's unit, `_name` a private member of its classes."""
    members: dict[str, str] = {}
    for rel in MODEL_MODULES:
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    name = getattr(item, "name", None) if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
                    if isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                        name = item.attr
                    if name and _is_private(name):
                        members.setdefault(name, rel)
    out = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            unit = _unit(_module_of(path))
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and node.attr in members
                        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                        and unit != _unit(_module_of(ROOT / members[node.attr]))):
                    out.append(f"{rel}:{node.lineno}: .{node.attr} (private in {members[node.attr]})")
    return out


def test_nobody_calls_the_models_private_members() -> None:
    bad = private_members_reached()
    assert not bad, "private members of the model boundary used from outside:\n" + "\n".join(bad)
