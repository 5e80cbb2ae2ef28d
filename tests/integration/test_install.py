"""Installable anywhere (issue 21, items 3 and 6): the wheel, and fresh venvs outside the checkout.

- Always: a wheel built from the working tree ships the configs and the contract, and its
  metadata gives the device SDK (the ``edge`` extra) no torch, typer, rich or pyyaml.
- Opt-in (``TANDEM_VENV_TESTS=1``, or ``make test-install``; each venv installs from the package
  index, a minute or more with a cold pip cache):
  - an edge-only venv on Python 3.10 and 3.13 holds no torch, typer, rich or yaml, imports the
    SDK from site-packages, and passes the SDK's tests;
  - a venv with the ``cli`` extra runs ``tandem --help`` and ``tandem data`` from another
    directory and finds the shipped configs inside site-packages.

A missing interpreter skips its case with the reason; nothing here writes into the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tandemrec.paths import CONFIGS_DIR, REPO_ROOT

pytestmark = pytest.mark.integration

VENV_TESTS = os.environ.get("TANDEM_VENV_TESTS") == "1"
needs_venv_opt_in = pytest.mark.skipif(
    not VENV_TESTS, reason="installs into fresh venvs from the package index: set "
                           "TANDEM_VENV_TESTS=1 (make test-install)")
# What a device must never get from `pip install tandemrec[edge]` (import name: dist name).
NOT_ON_DEVICE = {"torch": "torch", "typer": "typer", "rich": "rich", "yaml": "pyyaml"}
# The SDK's own tests, run with the edge venv's python (they need no cloud, torch or CLI).
SDK_TESTS = ["tests/unit/test_edge_local_store.py", "tests/unit/test_edge_no_torch.py",
             "tests/unit/test_edge_request.py", "tests/unit/test_edge_resilience.py",
             "tests/unit/test_edge_updates.py", "tests/unit/test_fusion.py"]
INSTALL_TIMEOUT_S = 900


def _source_copy(dest: Path) -> Path:
    """The files a clean clone would hold (tracked, plus untracked ones git does not ignore)."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _setuptools_major() -> int:
    try:
        return int(metadata.version("setuptools").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 0


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the working tree, built from a copy (the checkout gets no build/ directory)."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone would hold")
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    # Without build isolation when this venv's setuptools can build it (no index needed);
    # a fresh 3.11 venv may hold an older one, and then pip fetches the build backend.
    flags = ["--no-build-isolation"] if _setuptools_major() >= 77 else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *flags, "-w",
                    str(out), str(src)], check=True, capture_output=True, text=True, timeout=600)
    (whl,) = out.glob("tandemrec-*.whl")
    return whl


def _requires(whl: Path) -> list[str]:
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def _closure(requires: list[str], extras: set[str]) -> set[str]:
    """Distribution names `pip install tandemrec[extras]` asks for (self-references followed)."""
    wanted, seen, names = {"", *extras}, set(), set()  # "": the base dependencies
    while wanted - seen:
        extra = (wanted - seen).pop()
        seen.add(extra)
        for req in requires:
            spec, _, marker = req.partition(";")
            m = re.search(r'extra\s*==\s*"([^"]+)"', marker)
            if (m.group(1) if m else "") != extra:
                continue
            name = re.split(r"[\s\[<>=!~;(]", spec.strip(), maxsplit=1)[0].lower()
            inner = re.search(r"\[([^\]]+)\]", spec)
            if name == "tandemrec" and inner:
                wanted |= {e.strip() for e in inner.group(1).split(",")}
            else:
                names.add(name.replace("_", "-"))
    return names


