"""The edge SDK must import and run on devices that have no torch (ONNX Runtime + numpy only).

It imports the shared contract (tandem_contract) and nothing else of the project, and neither
torch nor the CLI's packages (typer, rich, yaml): `pip install tandemrec[edge]` brings none of
them (tests/integration/test_edge_venv.py installs it in an isolated venv and runs these tests).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
EDGE_DIR = REPO_ROOT / "edge_client"
CONTRACT_DIR = REPO_ROOT / "tandem_contract"
# Training-side code drags torch in; transformers does too, so it is banned on devices as well;
# the CLI's packages are not installed on devices, and the cloud is not the device's business.
FORBIDDEN = ("torch", "transformers", "tandemrec", "cloud_service", "typer", "rich", "yaml")

_IMPORT_ALL = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    FORBIDDEN = {forbidden!r}

    def _blocked(name):
        return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)

    class _Block(importlib.abc.MetaPathFinder):
        # Acts as if these packages were not installed at all.
        def find_spec(self, name, path=None, target=None):
            if _blocked(name):
                raise ModuleNotFoundError(f"blocked on edge: {{name}}", name=name)
            return None

    for mod in [m for m in sys.modules if _blocked(m)]:
        del sys.modules[mod]
    sys.meta_path.insert(0, _Block())

    def _raise(name):
        raise ImportError(f"cannot import {{name}}")

    import edge_client, tandem_contract
    names = [
        m.name
        for pkg in (edge_client, tandem_contract)
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".", onerror=_raise)
    ]
    for name in names:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if _blocked(m))
    assert not leaked, leaked
    """
).format(forbidden=FORBIDDEN)


def _is_forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_edge_client_imports_without_torch() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def _forbidden_imports(path: Path) -> list[str]:
    """Human-readable 'file:line: import' entries for every torch/training import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tandemrec import train` names the subpackage in the alias list.
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            modules = [node.args[0].value]
        bad = [m for m in modules if _is_forbidden(m)]
        if bad:
            found.append(f"{path}:{getattr(node, 'lineno', 0)}: {bad[0]}")
    return found


def test_edge_client_has_no_torch_imports_in_source() -> None:
    files = sorted([*EDGE_DIR.rglob("*.py"), *CONTRACT_DIR.rglob("*.py")])
    assert EDGE_DIR / "__init__.py" in files and CONTRACT_DIR / "__init__.py" in files
    offenders = [hit for f in files for hit in _forbidden_imports(f)]
    assert not offenders, (
        "edge_client and tandem_contract must not import torch, tandemrec, the cloud or the "
        "CLI's packages:\n" + "\n".join(offenders)
    )


def test_scanner_catches_forbidden_imports(tmp_path: Path) -> None:
    src = tmp_path / "bad.py"
    src.write_text(
        "import numpy\nimport torch.nn\nfrom tandemrec import models\n"
        "from tandemrec.train.loop import fit\nimport importlib\nimportlib.import_module('torch')\n"
        "from tandemrec.eval import metrics\n"
    )
    lines = sorted(int(h.split(":")[-2]) for h in _forbidden_imports(src))
    assert lines == [2, 3, 4, 6, 7]
