"""The deployment files and the HTTP contract: compose validates, schemathesis finds no 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from cloud_service.server import replica_in_thread as live_replica
from cloud_service.settings import CloudSettings
from tandemrec.paths import REPO_ROOT

pytestmark = pytest.mark.integration


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def test_docker_compose_file_is_valid_compose_spec():
    out = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                          str(REPO_ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    for service in ("redis:", "cloud-1:", "cloud-2:", "fleet:"):
        assert service in text


def test_schemathesis_finds_no_server_error(bundle, tmp_path):
    settings = CloudSettings(bundle=str(bundle), http_port=0, grpc_port=0, n_retrieve=40,
                             device_api_keys=[SecretStr("device-key")],
                             admin_api_key=SecretStr("admin-key"), key_rate_burst=100000)
    with live_replica(settings) as r:
        base = f"http://127.0.0.1:{r.http_port}"
        out = subprocess.run(
            [_tool("schemathesis"), "run", f"{base}/openapi.json", "--checks",
             "not_a_server_error", "--max-examples", "40", "--seed", "1", "--no-color",
             "-H", "x-api-key: device-key", "--phases", "examples,coverage,fuzzing"],
            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
