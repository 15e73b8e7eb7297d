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
    if len(parts) >= 2 and _is_module(".".join(parts[:2])) and (_package_dir(".".join(parts[:2])) is not None):
        return ".".join(parts[:2])
    return "lamm"


def _package_dir(dotted: str) -> Path | None:
    for folder, package in FOLDERS.items():
        if dotted == package:
            return ROOT / folder
    if dotted.startswith("lamm."):
        candidate = ROOT / "lamm" / dotted.split(".", 1)[1].replace(".", "/")
        if candidate.is_dir():
            return candidate
    return None


def _ours(dotted: str) -> bool:
    return dotted.split(".")[0] in ("lamm", "scripts", "tests") and _is_module(dotted.rsplit(".", 1)[0] if not _is_module(dotted) else dotted)


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
    module = _module_of(path)
    unit = _unit(module)
    tree = ast.parse(path.read_text(), filename=str(path))
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
            source = _resolve_relative(node, module, path.name == "__init__.py")
            if not _is_module(source):
                continue
            for alias in node.names:
                check(f"{source}.{alias.name}", node.lineno)
                if _is_module(f"{source}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
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


def test_the_check_catches_each_form(tmp_path, monkeypatch) -> None:
    """The checker flags every form it promises to, and leaves a unit's own privates alone."""
    probe = ROOT / "tests" / "_probe_public_api.py"
    probe.write_text(
        "import lamm.model\n"
        "import lamm.model as m\n"
        "from lamm import model as mm\n"
        "from lamm.model import _positions, MultimodalLM\n"
        "from lamm.build import (\n    build_model,\n    _plain,\n)\n"
        "x = lamm.model._positions\n"
        "y = m._last_index\n"
        "z = mm._pick\n"
        "ok = lamm.model.MultimodalLM\n"
        "from tests.test_public_api import _is_private\n"  # tests' own privates: same unit
    )
    try:
        found = [d for _, d in violations_in(probe)]
    finally:
        probe.unlink()
    assert sorted(found) == sorted(["lamm.model._positions", "lamm.build._plain", "lamm.model._positions",
                                    "lamm.model._last_index", "lamm.model._pick"])


def test_units() -> None:
    assert _unit("lamm.model") == _unit("lamm.build") == "lamm"
    assert _unit("lamm.fusion.prefix") == "lamm.fusion"
    assert _unit("lamm.datasets.formats.lamm") == "lamm.datasets"
    assert _unit("tests.test_model") == "tests"
