"""The folder boundaries of docs/architecture.md, checked over every import statement in the source.

Every `import` / `from ... import` anywhere in a module counts, including the lazy ones inside
functions, and so does `importlib.import_module("literal")`. Folders are named by their installed
package (encoders/ installs as lamm.encoders, see pyproject.toml). scripts/ and tests/ may import anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# source folder -> installed package (pyproject.toml [tool.setuptools.package-dir])
PACKAGE_OF_FOLDER = {"lamm": "lamm", "encoders": "lamm.encoders", "projectors": "lamm.projectors",
                     "datasets": "lamm.datasets", "benchmarks": "lamm.benchmarks"}
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")
SERVING = ("gradio", "fastapi", "uvicorn", "starlette")  # the `serve` extra: only lamm.serve may import it
# Which of lamm's other folders each folder may import. lamm's top-level modules (registry, batch,
# tokens, model, ...) are governed by FORBIDDEN alone.
MAY_IMPORT = {
    "lamm.encoders": set(),
    "lamm.projectors": set(),
    "lamm.fusion": set(),
    "lamm.llm": set(),
    "lamm.datasets": set(),
    "lamm.benchmarks": {"lamm.datasets", "lamm.training"},  # training: export.load_for_inference rebuilds a run
    "lamm.recipes": {"lamm.benchmarks"},                     # validate checks benchmark recipes' parts
    "lamm.training": {"lamm.datasets", "lamm.benchmarks", "lamm.recipes", "lamm.zoo"},  # zoo: imported runs
    "lamm.zoo": {"lamm.training", "lamm.llm", "lamm.fusion", "lamm.encoders", "lamm.projectors"},
    "lamm.chat": {"lamm.datasets", "lamm.benchmarks", "lamm.training"},
    "lamm.serve": {"lamm.chat", "lamm.cli", "lamm.datasets", "lamm.encoders"},  # cli: split_source, run_guarded
    "lamm.cli": {"lamm.datasets", "lamm.benchmarks", "lamm.training", "lamm.recipes", "lamm.chat", "lamm.llm",
                 "lamm.fusion", "lamm.encoders", "lamm.projectors", "lamm.zoo"},
}
MODEL_CODE = ("lamm.model", "lamm.build", "lamm.fusion", "lamm.llm", "lamm.encoders", "lamm.projectors")
# (importers, modules they must never import, why); a name matches itself and everything below it
FORBIDDEN: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("lamm.encoders", "lamm.projectors"),
     ("lamm.datasets", "lamm.benchmarks", "lamm.training", "lamm.cli", "lamm.chat", "lamm.recipes", "lamm.model",
      "lamm.build", "lamm.fusion", "lamm.llm", "lamm.config", *LIGHTNING),
     "encoders and projectors import only lamm's core contracts and registry"),
    (("lamm.datasets",), ("lamm.benchmarks", "lamm.training", "lamm.cli", "lamm.chat", *LIGHTNING),
     "data code never imports evaluation, training or Lightning"),
    (("lamm.zoo",), LIGHTNING, "importing or exporting a checkpoint needs no trainer"),
    (MODEL_CODE, (*LIGHTNING, "lamm.training", "lamm.cli", "lamm.benchmarks", "lamm.chat"),
     "model code imports no Lightning and nothing that uses the model"),
]


def module_of(path: Path, root: Path) -> str:
    """Installed module name of a source file, e.g. encoders/small_cnn.py -> lamm.encoders.small_cnn."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE_OF_FOLDER[parts[0]], *parts[1:]])


def imported_modules(path: Path, root: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file, relative ones resolved, lazy ones included."""
    module = module_of(path, root)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((target, node.lineno))
            if node.module is None:  # `from . import x`: x is a submodule
                found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None) == "__import__")):
            found.append((node.args[0].value, node.lineno))
    return sorted(found, key=lambda item: item[1])


def unit_of(module: str) -> str:
    """The folder a module belongs to: lamm.<sub> for lamm's subpackages and top-level modules, else its top name."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "lamm" and len(parts) > 1 else parts[0]


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    """One line per import that breaks a rule above: `file:line: importer imports module (why)`."""
    bad = []
    for folder in PACKAGE_OF_FOLDER:
        for path in sorted((root / folder).rglob("*.py")):
            src = module_of(path, root)
            for target, line in imported_modules(path, root):
                where = f"{path.relative_to(root)}:{line}: {src} imports {target}"
                for importers, forbidden, why in FORBIDDEN:
                    if any(within(src, i) for i in importers) and any(within(target, f) for f in forbidden):
                        bad.append(f"{where} ({why})")
                here, there = unit_of(src), unit_of(target)
                if here in MAY_IMPORT and there in MAY_IMPORT and there != here and there not in MAY_IMPORT[here]:
                    bad.append(f"{where} ({here} may import {sorted(MAY_IMPORT[here]) or 'no other folder'})")
                if any(within(target, lib) for lib in LIGHTNING) and here not in ("lamm.training", "lamm.cli"):
                    bad.append(f"{where} (Lightning stays in lamm.training and lamm.cli)")
                if any(within(target, lib) for lib in SERVING) and here != "lamm.serve":
                    bad.append(f"{where} (the serve extra is imported by lamm.serve only: the core install stays lean)")
    return bad


def test_lamm_keeps_its_folder_boundaries() -> None:
    bad = violations(REPO)
    assert not bad, "imports crossing a boundary of docs/architecture.md:\n" + "\n".join(bad)


def test_the_check_catches_lazy_relative_and_dynamic_imports(tmp_path: Path) -> None:
    """A planted encoder, data module and fusion with one violation each kind; every one is reported."""
    (tmp_path / "encoders").mkdir()
    (tmp_path / "encoders" / "bad.py").write_text(
        "from .base import Encoder\n"
        "def f():\n    import lightning as L\n    from lamm.datasets.sample import Sample\n"
        "importlib.import_module('lamm.benchmarks.base')\n")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "leak.py").write_text("from lamm.benchmarks import scenarios\n")
    (tmp_path / "lamm" / "fusion").mkdir(parents=True)
    (tmp_path / "lamm" / "fusion" / "loud.py").write_text("def g():\n    from lightning.pytorch import Trainer\n")
    assert imported_modules(tmp_path / "encoders" / "bad.py", tmp_path) == [
        ("lamm.encoders.base", 1), ("lightning", 3), ("lamm.datasets.sample", 4), ("lamm.benchmarks.base", 5)]
    found = {line.split(" (")[0] for line in violations(tmp_path)}
    assert found == {
        "encoders/bad.py:3: lamm.encoders.bad imports lightning",
        "encoders/bad.py:4: lamm.encoders.bad imports lamm.datasets.sample",
        "encoders/bad.py:5: lamm.encoders.bad imports lamm.benchmarks.base",
        "datasets/leak.py:1: lamm.datasets.leak imports lamm.benchmarks",
        "lamm/fusion/loud.py:2: lamm.fusion.loud imports lightning.pytorch",
    }


def test_every_folder_has_a_rule_and_a_description() -> None:
    """A new lamm subpackage gets its line in MAY_IMPORT and its entry in docs/architecture.md."""
    subpackages = {unit_of(module_of(p, REPO)) for folder in PACKAGE_OF_FOLDER
                   for p in (REPO / folder).rglob("__init__.py")} - {"lamm", "lamm.conf"}
    assert subpackages <= MAY_IMPORT.keys(), sorted(subpackages - MAY_IMPORT.keys())
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [unit for unit in MAY_IMPORT if f"`{unit}`" not in doc]
    assert not missing, f"docs/architecture.md does not describe {missing}"
