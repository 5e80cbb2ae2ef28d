"""One collaborative function: the SDK against a real cloud ranks as the offline evaluation does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from cloud_service.server import replica_in_thread
from cloud_service.settings import CloudSettings
from edge_client.client import EdgeClient, EdgeModel, MemoryDeviceStore
from edge_client.settings import EdgeSettings
from edge_client.transport import GrpcTransport, HttpTransport
from tandem_contract.fusion import (
    CloudCandidates,
    FusionConfig,
    device_log_probs,
    fuse,
    intent_log_probs,
)
from tandemrec.eval.modes import Evaluator
from tandemrec.eval.report import load_models
from tandemrec.pipeline import open_run
from tandemrec.train.config import load_config

pytestmark = pytest.mark.integration
USERS = 40


def offline_rankings(bundle: Path, model: EdgeModel) -> tuple[list[np.ndarray], list[list[int]]]:
    """The evaluation's own path (device chunk, cloud chunk, fuse) for the first test users."""
    run = bundle.parent
    ctx = open_run(load_config(run / "config.json"), run)
    models = load_models(ctx)
    sp = ctx.split
    ev = Evaluator(models, sp.test_input[:USERS], sp.test_target[:USERS], ctx.cfg.eval,
                   device_inputs=ctx.device_split.test_input[:USERS])
    fusion = FusionConfig.from_serving(model.serving)
    logits, scores = ev.device_chunk("student_int8", slice(0, USERS))
    answers = ev.cloud_chunk(slice(0, USERS), logits)
    out = []
    for u, a in enumerate(answers):
        wire = CloudCandidates(a.items, a.logp.astype(np.float32).astype(np.float64), a.intents,
                               a.catalog_size)  # the scores travel as float32
        items, _ = fuse(device_log_probs(scores[u], ev.view), intent_log_probs(logits[u]),
                        ev.view, wire, fusion, exclude=sp.test_input[u])
        out.append(items[:10].tolist())
    return sp.test_input[:USERS], out


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_ranks_exactly_as_the_evaluation(bundle: Path, transport: str) -> None:
    model = EdgeModel.load(bundle)
    histories, expected = offline_rankings(bundle, model)
    s = CloudSettings(bundle=str(bundle), http_port=0, grpc_port=0, cache_ttl_s=0,
                      device_api_keys=[SecretStr("k")], key_rate_burst=10**9,
                      key_rate_per_s=10**9,
                      batching=False)
    with replica_in_thread(s) as r:
        async def go() -> list[list[int]]:
            t = (GrpcTransport(f"127.0.0.1:{r.grpc_port}", api_key="k") if transport == "grpc"
                 else HttpTransport(f"http://127.0.0.1:{r.http_port}", api_key="k"))
            got = []
            try:
                for u, h in enumerate(histories):
                    client = EdgeClient(model, MemoryDeviceStore(h), f"parity-{u}", t,
                                        EdgeSettings(deadline_ms=10_000))
                    res = await client.recommend(10)
                    assert res.served_by == "cloud", res.reason
                    got.append(list(res.items))
            finally:
                await t.close()
            return got
        got = asyncio.run(go())
    assert got == expected
