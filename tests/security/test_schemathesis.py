"""A bounded schemathesis run over every HTTP operation, with and without credentials."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from cloud_service.server import replica_in_thread as live_replica
from cloud_service.settings import CloudSettings

pytestmark = [pytest.mark.security, pytest.mark.integration]
CREDENTIALS = ["x-api-key: device-key", "x-admin-key: admin-key"]


def _schemathesis() -> str:
    path = Path(sys.executable).parent / "schemathesis"
    return str(path) if path.exists() else (shutil.which("schemathesis") or "schemathesis")


@pytest.mark.parametrize("headers", [CREDENTIALS, []], ids=["credentials", "anonymous"])
def test_every_operation_passes_the_default_checks(bundle, tmp_path, headers):
    settings = CloudSettings(bundle=str(bundle), http_port=0, grpc_port=0, n_retrieve=40,
                             device_api_keys=[SecretStr("device-key")],
                             admin_api_key=SecretStr("admin-key"), rate_burst=10**6,
                             key_rate_burst=10**6, cache_ttl_s=0)
    with live_replica(settings) as r:
        started = time.monotonic()
        out = subprocess.run(
            [_schemathesis(), "run", f"http://127.0.0.1:{r.http_port}/openapi.json",
             "--max-examples", "20", "--seed", "1", "--no-color",
             "--phases", "examples,coverage,fuzzing",
             # Valid-looking data the service must refuse: intent tokens beyond the loaded
             # model's vocabulary, weights of another length, bundles outside the publish
             # root. OpenAPI cannot say these; every other default check runs.
             "--exclude-checks", "positive_data_acceptance",
             *[arg for h in headers for arg in ("-H", h)]],
            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "Selected: 11/11" in out.stdout  # every operation, /metrics included
    assert time.monotonic() - started < 60
