"""The package's layers import one way: plugin -> session -> gate -> evaluate, session -> build, all -> infra."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_quant

PACKAGE = Path(pytest_quant.__file__).parent
# What each layer may import besides itself. gate sits above evaluate: a gate reads the evaluation's per-item values
# and the task's metric direction (evaluate/tasks.py); build and evaluate share nothing but infra.
ALLOWED = {
    "infra": set(),
    "build": {"infra"},
    "evaluate": {"infra"},
    "gate": {"evaluate", "infra"},
    "session": {"gate", "evaluate", "build", "infra"},
    "plugin": {"session", "gate", "evaluate", "build", "infra"},
    "suite": {"plugin", "session", "gate", "evaluate", "build", "infra"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every pytest_quant import in ``path``, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}:{node.lineno}: a relative import"
        found += [(node.lineno, n) for n in names if n.startswith("pytest_quant.")]
    return found


def layer_of(module: str) -> str | None:
    part = module.split(".")[1]
    return part if part in ALLOWED else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path: Path) -> None:
    here = path.relative_to(PACKAGE).parts[0]
    for line, module in imports(path):
        there = layer_of(module)
        if there is None and module.split(".")[1] in pytest_quant.MOVED:
            pytest.fail(f"{path.name}:{line} imports {module}, a path of before the layers")
        if there is not None and there != here:
            assert there in ALLOWED[here], f"{here}/{path.name}:{line} imports {module}: {here} may not import {there}"


def test_every_module_is_in_a_layer() -> None:
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py"}
    assert {p.relative_to(PACKAGE).parts[0] for p in MODULES} == set(ALLOWED)


def test_every_package_is_a_regular_package_in_git() -> None:
    """Each folder of modules has its __init__.py, tracked: a fresh clone without one (a .gitignore pattern once
    hid build/__init__.py) makes a namespace package that hands out none of the old names and that setuptools'
    find does not install."""
    folders = {p.parent for p in MODULES if p.parent != PACKAGE}
    git = subprocess.run(["git", "ls-files", "--", str(PACKAGE)], capture_output=True, text=True,
                         cwd=PACKAGE.parent, timeout=60)
    if git.returncode != 0 or not git.stdout.strip():
        pytest.skip(f"{PACKAGE} is not in a git checkout")
    tracked = git.stdout.split()
    for folder in folders:
        assert str((folder / "__init__.py").relative_to(PACKAGE.parent)) in tracked, folder


def test_old_module_paths_are_the_new_modules() -> None:
    """In a process of its own: build/batching.py imports torch, which this tier does not."""
    code = ("import importlib, pytest_quant\n"
            "for old, new in pytest_quant.MOVED.items():\n"
            "    assert importlib.import_module(f'pytest_quant.{old}') is importlib.import_module(f'pytest_quant.{new}'), old\n"
            "from pytest_quant.build import build_checkpoint, Checkpoint\n"
            "from pytest_quant.build.checkpoint import build_checkpoint as b, Checkpoint as c\n"
            "assert (build_checkpoint, Checkpoint) == (b, c)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]

def test_the_unit_tier_imports_no_torch() -> None:
    """tests/unit runs without torch, transformers, llm-compressor or vLLM imported (in a fresh process; the test of
    the old module paths imports torch in a process of its own, so it is left out here)."""
    code = ("import sys, pytest\n"
            "code = pytest.main(['tests/unit', '-q', '-p', 'no:cacheprovider', '-p', 'no:xdist', '-p', 'no:randomly',\n"
            "                    '-k', 'not imports_no_torch and not old_module_paths'])\n"
            "heavy = [m for m in ('torch', 'transformers', 'llmcompressor', 'vllm') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n"
            "sys.exit(code or 3 * bool(heavy))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "HEAVY []" in p.stdout
