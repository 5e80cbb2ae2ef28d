"""README.md's commands and snippets, run in README order with small settings (issue 21).

The rules and the block parser are in tests/readme_blocks.py; SUBST below is the substitution
table. The training command trains on a generated CSV with configs/smoke.yaml and a few epochs,
`tandem serve` runs in the background on ephemeral ports, `tandem publish` and the device
snippet talk to it, and the compose command is checked against docker-compose.yml. Commands run
as `python -m tandemrec.cli` from the repository root, as `tandem` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tandemrec.data import write_synthetic_csv
from tandemrec.paths import REPO_ROOT
from tests.readme_blocks import Step, steps

pytestmark = pytest.mark.integration

FAST = ["teacher.max_epochs=2", "teacher.coarse_epochs=1", "student.max_epochs=2",
        "compress.align_steps=2", "compress.finetune_epochs=1", "eval.latency_requests=2",
        "eval.n_retrieve=20", "eval.n_candidates=20"]
TIMEOUT_S = 600


def subst(command: str, tmp: Path, http_url: str | None) -> list[str]:
    """The README command as it runs here (the substitution table)."""
    table = {
        "tandem": [sys.executable, "-m", "tandemrec.cli"],
        "path/to/events.csv": [str(tmp / "events.csv")],
        "configs/ml-1m.yaml": ["configs/smoke.yaml",
                               *[a for s in FAST for a in ("--set", s)]],
        "http://127.0.0.1:8000": [http_url or "no-server-yet"],
    }
    out: list[str] = []
    for token in command.split(" "):
        if token in table:
            out += table[token]
        elif token.startswith("artifacts/"):
            out.append(str(tmp / token))
        else:
            out.append(token)
    return out


@contextlib.contextmanager
def background(cmd: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen, str]]:
    """`tandem serve`, until its start-up line; terminated (SIGTERM) on exit."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("tandem cloud:"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while not ready.wait(0.5):
            assert proc.poll() is None, "tandem serve exited:\n" + "".join(lines)
            assert time.monotonic() < deadline, "tandem serve never started:\n" + "".join(lines)
        yield proc, next(s for s in lines if s.startswith("tandem cloud:"))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(cmd: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def run_device_snippet(code: str, workdir: Path, bundle: Path, grpc: str) -> dict[str, Any]:
    assert code.count('"cloud:50051"') == 1, "the device snippet changed shape"
    code = code.replace('"cloud:50051"', f'"{grpc}"')
    (workdir / "bundle").symlink_to(bundle, target_is_directory=True)
    ns: dict[str, Any] = {"__name__": "readme_device_snippet"}
    with contextlib.chdir(workdir):
        exec(compile(code, "README.md:device-snippet", "exec"), ns)  # noqa: S102
    return ns


def check_compose(command: str) -> None:
    """The compose command sets what docker-compose.yml requires; the bundle is the README's."""
    compose_text = (REPO_ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(compose_text)
    required = set(re.findall(r"\$\{([A-Z_]+):\?", compose_text))
    given = set(re.findall(r"([A-Z_]+)=", command))
    assert required == given, (required, given)
    bundles = {s.get("environment", {}).get("TANDEM_CLOUD_BUNDLE")
               for s in compose["services"].values()} - {None}
    assert bundles == {"/artifacts/ml-100k/bundle"}, bundles
    assert "`artifacts/ml-100k/bundle`" in (REPO_ROOT / "README.md").read_text()


def test_every_readme_command_and_snippet_runs(tmp_path: Path) -> None:
    plan = steps()
    # 60 items: the device snippet records item 42, which the catalog must hold.
    write_synthetic_csv(tmp_path / "events.csv", n_users=100, n_items=60, min_len=6, max_len=15,
                        seed=5)
    env = {**os.environ, "TANDEM_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "TANDEM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done: list[str] = []
    with contextlib.ExitStack() as stack:
        http_url: str | None = None
        grpc: str | None = None
        bundle: Path | None = None
        for step in plan:
            done.append(step.rule)
            if step.rule == "make":
                continue  # tests/unit/test_readme_docs.py checks their place
            if step.rule == "export":
                for pair in step.command.split(" ")[1:]:
                    name, value = pair.split("=", 1)
                    env[name] = value
            elif step.rule == "compose":
                check_compose(step.command)
            elif step.rule == "serve":
                _, line = stack.enter_context(background(
                    [*subst(step.command, tmp_path, None), "--host", "127.0.0.1",
                     "--http-port", "0", "--grpc-port", "0"], env))
                grpc = re.search(r"gRPC (\S+:\d+),", line).group(1)  # type: ignore[union-attr]
                http_url = re.search(r"HTTP (http://\S+:\d+)", line).group(1)  # type: ignore[union-attr]
            elif step.rule == "device-snippet":
                assert grpc is not None and bundle is not None, "the snippet needs serve first"
                _run_snippet(step, tmp_path, bundle, grpc)
            else:
                assert step.rule in {"data", "help", "pipeline", "publish"}, step.rule
                if step.rule == "publish":
                    assert http_url is not None, "publish needs serve before it in the README"
                cmd = subst(step.command, tmp_path, http_url)
                out = run(cmd, env)
                if step.rule == "pipeline":
                    run_dir = Path(cmd[cmd.index("--run-dir") + 1])
                    bundle = run_dir / "bundle"
                    assert (bundle / "device").is_dir() and (bundle / "cloud").is_dir()
                    assert list((run_dir / "results").glob("quality-*.json")), \
                        "results belong under the run directory"
                if step.rule == "publish":
                    assert '"current"' in out or "current" in out, out
    assert {"pipeline", "serve", "publish", "device-snippet", "compose"} <= set(done), done


def _run_snippet(step: Step, tmp: Path, bundle: Path, grpc: str) -> None:
    workdir = tmp / "device"
    workdir.mkdir()
    ns = run_device_snippet(step.code, workdir, bundle, grpc)
    result = ns["result"]
    assert len(result.items) == 10 == len(set(result.items)), result
    # The snippet's 150 ms may end in the fallback on a loaded machine; with time, the cloud.
    from edge_client.settings import EdgeSettings

    ns["client"].s = EdgeSettings(deadline_ms=10_000)
    again = asyncio.run(ns["client"].recommend(k=10))
    assert again.served_by == "cloud", again.reason