def test_wheel_ships_configs_and_contract(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    shipped = {p.name for p in CONFIGS_DIR.glob("*.yaml")}
    assert shipped and {f"tandemrec/configs/{n}" for n in shipped} <= names
    for pkg in ("tandem_contract", "tandemrec", "edge_client", "cloud_service", "tandem_wire"):
        assert f"{pkg}/__init__.py" in names
    assert not any(n.startswith(("tests/", "configs/", "bench/")) for n in names)


def test_wheel_metadata_keeps_the_sdk_light(wheel: Path) -> None:
    requires = _requires(wheel)
    edge, base = _closure(requires, {"edge"}), _closure(requires, set())
    assert "onnxruntime" in edge and "numpy" in base
    assert not edge & set(NOT_ON_DEVICE.values()), edge
    # The command line still comes with the extras its users install.
    for extra in ("cli", "train", "cloud"):
        assert {"typer", "rich", "pyyaml"} <= _closure(requires, {extra}), extra
    assert "torch" in _closure(requires, {"train"})


def _python(version: str) -> str | None:
    """An interpreter of that version: on PATH, or under pyenv."""
    found = shutil.which(f"python{version}")
    if found and subprocess.run([found, "-c", "pass"], capture_output=True).returncode == 0:
        return found
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for cand in sorted(pyenv.glob(f"{version}.*"), reverse=True):
        if (cand / "bin" / "python").is_file():
            return str(cand / "bin" / "python")
    return None


def _venv(tmp: Path, version: str) -> Path:
    """A fresh venv outside the checkout; its python."""
    python = _python(version)
    if python is None:
        pytest.skip(f"Python {version} is not installed (PATH or pyenv)")
    subprocess.run([python, "-m", "venv", str(tmp / "venv")], check=True, timeout=300)
    return tmp / "venv" / "bin" / "python"


def _run(args: list[str], cwd: Path, timeout: float = 600, **env: str) -> str:
    """stdout and stderr of a command that must succeed (the CLI's tables go to stderr)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**clean, **env})
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture
def away(tmp_path: Path) -> Path:
    """A working directory outside the checkout."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    return d


@needs_venv_opt_in
@pytest.mark.parametrize("version", ["3.10", "3.13"])
def test_edge_only_venv(version: str, wheel: Path, tmp_path: Path, away: Path) -> None:
    py = _venv(tmp_path, version)
    _run([str(py), "-m", "pip", "install", "-q", f"{wheel}[edge]", "pytest"], away,
         timeout=INSTALL_TIMEOUT_S)
    probe = (
        "import importlib, importlib.util, pkgutil, sys\n"
        f"absent = [m for m in {sorted(NOT_ON_DEVICE)!r} if importlib.util.find_spec(m)]\n"
        "assert not absent, f'installed on the device: {absent}'\n"
        "import edge_client, tandem_contract\n"
        "for pkg in (edge_client, tandem_contract):\n"
        "    assert pkg.__file__.startswith(sys.prefix), pkg.__file__\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'tandemrec', 'cloud_service', 'typer', 'rich', 'yaml'))\n"
        "assert not leaked, leaked\n"
        "print(sys.version.split()[0])\n"
    )
    assert _run([str(py), "-c", probe], away).strip().startswith(version)
    for module in NOT_ON_DEVICE:
        proc = subprocess.run([str(py), "-c", f"import {module}"], cwd=away, capture_output=True)
        assert proc.returncode != 0, f"import {module} worked in the edge venv"
    # The SDK's tests, from the checkout, with nothing but the edge extra and pytest installed.
    out = _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *SDK_TESTS],
               REPO_ROOT, timeout=900)
    assert " passed" in out and " failed" not in out, out[-2000:]
    print(f"edge-only venv, Python {version}: {out.strip().splitlines()[-1]}")  # shown by -rP


@needs_venv_opt_in
def test_cli_from_a_wheel_runs_anywhere(wheel: Path, tmp_path: Path, away: Path) -> None:
    py = _venv(tmp_path, f"{sys.version_info.major}.{sys.version_info.minor}")
    _run([str(py), "-m", "pip", "install", "-q", f"{wheel}[cli]"], away,
         timeout=INSTALL_TIMEOUT_S)
    tandem = str(py.parent / "tandem")
    assert "pipeline" in _run([tandem, "--help"], away)
    assert "--data-dir" in _run([tandem, "data", "--help"], away)
    assert "ml-100k" in _run([tandem, "data"], away, TANDEM_DATA_DIR=str(away), COLUMNS="200")
    where = _run([str(py), "-c",
                  "import sys; from tandemrec.paths import artifacts_dir, config_path; "
                  "p = config_path('configs/ml-1m.yaml'); "
                  "assert p.is_file() and str(p).startswith(sys.prefix), p; "
                  "print(artifacts_dir())"], away)
    assert Path(where.strip()) == away / "artifacts"
