"""The semantic-id student served end to end: its pair in the real cloud, the SDK over gRPC and
HTTP, and the same collaborative ranking as the offline evaluation's."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from cloud_service.server import Running, replica_in_thread
from cloud_service.settings import CloudSettings
from edge_client.client import EdgeClient, EdgeModel, MemoryDeviceStore
from edge_client.settings import EdgeSettings
from edge_client.transport import GrpcTransport, HttpTransport, Transport
from tandem_contract.bundle import pair_dirs, verify_pair
from tandem_contract.fusion import CloudCandidates, FusionConfig, fuse, intent_log_probs
from tandemrec.checkpoints import load_sid_student
from tandemrec.eval.report import load_models
from tandemrec.eval.sid_modes import SidEvaluator
from tandemrec.pipeline import open_run
from tandemrec.pipeline_sid import SID_CKPT, SID_INT8, spec_of
from tandemrec.train.config import load_config
from tandemrec.train.distill_sid import sid_catalog
from tests.bundles import with_device_new

pytestmark = pytest.mark.integration
USERS = 30


def codebook(pair: Path) -> np.ndarray:
    """(N+1, L) every item's semantic id, as the cloud holds them."""
    return np.asarray(json.loads((pair_dirs(pair).cloud / "codebook.json").read_text())["codes"])


def offline_rankings(run: Path, model: EdgeModel,
                     new: np.ndarray | None = None) -> tuple[list[np.ndarray], list[list[int]]]:
    """The sid evaluation's own path (pools, device chunk, cloud chunk, device_side, fuse) for
    the first test users of `run`; `new`: items newer than the device's model (flagged)."""
    ctx = open_run(load_config(run / "config.json"), run)
    models = load_models(ctx)
    student, _ = load_sid_student(ctx.path(SID_CKPT))
    models = dataclasses.replace(models, files={**models.files,
                                                "sid_student_int8": ctx.path(SID_INT8)})
    if new is not None:
        models.known = ~new
        models.known[0] = False
    sp = ctx.split
    ev = SidEvaluator(models, sid_catalog(models.vocab, student.cfg.hash_buckets,
                                          student.cfg.hash_count),
                      spec_of(student), sp.test_input[:USERS], sp.test_target[:USERS],
                      ctx.cfg.eval)
    fusion = FusionConfig.from_serving(model.serving)
    logits, scores = ev.device_chunk(ev.device_key, slice(0, USERS))
    answers = ev.cloud_chunk(slice(0, USERS), logits)
    out = []
    for u, a in enumerate(answers):
        wire = CloudCandidates(a.items, a.logp.astype(np.float32).astype(np.float64), a.intents,
                               a.catalog_size)  # the scores travel as float32
        d, view = ev.device_side(scores[u], wire, u)
        items, _ = fuse(d, intent_log_probs(logits[u]), view, wire, fusion,
                        exclude=sp.test_input[u])
        out.append(items[:10].tolist())
    return sp.test_input[:USERS], out


