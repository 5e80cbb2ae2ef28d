"""`EdgeClient`: the device half of collaborative serving, usable from an app on its own.

Per recommendation: the student reads the private history on the device; the top intent tokens
and the coarse intent history (never an item id) go to the cloud within a deadline; the cloud's
teacher-scored candidates are fused with the student's own scores and cached as the offline
pool. When the cloud is slow, failing or unreachable (breaker open), the student ranks the
cached pool and the local item table instead, and the result says which path served it.

A bundle with the semantic-id student (no item table) runs the same request path on the
semantic ids stored with each event and sent with each answer (`edge_client.sid_device`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_client.device_store import DeviceStore, MemoryDeviceStore
from edge_client.resilience import CircuitBreaker, CloudUnavailable, RetryPolicy, call_with_retries
from edge_client.settings import EdgeSettings
from edge_client.sid_device import answer_codes, fused, pool_ranking, sid_history, stored_pool
from edge_client.transport import CloudAnswer, CloudError, Transport
from edge_client.updates import ModelStore, UpdateResult
from tandem_contract.fusion import (
    CloudCandidates,
    DeviceView,
    FusionConfig,
    device_log_probs,
    fuse,
    in_catalog,
    intent_log_probs,
)
from tandem_contract.request import CollaborativeRequest, build_request, request_from_tokens
from tandem_contract.runtime import OnnxStudent
from tandem_contract.semantic_ids import SID_MODEL, SidSpec

__all__ = ["DeviceStore", "EdgeClient", "EdgeModel", "EdgeResult", "MemoryDeviceStore"]


@dataclass
class EdgeModel:
    """What a device bundle gives the device: the int8 student, item -> intent, popularity.

    A semantic-id bundle (`sid`: its student's layout) has no item table: its item arrays
    hold padding only, and items reach it through their semantic ids.
    """

    version: str
    student: OnnxStudent
    item_intent: np.ndarray  # (N+1,) level-1 intent token; 0 for padding and unknown items
    popularity: np.ndarray  # (N+1,)
    serving: dict  # fusion weight, intents sent, history length, candidates (manifest extra)
    known: np.ndarray  # (N+1,) bool: items this bundle knows (padding, index 0, never)
    sid: SidSpec | None = None  # the semantic-id student's layout; None: the table student

    @classmethod
    def load(cls, bundle_dir: Path | str, threads: int = 1) -> EdgeModel:
        """Load a device bundle, or the device/ side of a bundle pair."""
        from tandem_contract.bundle import DEVICE_ITEMS, MANIFEST_NAME, BundleError, device_dir

        bundle_dir = device_dir(bundle_dir)
        manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
        extra = manifest.get("extra") or {}
        try:
            spec = SidSpec.from_extra(extra)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{MANIFEST_NAME}: extra.student is malformed ({exc!r})") from exc
        if spec is not None:
            return cls(version=str(manifest["version"]),
                       student=OnnxStudent(bundle_dir / SID_MODEL, threads, spec.max_len),
                       item_intent=np.zeros(1, np.int64), popularity=np.zeros(1),
                       serving=dict(extra.get("serving") or {}), known=np.zeros(1, bool),
                       sid=spec)
        table = json.loads((bundle_dir / DEVICE_ITEMS).read_text())
        n = int(table["n_items"])
        known = np.asarray(table["known"], dtype=bool)
        item_intent = np.asarray(table["intent"], dtype=np.int64)
        popularity = np.asarray(table["popularity"], dtype=np.float64)
        if not known.shape == item_intent.shape == popularity.shape == (n + 1,):
            raise BundleError(f"{DEVICE_ITEMS}: known, intent and popularity must each have "
                              f"n_items + 1 = {n + 1} entries")
        return cls(version=str(manifest["version"]),
                   student=OnnxStudent(bundle_dir / "student_int8.onnx", threads=threads),
                   item_intent=item_intent, popularity=popularity,
                   serving=dict((manifest.get("extra") or {}).get("serving") or {}),
                   known=known)

    @functools.cached_property
    def view(self) -> DeviceView:
        """Which items this bundle knows and its intents' sizes, for fusion."""
        return DeviceView.build(self.known, self.item_intent, int(self.item_intent.max()))


@dataclass(frozen=True)
class EdgeResult:
    """k items best first; `served_by` is cloud, cache (shift policy) or fallback."""

    items: tuple[int, ...]
    scores: tuple[float, ...]
    served_by: str
    reason: str = ""
    intent_tokens: tuple[int, ...] = ()
    bytes_up: int = 0  # serialized size of what went upstream (0 when nothing did)
    latency_ms: float = 0.0
    device_ms: float = 0.0  # student + rerank compute on the device


class EdgeClient:
    """One device: records interactions, recommends with the cloud or without it."""

    def __init__(self, model: EdgeModel, store: DeviceStore, device_id: str,
                 transport: Transport | None = None, settings: EdgeSettings | None = None,
                 seed: int = 0) -> None:
        import random

        self.model, self.store, self.device_id = model, store, device_id
        self.transport, self.s = transport, settings or EdgeSettings()
        self.breaker = CircuitBreaker(self.s.breaker_failures, self.s.breaker_reset_s)
        self.policy = RetryPolicy(retries=self.s.retries)
        self._rng = random.Random(seed)
        self._last_tokens: tuple[int, ...] = ()

    def knob(self, name: str, default: float, model: EdgeModel | None = None) -> float:
        """A serving setting: the device's own if set, else the bundle's, else `default`."""
        value = getattr(self.s, name)
        serving = (model or self.model).serving
        return float(value if value is not None else serving.get(name, default))

    def record(self, item_id: int, semantic_id: Sequence[int] | None = None) -> int:
        """Log one interaction on the device; durable once this returns (with InteractionStore).

        `semantic_id`: the item's, from the app's catalog; with a semantic-id bundle, by
        default the one the cloud sent with the last answer holding the item, and checked
        against the bundle's levels (ValueError). An event without one is kept (never shown
        again) but the semantic-id student cannot read it.
        """
        spec = self.model.sid
        if spec is not None and semantic_id is not None:
            spec.check(np.asarray([semantic_id]), "semantic_id")
        elif spec is not None:
            semantic_id = self._answered_sid(int(item_id))
        if semantic_id is None:
            return self.store.append(item_id)
        return self.store.append(item_id, semantic_id=semantic_id)

    def _answered_sid(self, item_id: int) -> tuple[int, ...] | None:
        """The semantic id the last answer sent with the item; None if it sent none."""
        pool = self.store.load_sid_pool()
        if pool is None:
            return None
        where = np.flatnonzero(pool.items == item_id)
        return tuple(pool.codes[where[0]].tolist()) if len(where) else None

    def build(self, history: np.ndarray, intent_logits: np.ndarray,
              model: EdgeModel | None = None) -> CollaborativeRequest:
        """The upstream payload: intent tokens and the coarse intent history only."""
        m = model or self.model
        return build_request(intent_logits, history, m.item_intent, **self._knobs(m),
                             model_version=m.version)

    def _knobs(self, m: EdgeModel) -> dict[str, int]:
        """What the request takes of the serving settings: intents sent, history, candidates."""
        return {"top_m": int(self.knob("top_intents", 8, m)),
                "coarse_len": int(self.knob("coarse_history", 50, m)),
                "k": int(self.knob("n_candidates", 600, m))}

    async def update_model(self, models: ModelStore) -> UpdateResult:
        """Fetch the cloud's current bundle if it is new, verify it, then swap models.

        The swap is one assignment: a request already running finishes on the model it
        started with. On any failure the current model stays and the result says why.
        """
        if self.transport is None:
            return UpdateResult(False, self.model.version, "offline: no transport")
        transport = self.transport
        wanted: dict[str, str] = {}

        async def manifest() -> dict:
            m = await transport.manifest(self.device_id, self.s.deadline_ms / 1000 * 10)
            wanted["version"] = str(m.get("version", ""))  # files of this very version
            return m

        result = await models.update(
            manifest, lambda name: transport.artifact(name, wanted["version"], self.device_id))
        current = models.current()
        if result.updated and current is not None:
            self.model = await asyncio.to_thread(EdgeModel.load, current[1], self.s.threads)
        return result

    async def recommend(self, k: int = 10) -> EdgeResult:
        """Top k for the current history: collaborative when possible, on-device otherwise.

        Never raises because of the network: any failure of the cloud call (whatever its
        exception type, or a malformed answer) ends in the on-device fallback within the
        deadline. A bad `k` is the caller's error and raises.
        """
        check_k(k)
        t0 = time.perf_counter()
        model = self.model  # one model for the whole request, even if an update swaps it
        if model.sid is not None:
            return await self._recommend_sid(model, model.sid, k, t0)
        history = self.store.history()  # all of it: nothing already seen is shown again
        own = known_history(history, model)  # items the bundle does not know are dropped
        intent_logits, scores = model.student.run(own)  # reads its last max_len
        req = self.build(own, intent_logits, model)
        device_s = time.perf_counter() - t0
        pool = self.store.load_pool()
        if self.s.policy == "shift" and pool is not None and not self._shifted(req, pool,
                                                                                scores):
            cached = CloudCandidates(pool[1], pool[2].astype(np.float64),
                                     model.item_intent[np.clip(pool[1], 0, len(model.known) - 1)],
                                     len(model.known) - 1)
            return self._fused(model, cached, scores, intent_logits, history, k, "cache", req,
                               0, t0, device_s)
        if self.transport is None:
            return self._fallback(model, scores, history, k, "offline", req, t0, device_s)
        try:
            answer, cloud = await self._ask(req, model, t0)
        except CloudUnavailable as exc:
            return self._fallback(model, scores, history, k, exc.reason, req, t0, device_s)
        except CloudError as exc:  # the cloud refused the request itself: still serve the user
            return self._fallback(model, scores, history, k, str(exc), req, t0, device_s)
        self.store.save_pool(answer.model_version, answer.items, answer.scores)
        self._last_tokens = req.intent_tokens
        return self._fused(model, cloud, scores, intent_logits, history, k, "cloud", req,
                           len(request_bytes(req, self.device_id)), t0, device_s)

    async def _ask(self, req: CollaborativeRequest, model: EdgeModel,
                   t0: float) -> tuple[CloudAnswer, CloudCandidates]:
        """The cloud's answer within what is left of the deadline, checked as fusion input."""
        deadline = self.s.deadline_ms / 1000 - (time.perf_counter() - t0)
        transport = self.transport
        assert transport is not None

        async def ask(remaining: float) -> tuple[CloudAnswer, CloudCandidates]:
            answer = await transport.recommend(req, self.device_id, remaining)
            cloud = cloud_candidates(answer, model)  # garbage fails the attempt
            if model.sid is not None:
                answer_codes(answer, model.sid)
            return answer, cloud

        return await call_with_retries(
            ask, deadline_s=max(0.0, deadline), policy=self.policy,
            # A foreign exception type is a failure on the way, not the cloud refusing.
            is_retryable=lambda e: not isinstance(e, CloudError) or e.retryable,
            breaker=self.breaker, rng=self._rng)

    async def _recommend_sid(self, model: EdgeModel, spec: SidSpec, k: int,
                             t0: float) -> EdgeResult:
        """`recommend` with the semantic-id student; the shift policy asks the cloud always."""
        hist = sid_history(self.store.events(), spec)
        logits, row_scores = model.student.run(spec.rows(hist.codes, hist.read))
        req = request_from_tokens(logits, hist.codes[:, 0], **self._knobs(model),
                                  model_version=model.version)
        device_s = time.perf_counter() - t0
        pool = stored_pool(self.store.load_sid_pool(), spec)
        reason = "offline"
        if self.transport is not None:
            try:
                answer, cloud = await self._ask(req, model, t0)
            except CloudUnavailable as exc:
                reason = exc.reason
            except CloudError as exc:
                reason = str(exc)
            else:
                codes, new = answer_codes(answer, spec)
                # The earlier pool's semantic ids are of the same codebook only in one version.
                earlier = pool if pool is not None and pool.version == answer.model_version \
                    else None
                self.store.save_pool(answer.model_version, answer.items, answer.scores, codes,
                                     new)
                self._last_tokens = req.intent_tokens
                t1 = time.perf_counter()
                items, scores = fused(row_scores, logits, cloud, codes, new, earlier,
                                      hist.items, spec, self.fusion(model))
                return self._result(items[:k], scores[:k], "cloud", "", req,
                                    len(request_bytes(req, self.device_id)), t0,
                                    device_s + time.perf_counter() - t1)
        t1 = time.perf_counter()
        items, scores = pool_ranking(row_scores, pool, hist.items, k, spec)
        return self._result(items, scores, "fallback", reason, req, 0, t0,
                            device_s + time.perf_counter() - t1)

    def _result(self, items: np.ndarray, scores: np.ndarray, served_by: str, reason: str,
                req: CollaborativeRequest, bytes_up: int, t0: float,
                device_s: float) -> EdgeResult:
        return EdgeResult(tuple(int(i) for i in items), tuple(float(x) for x in scores),
                          served_by, reason, req.intent_tokens, bytes_up,
                          (time.perf_counter() - t0) * 1000, device_s * 1000)

    def _shifted(self, req: CollaborativeRequest, pool: tuple, scores: np.ndarray) -> bool:
        """Intent shift: the top intents changed, or the device now disagrees with the cloud."""
        a, b = set(req.intent_tokens), set(self._last_tokens)
        if not b or len(a & b) / max(1, len(a | b)) < self.s.shift_overlap:
            return True
        items, t_scores = pool[1], pool[2]
        top_t = set(items[np.argsort(-t_scores)[:10]].tolist())
        top_d = set(items[np.argsort(-scores[items])[:10]].tolist())
        return len(top_t & top_d) / 10 < self.s.shift_rank_overlap

    def fusion(self, model: EdgeModel | None = None) -> FusionConfig:
        """The fusion setting: the device's own overrides, else the bundle's."""
        return FusionConfig.from_serving((model or self.model).serving,
                                         weight=self.s.fusion_weight,
                                         device_top=self.s.device_top)

    def _fused(self, model: EdgeModel, cloud: CloudCandidates, scores: np.ndarray,
               intent_logits: np.ndarray, history: np.ndarray, k: int, served_by: str,
               req: CollaborativeRequest, bytes_up: int, t0: float,
               device_s: float) -> EdgeResult:
        t1 = time.perf_counter()
        ranked, fused = fuse(device_log_probs(scores, model.view), intent_log_probs(intent_logits),
                             model.view, cloud, self.fusion(model), exclude=history)
        device_s += time.perf_counter() - t1
        return EdgeResult(tuple(int(i) for i in ranked[:k]), tuple(float(s) for s in fused[:k]),
                          served_by, "", req.intent_tokens, bytes_up,
                          (time.perf_counter() - t0) * 1000, device_s * 1000)

    def _fallback(self, model: EdgeModel, scores: np.ndarray, history: np.ndarray, k: int,
                  reason: str, req: CollaborativeRequest, t0: float,
                  device_s: float) -> EdgeResult:
        """The student alone over the items its bundle knows."""
        t1 = time.perf_counter()
        s = scores.astype(np.float32).copy()
        s[~model.known[: len(s)]] = -np.inf
        s[in_catalog(history, len(s))] = -np.inf  # items newer than the bundle score nothing
        top = _top(s, k)
        device_s += time.perf_counter() - t1
        return EdgeResult(tuple(int(i) for i in top), tuple(float(s[i]) for i in top),
                          "fallback", reason, req.intent_tokens, 0,
                          (time.perf_counter() - t0) * 1000, device_s * 1000)


def request_bytes(req: CollaborativeRequest, device_id: str) -> bytes:
    """The collaborative request as serialized on the wire (protobuf), for byte accounting."""
    from tandem_wire.v1 import recommend_pb2 as pb

    return pb.RecommendRequest(device_id=device_id, intent_tokens=req.intent_tokens,
                               intent_weights=req.intent_weights,
                               coarse_history=req.coarse_history, k=req.k,
                               model_version=req.model_version).SerializeToString()


def check_k(k: object) -> None:
    """The caller's k: a positive integer (a bool is not one)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def cloud_candidates(answer: CloudAnswer, model: EdgeModel) -> CloudCandidates:
    """The answer as fusion input; a retryable CloudError when it cannot be one."""
    try:
        items = np.asarray(answer.items, dtype=np.int64).reshape(-1)
        scores = np.asarray(answer.scores, dtype=np.float64).reshape(-1)
        intents = _intents(answer, model)
        catalog = int(answer.catalog_size) or len(model.known) - 1
    except (TypeError, ValueError, OverflowError) as exc:
        raise CloudError(f"BAD_RESPONSE: {exc}", code="BAD_RESPONSE", retryable=True) from exc
    problem = ("items and scores differ in length" if len(items) != len(scores) else
               "items and intents differ in length" if len(intents) != len(items) else
               "an item id is outside the catalog" if len(items) and (
                   items.min() < 1 or items.max() > catalog) else
               "a score is NaN or +inf" if not (scores < np.inf).all() else "")
    if problem:  # fusion would index out of range or rank garbage
        raise CloudError(f"BAD_RESPONSE: {problem}", code="BAD_RESPONSE", retryable=True)
    return CloudCandidates(items, scores, intents, catalog)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best finite entries, best first (fewer when fewer are finite)."""
    finite = np.flatnonzero(np.isfinite(scores))
    if k < len(finite):
        finite = finite[np.argpartition(-scores[finite], k - 1)[:k]]
    return finite[np.argsort(-scores[finite], kind="stable")]


def _intents(answer: CloudAnswer, model: EdgeModel) -> np.ndarray:
    """Each answered item's intent token: the cloud's, else the bundle's (an older cloud)."""
    if len(answer.intents):
        return np.asarray(answer.intents, dtype=np.int64).reshape(-1)
    items = np.clip(np.asarray(answer.items, dtype=np.int64), 0, len(model.item_intent) - 1)
    return model.item_intent[items]


def known_history(history: np.ndarray, model: EdgeModel) -> np.ndarray:
    """The part of the history the device's student reads: items its bundle knows."""
    h = in_catalog(history, len(model.known))
    return h[model.known[h]]
