"""Evaluate every serving mode on the same held-out users under one protocol.

Each mode yields the 0-based rank of every user's target under full ranking over the catalog
(history items excluded), plus parameters, model file size and single-request p50 latency on one
thread. Collaborative ranks the union of the cloud's candidates and the device's own top items
with `tandem_contract.fusion.fuse`, the function the SDK serves with; a target outside that union
is a miss. See `report.protocol()` for the exact rules written into the results file.

Users are processed in chunks of `CHUNK`: nothing here holds a users x catalog matrix, so peak
memory grows with the catalog and the chunk, not with the number of users.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tandem_contract.fusion import (
    CloudCandidates,
    DeviceView,
    FusionConfig,
    device_log_probs,
    fuse,
    fusion_parts,
    intent_log_probs,
    target_positions,
)
from tandem_contract.request import CollaborativeRequest, build_request
from tandem_contract.runtime import OnnxStudent
from tandemrec.eval.metrics import MISS_RANK, metrics_from_ranks, sampled_ranks, target_ranks
from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.student import Student
from tandemrec.models.teacher_ensemble import AnyTeacher
from tandemrec.progress import stage_progress
from tandemrec.retrieval import IntentIndex, answer
from tandemrec.train.batches import eval_batches
from tandemrec.train.config import EvalConfig
from tandemrec.train.teacher import coarse_inputs

MODES = ("popularity", "cloud-full", "teacher-coarse", "student-fp32", "student-svd",
         "student-int8", "collaborative", "edge-only")
CHUNK = 256  # users scored together: bounds memory at CHUNK x catalog floats per score matrix


@dataclass
class Models:
    teacher: AnyTeacher
    vocab: IntentVocab
    student: Student
    student_svd: Student
    popularity: np.ndarray  # (N+1,) training counts
    files: dict[str, Path]  # teacher, student_fp32, student_svd, student_int8
    n_items: int
    known: np.ndarray | None = None  # (N+1,) items the device's bundle knows; None = all
    # The teacher on the training device (config `device`) for batched ranking; None: the
    # teacher itself. Latencies are always measured on the CPU teacher, as the cloud serves.
    scorer: AnyTeacher | None = None


@dataclass
class ModeResult:
    mode: str
    ranks: np.ndarray
    params: int
    size_bytes: int
    p50_ms: float
    sampled: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def row(self, ks: tuple[int, ...]) -> dict:
        m = metrics_from_ranks(self.ranks, ks)
        row = {"mode": self.mode, "hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"],
               "mrr@10": m["mrr@10"], "params": self.params, "size_bytes": self.size_bytes,
               "p50_ms": self.p50_ms}
        row.update({k: v for k, v in m.items() if k not in row and k != "n_users"})
        if self.sampled is not None:
            s = metrics_from_ranks(self.sampled, (10,))
            row["sampled100_hr@10"], row["sampled100_ndcg@10"] = s["hr@10"], s["ndcg@10"]
        row.update(self.extra)
        return row


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def p50_ms(fn: Callable[[int], object], n: int) -> float:
    """Median wall time of fn(i) over n calls after a warm-up, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in range(min(20, n)):
            fn(i)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times) * 1e3)


def torch_scores(score_fn: Callable[[torch.Tensor], torch.Tensor], inputs: list[np.ndarray],
                 max_len: int, device: torch.device | None = None) -> Callable[[slice], np.ndarray]:
    """Batched scoring for ranking (latency is measured separately, one request at a time);
    `device`: where score_fn's model is."""
    def by_batch(sl: slice) -> np.ndarray:
        x = eval_batches(inputs[sl], max_len, batch_size=len(inputs[sl]) or 1)
        _, xb = next(x)
        with torch.inference_mode():
            return score_fn(xb if device is None else xb.to(device)).float().cpu().numpy()
    return by_batch


def fusion_grid(cfg: EvalConfig, new_items: bool) -> list[FusionConfig]:
    """The fusion settings tried on validation users (fixed ones where the config sets them).

    Weight 0 (the device alone) is always a choice; the rule for items the device does not
    know is tried only where such items exist (the new-item protocol).
    """
    weights = (cfg.fusion_weight,) if cfg.fusion_weight is not None else FUSION_WEIGHTS
    tops = (cfg.device_top,) if cfg.device_top is not None else DEVICE_TOPS
    cloud = (cfg.cloud_missing,) if cfg.cloud_missing else ("floor", "mass")
    device = ((cfg.device_missing,) if cfg.device_missing else
              ("intent", "teacher", "mixture") if new_items else ("intent",))
    temps = ((cfg.device_temperature,) if cfg.device_temperature is not None else
             DEVICE_TEMPERATURES if new_items else (1.0,))
    out = []
    for w, n, c, d, t in itertools.product(weights, tops, cloud, device, temps):
        if w == 0 and c != cloud[0]:
            continue  # with no teacher share its missing-score rule changes nothing
        out.append(FusionConfig(w, n, c, d, t))  # type: ignore[arg-type]
    return out