@pytest.fixture(scope="module")
def new_pair(sid_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sid pair whose cloud records every fourth item as newer than the device's model."""
    n = len(codebook(sid_bundle)) - 1
    return with_device_new(sid_bundle, tmp_path_factory.mktemp("new") / "bundle-sid",
                           "sid-new", list(range(4, n + 1, 4)))


@pytest.fixture
def cloud(request: pytest.FixtureRequest) -> Iterator[Running]:
    s = CloudSettings(bundle=str(request.getfixturevalue(request.param)), http_port=0,
                      grpc_port=0, cache_ttl_s=0, device_api_keys=[SecretStr("k")],
                      key_rate_burst=10**9, key_rate_per_s=10**9, batching=False)
    with replica_in_thread(s) as r:
        yield r


def transports(r: Running) -> dict[str, Transport]:
    return {"grpc": GrpcTransport(f"127.0.0.1:{r.grpc_port}", api_key="k"),
            "http": HttpTransport(f"http://127.0.0.1:{r.http_port}", api_key="k")}


async def device_rankings(model: EdgeModel, transport: Transport, histories: list[np.ndarray],
                          codes: np.ndarray) -> list[list[int]]:
    """Each user's device: the earlier history asks the cloud (its answer becomes the pool),
    the user picks the last item, then the ranking with the whole history."""
    got = []
    try:
        for u, h in enumerate(histories):
            store = MemoryDeviceStore(h[:-1].tolist(), [tuple(c) for c in codes[h[:-1]]])
            client = EdgeClient(model, store, f"sid-{u}", transport,
                                EdgeSettings(deadline_ms=10_000))
            first = await client.recommend(10)
            assert first.served_by == "cloud", first.reason
            client.record(int(h[-1]), semantic_id=tuple(codes[h[-1]].tolist()))
            res = await client.recommend(10)
            assert res.served_by == "cloud", res.reason
            got.append(list(res.items))
    finally:
        await transport.close()
    return got


def test_the_sid_pair_holds_its_model_and_the_cloud_side(sid_bundle: Path) -> None:
    device, cloud = verify_pair(sid_bundle)
    assert set(device["files"]) == {"sid_student_int8.onnx"}  # nothing per item
    assert set(cloud["files"]) == {"teacher.pt", "codebook.json", "item_table.json"}
    student = device["extra"]["student"]
    assert student["kind"] == "sid" and student["level_sizes"] == [8, 4, 4]
    assert student["hash_buckets"] == 16 and student["max_len"] == 30
    assert student["hash_count"] == 1
    assert {"fusion_weight", "device_top", "device_missing", "n_candidates"} <= \
        set(device["extra"]["serving"])
    table = json.loads((pair_dirs(sid_bundle).cloud / "item_table.json").read_text())
    assert table["device_new"] == []  # the standard protocol: the device trained on all
    model = EdgeModel.load(sid_bundle)
    assert model.sid is not None and model.sid.level_sizes == (8, 4, 4)
    assert model.version == device["version"] and model.version.endswith("-sid")


@pytest.mark.parametrize(("cloud", "wire"), [("sid_bundle", "grpc"), ("sid_bundle", "http"),
                                             ("sid_bundle_two_hashes", "grpc")],
                         indirect=["cloud"])
def test_sdk_ranks_exactly_as_the_sid_evaluation(request: pytest.FixtureRequest, cloud: Running,
                                                 wire: str) -> None:
    name = request.node.callspec.params["cloud"]
    bundle = request.getfixturevalue(name)
    model = EdgeModel.load(bundle)
    assert model.sid is not None and model.sid.hash_count == (2 if "two" in name else 1)
    histories, expected = offline_rankings(bundle.parent, model)
    got = asyncio.run(device_rankings(model, transports(cloud)[wire], histories,
                                      codebook(bundle)))
    assert got == expected
    # A device downloads the model and its manifest, nothing of the cloud side.
    resp = httpx.get(f"http://127.0.0.1:{cloud.http_port}/v1/manifest",
                     params={"device_id": "d"}, headers={"x-api-key": "k"})
    assert [f["name"] for f in resp.json()["files"]] == ["sid_student_int8.onnx"]


@pytest.mark.parametrize("cloud", ["new_pair"], indirect=True)
def test_items_flagged_new_are_fused_as_the_evaluation_does(sid_bundle: Path, new_pair: Path,
                                                            cloud: Running) -> None:
    codes = codebook(new_pair)
    new = np.zeros(len(codes), dtype=bool)
    new[4::4] = True
    body = {"device_id": "d", "intent_tokens": [1, 2], "intent_weights": [0.5, 0.5], "k": 40}
    out = httpx.post(f"http://127.0.0.1:{cloud.http_port}/v1/recommend", json=body,
                     headers={"x-api-key": "k"}).json()
    items = np.asarray(out["item_ids"])
    assert out["code_levels"] == 3 and out["item_codes"] == codes[items].ravel().tolist()
    assert out["item_new"] == new[items].tolist() and any(out["item_new"])

    model = EdgeModel.load(new_pair)
    histories, expected = offline_rankings(sid_bundle.parent, model, new)
    got = asyncio.run(device_rankings(model, transports(cloud)["grpc"], histories, codes))
    assert got == expected
    _, unflagged = offline_rankings(sid_bundle.parent, model)  # the flags change rankings
    assert unflagged != expected


@pytest.mark.parametrize("cloud", ["sid_bundle"], indirect=True)
def test_bad_semantic_ids_are_refused(sid_bundle: Path, cloud: Running) -> None:
    # The request never carries semantic ids (the privacy contract): a body that tries is a 4xx.
    body = {"device_id": "d", "intent_tokens": [1], "intent_weights": [1.0],
            "item_codes": [1, 1, 1]}
    resp = httpx.post(f"http://127.0.0.1:{cloud.http_port}/v1/recommend", json=body,
                      headers={"x-api-key": "k"})
    assert 400 <= resp.status_code < 500 and "item_codes" in resp.text
    client = EdgeClient(EdgeModel.load(sid_bundle), MemoryDeviceStore(), "d")
    for bad in ((1, 1), (9, 1, 1), (1, 0, 1)):  # wrong length; out of a level's range
        with pytest.raises(ValueError, match="semantic_id"):
            client.record(3, semantic_id=bad)
    assert client.store.events()[0].tolist() == []
