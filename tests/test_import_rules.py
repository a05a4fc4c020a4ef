"""The package's layering, read from its source (every import statement, top-level or inside a function):

- ``models/``, ``flow/`` and ``kernels/`` (speed paths swapped into a built model) are plain PyTorch: no
  Lightning, no data pipeline, no callbacks or stages; they share the packed-batch contract
  (``jf_lightning.batch``) with ``data/``;
- ``metrics/`` holds pure scoring functions: it imports nothing else of the package;
- only ``stages/``, ``callbacks/``, ``parallel/``, ``data/datamodule.py`` and ``cli.py`` import Lightning;
- the core never imports the shapes world (``jf_lightning/shapes/``), which plugs in from configs;
- nothing imports the CLI but the ``python -m jf_lightning`` entry point;
- no module reaches round these rules with ``importlib`` or ``__import__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jf_lightning"
LIGHTNING_USERS = ("stages/", "callbacks/", "parallel/", "data/datamodule.py", "cli.py")
PLAIN_TORCH = {"models/": ("models", "batch"), "flow/": ("flow", "models", "batch"), "kernels/": ("kernels", "models")}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def package_imports(path: Path) -> set[str]:
    """The subpackage or top-level module of jf_lightning each import names: ``models``, ``batch``, ..."""
    return {n.split(".")[1] for n in imported(path) if n.startswith("jf_lightning.") and n.count(".") >= 1}


def uses_lightning(path: Path) -> bool:
    return any(n == "lightning" or n.startswith(("lightning.", "pytorch_lightning")) for n in imported(path))


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_layering(path):
    name = rel(path)
    inside = package_imports(path)
    for prefix, allowed in PLAIN_TORCH.items():
        if name.startswith(prefix):
            assert not uses_lightning(path), f"{name} is plain PyTorch: it must not import Lightning"
            assert inside <= set(allowed), f"{name} imports jf_lightning.{sorted(inside - set(allowed))}"
    if name.startswith("metrics/"):
        assert inside <= {"metrics"}, f"{name}: metrics are pure scoring functions, not {sorted(inside)}"
    if not name.startswith(LIGHTNING_USERS):
        assert not uses_lightning(path), f"{name} imports Lightning; only {LIGHTNING_USERS} may"
    if not name.startswith("shapes/"):
        assert "shapes" not in inside, f"{name} is core and imports the shapes world"
    if name != "__main__.py":
        assert "cli" not in inside, f"{name} imports the CLI"


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_no_dynamic_imports(path):
    tree = ast.parse(path.read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "importlib" not in imported(path) and "__import__" not in names, rel(path)


def test_the_rules_see_what_they_forbid(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from jf_lightning.shapes.world import Scene\n    import lightning.pytorch as pl\n")
    assert package_imports(bad) == {"shapes"} and uses_lightning(bad)


def test_no_module_is_over_400_lines():
    long = {rel(p): n for p in modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