FUSION_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
DEVICE_TOPS = (0, 20, 100)  # 0 = rank the cloud's candidates only (no device items added)
# Tried where the device does not know every item: how far to flatten it onto the teacher's scale.
DEVICE_TEMPERATURES = (1.0, 1.5, 2.0, 3.0)


class Evaluator:
    """Runs the modes for one set of held-out users (validation or test).

    `inputs` are the users' whole histories (what cloud-full reads and what ranking excludes);
    `device_inputs` what the device's student reads (items its bundle does not know dropped),
    by default the same.
    """

    def __init__(self, models: Models, inputs: list[np.ndarray], targets: np.ndarray,
                 cfg: EvalConfig, seed: int = 0,
                 device_inputs: list[np.ndarray] | None = None) -> None:
        self.m, self.inputs, self.targets, self.cfg, self.seed = models, inputs, targets, cfg, seed
        self.device_inputs = device_inputs if device_inputs is not None else inputs
        self.index = IntentIndex(models.vocab.codes[:, 0], models.popularity)
        self.item_intent = models.vocab.codes[:, 0].astype(np.int64)
        known = (models.known if models.known is not None
                 else np.ones(models.n_items + 1, dtype=bool))
        self.view = DeviceView.build(known, self.item_intent, models.vocab.n_intents)
        self.has_unknown = bool((~self.view.known[1:]).any())
        self.max_len = models.teacher.cfg.max_len
        self.scorer = models.scorer if models.scorer is not None else models.teacher
        self.device = next(self.scorer.parameters()).device
        self.n_lat = min(cfg.latency_requests, len(inputs))
        self.bytes_up = 0.0
        self._runners: dict[str, OnnxStudent] = {}

    def chunks(self) -> Iterator[slice]:
        for i in range(0, len(self.inputs), CHUNK):
            yield slice(i, i + CHUNK)

    def _full(self, mode: str, scores_of: Callable[[slice], np.ndarray], params: int,
              size: int, latency: float) -> ModeResult:
        ranks, sampled = [], []
        # Sampled metrics need enough non-history items to draw negatives from.
        longest = max((len(set(h.tolist())) for h in self.inputs), default=0)
        can_sample = self.m.n_items - longest - 1 >= self.cfg.sampled_negatives
        with stage_progress() as progress:
            task = progress.add_task(mode, total=len(self.inputs), status="")
            for sl in self.chunks():
                s = scores_of(sl)
                ranks.append(target_ranks(s, self.targets[sl], self.inputs[sl]))
                if can_sample:
                    sampled.append(sampled_ranks(s, self.targets[sl], self.inputs[sl],
                                                 self.cfg.sampled_negatives,
                                                 seed=self.seed + sl.start))
                progress.advance(task, len(self.inputs[sl]))
        return ModeResult(mode, np.concatenate(ranks), params, size, latency,
                          np.concatenate(sampled) if sampled else None)

    def popularity(self) -> ModeResult:
        pop = self.m.popularity.astype(np.float32)
        pop[0] = -np.inf
        lat = p50_ms(lambda i: np.argpartition(-pop, 10)[:10], self.n_lat)
        return self._full("popularity", lambda sl: np.tile(pop, (len(self.inputs[sl]), 1)),
                          0, 0, lat)

    def teacher(self, coarse: bool) -> ModeResult:
        t = self.m.teacher
        inputs = (coarse_inputs(self.inputs, self.m.vocab, self.cfg.coarse_history)
                  if coarse else self.inputs)
        fn = torch_scores(lambda x: self.scorer(x, coarse=coarse), inputs, self.max_len,
                          self.device)

        def one(i: int) -> None:
            with torch.inference_mode():
                t(torch.from_numpy(inputs[i][-self.max_len:][None].astype(np.int64)),
                  coarse=coarse)
        lat = p50_ms(one, self.n_lat)
        size = self.m.files["teacher"].stat().st_size
        return self._full("teacher-coarse" if coarse else "cloud-full", fn, n_params(t), size, lat)

    def _runner(self, key: str) -> OnnxStudent:
        """One ONNX Runtime session per model file, on one thread as on a phone."""
        if key not in self._runners:
            self._runners[key] = OnnxStudent(self.m.files[key], threads=1)
        return self._runners[key]

    def device_chunk(self, key: str, sl: slice) -> tuple[np.ndarray, np.ndarray]:
        """Intent logits (B, K+1) and item scores (B, N+1) of a student file, one request each;
        items the device does not know score -inf (it cannot rank them)."""
        runner = self._runner(key)
        out = [runner.run(h) for h in self.device_inputs[sl]]
        scores = np.stack([s for _, s in out]).astype(np.float32)
        scores[:, ~self.view.known[: scores.shape[1]]] = -np.inf
        return np.stack([i for i, _ in out]), scores

    def student_onnx(self, mode: str, key: str, params: int) -> ModeResult:
        runner = self._runner(key)
        lat = p50_ms(lambda i: runner.run(self.device_inputs[i]), self.n_lat)
        return self._full(mode, lambda sl: self.device_chunk(key, sl)[1], params,
                          self.m.files[key].stat().st_size, lat)

    def request(self, intent_logits: np.ndarray, history: np.ndarray) -> CollaborativeRequest:
        """Device side: one user's upstream payload (intent tokens only)."""
        return build_request(intent_logits, history, self.item_intent, top_m=self.cfg.top_intents,
                             coarse_len=self.cfg.coarse_history, k=self.cfg.n_candidates,
                             model_version="eval")

    def cloud_answer(self, req: CollaborativeRequest, teacher_row: np.ndarray) -> CloudCandidates:
        """Cloud side for one request: retrieve under its intents, keep the teacher's top N."""
        pool = self.index.candidates(np.array(req.intent_tokens), np.array(req.intent_weights),
                                     self.cfg.n_retrieve, self.cfg.popular_share)
        items, logp, intents = answer(teacher_row, pool, self.cfg.n_candidates, self.item_intent)
        return CloudCandidates(items, logp, intents, self.m.n_items)

    def cloud_chunk(self, sl: slice, intent_logits: np.ndarray,
                    histories: list[np.ndarray] | None = None) -> list[CloudCandidates]:
        """The cloud's answers for a chunk of users (from `histories`, by default the device's
        inputs); the coarse teacher reads only the tokens."""
        t = self.scorer
        seen = self.device_inputs[sl] if histories is None else histories
        reqs = [self.request(lg, h) for lg, h in zip(intent_logits, seen, strict=True)]
        coarse = [np.array(r.coarse_history, dtype=np.int64) for r in reqs]
        rows = torch_scores(lambda x: t(x, coarse=True), coarse, self.max_len,
                            self.device)(slice(None))
        self.bytes_up += sum(len(r.to_json_bytes()) for r in reqs)
        return [self.cloud_answer(r, row) for r, row in zip(reqs, rows, strict=True)]

    def _exclude(self, u: int) -> np.ndarray:
        """The history ranking excludes; the target never is (as in `target_ranks`)."""
        h = self.inputs[u]
        return h[h != self.targets[u]]

    device_key = "student_int8"  # the device's model file in collaborative serving

    def device_input(self, history: np.ndarray) -> np.ndarray:
        """What the device's model reads for a history (item ids for the table student)."""
        return history

    def device_side(self, scores: np.ndarray, answer: CloudCandidates,
                    u: int) -> tuple[np.ndarray, DeviceView]:
        """The device's log-probabilities for user `u` (from `device_chunk`'s scores) and what
        its bundle knows; the semantic-id device's known items change with the answer."""
        return device_log_probs(scores, self.view), self.view

    def collaborative_ranks(self, configs: Sequence[FusionConfig]) -> np.ndarray:
        """(len(configs), users) ranks of the target under each fusion setting.

        Configs that differ only in weight share one `fusion_parts`; the position each weight
        gives the target is `target_positions`, the ordering `fuse` itself produces.
        """
        groups: dict[tuple, list[int]] = {}
        for j, c in enumerate(configs):
            key = (c.device_top, c.cloud_missing, c.device_missing, c.device_temperature)
            groups.setdefault(key, []).append(j)
        ranks = np.full((len(configs), len(self.inputs)), MISS_RANK, dtype=np.int64)
        self.bytes_up = 0.0
        with stage_progress() as progress:
            task = progress.add_task("collaborative", total=len(self.inputs), status="")
            for sl in self.chunks():
                logits, scores = self.device_chunk(self.device_key, sl)
                answers = self.cloud_chunk(sl, logits)
                for b, u in enumerate(range(*sl.indices(len(self.inputs)))):
                    d, view = self.device_side(scores[b], answers[b], u)
                    il, excl = intent_log_probs(logits[b]), self._exclude(u)
                    for js in groups.values():
                        parts = fusion_parts(d, il, view, answers[b], configs[js[0]], excl)
                        w = np.array([configs[j].weight for j in js])
                        pos = target_positions(parts, w, int(self.targets[u]))
                        ranks[js, u] = np.where(pos >= 0, pos, MISS_RANK)
                progress.advance(task, len(answers))
        self.bytes_up /= max(1, len(self.inputs))
        return ranks

    def collaborative(self, fusion: FusionConfig) -> ModeResult:
        ranks = self.collaborative_ranks([fusion])[0]
        return ModeResult("collaborative", ranks, 0, 0, 0.0,
                          extra={**fusion.serving(), "bytes_up_json": self.bytes_up,
                                 "n_candidates": self.cfg.n_candidates,
                                 "coarse_history": self.cfg.coarse_history,
                                 "top_intents": self.cfg.top_intents})

    def collaborative_latency(self, fusion: FusionConfig) -> float:
        """Device student + cloud retrieval and coarse teacher + device fusion, one request."""
        runner = self._runner(self.device_key)
        t = self.m.teacher

        def one(i: int) -> None:
            h = self.device_inputs[i]
            logits, scores = runner.run(self.device_input(h))
            req = self.request(logits, h)
            coarse = torch.tensor([req.coarse_history], dtype=torch.int64)
            with torch.inference_mode():
                row = t(coarse, coarse=True)[0].numpy()
            answer = self.cloud_answer(req, row)
            d, view = self.device_side(scores, answer, i)
            fuse(d, intent_log_probs(logits), view, answer, fusion, exclude=self.inputs[i])
        return p50_ms(one, self.n_lat)


def tune_fusion(evaluator: Evaluator, grid: Sequence[FusionConfig],
                confidence: float = 0.95, seed: int = 0,
                tolerance: float = 0.0) -> tuple[FusionConfig, dict]:
    """Pick the fusion setting on validation users: the best NDCG@10, but a teacher share only
    when its gain over the device alone holds up (see `significant_gain`); ties go to the
    first in the grid, where the device alone comes first. Where some targets are items the
    device does not know, the settings within `tolerance` (relative) of the best are equal
    for all users, and among them the one that ranks those new targets best is taken."""
    ranks = evaluator.collaborative_ranks(grid)
    scores = np.array([metrics_from_ranks(r, (10,))["ndcg@10"] for r in ranks])
    new = ~evaluator.view.known[evaluator.targets]
    best = _freshest(ranks, scores, new, tolerance)
    table = {_label(c): float(s) for c, s in zip(grid, scores, strict=True)}
    alone = np.array([j for j, c in enumerate(grid) if c.weight == 0 and c.device_top >= 10])
    if grid[best].weight > 0 and len(alone):
        base = int(alone[_freshest(ranks[alone], scores[alone], new, tolerance)])
        if not significant_gain(ranks[best], ranks[base], confidence, seed):
            return grid[base], table
    return grid[best], table


def _freshest(ranks: np.ndarray, scores: np.ndarray, new: np.ndarray, tolerance: float) -> int:
    """The best setting for all users, or, among those within `tolerance` of it, the one with
    the best NDCG@10 on the users whose target is `new` (ties: the better for all, then the
    first). Settings that differ by less than the noise of a few thousand users (a flat
    optimum over the device's temperature) rank old and new items very differently."""
    best = int(np.argmax(scores))
    if tolerance <= 0 or not new.any():
        return best
    near = np.flatnonzero(scores >= (1.0 - tolerance) * scores[best])
    fresh = np.array([_ndcg10(ranks[j][new]).mean() for j in near])
    top = near[fresh == fresh.max()]
    return int(top[np.argmax(scores[top])])


def _label(c: FusionConfig) -> str:
    """The tuning table's key of a setting (the temperature only where it is not 1)."""
    t = f" T={c.device_temperature:g}" if c.device_temperature != 1 else ""
    return (f"w={c.weight} top={c.device_top} cloud={c.cloud_missing} "
            f"device={c.device_missing}{t}")


def significant_gain(ranks: np.ndarray, base: np.ndarray, confidence: float,
                     seed: int = 0, resamples: int = 2000) -> bool:
    """True when the per-user NDCG@10 gain of `ranks` over `base` is above zero at the lower
    (1 - confidence) bootstrap quantile of its mean (users resampled, paired); confidence 0
    accepts any gain. A few hundred validation users cannot tell +3% from noise, and a fused
    setting that only looks better there can lose to the device on test users."""
    gain = _ndcg10(ranks) - _ndcg10(base)
    if confidence <= 0:
        return bool(gain.mean() > 0)
    rng = np.random.default_rng(seed)
    means = np.array([gain[rng.integers(0, len(gain), len(gain))].mean()
                      for _ in range(resamples)])
    return bool(np.quantile(means, 1 - confidence) > 0)


def _ndcg10(ranks: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < 10, 1.0 / np.log2(np.minimum(r, 1e9) + 2.0), 0.0)
