"""Evaluate every serving mode on the same held-out users under one protocol.

Each mode yields the 0-based rank of every user's target under full ranking over the catalog
(history items excluded), plus parameters, model file size and single-request p50 latency on one
thread. Modes that return only a candidate list (collaborative) count a target outside the list
as a miss. See `protocol()` for the exact rules written into the results file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edge_client.request import CollaborativeRequest, build_request
from edge_client.rerank import fuse
from edge_client.runtime import OnnxStudent
from tandemrec.eval.metrics import MISS_RANK, metrics_from_ranks, sampled_ranks, target_ranks
from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.student import Student
from tandemrec.models.teacher_ensemble import AnyTeacher
from tandemrec.progress import stage_progress
from tandemrec.retrieval import IntentIndex
from tandemrec.train.batches import eval_batches
from tandemrec.train.config import EvalConfig
from tandemrec.train.teacher import coarse_inputs

MODES = ("popularity", "cloud-full", "teacher-coarse", "student-fp32", "student-svd",
         "student-int8", "collaborative", "edge-only")


@dataclass
class Models:
    teacher: AnyTeacher
    vocab: IntentVocab
    student: Student
    student_svd: Student
    popularity: np.ndarray  # (N+1,) training counts
    files: dict[str, Path]  # teacher, student_fp32, student_svd, student_int8
    n_items: int


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
                 max_len: int) -> Callable[[slice], np.ndarray]:
    """Batched scoring for ranking (latency is measured separately, one request at a time)."""
    def by_batch(sl: slice) -> np.ndarray:
        x = eval_batches(inputs[sl], max_len, batch_size=len(inputs[sl]) or 1)
        _, xb = next(x)
        with torch.inference_mode():
            return score_fn(xb).float().numpy()
    return by_batch


class Evaluator:
    """Runs the modes for one set of held-out users (validation or test)."""

    def __init__(self, models: Models, inputs: list[np.ndarray], targets: np.ndarray,
                 cfg: EvalConfig, seed: int = 0) -> None:
        self.m, self.inputs, self.targets, self.cfg, self.seed = models, inputs, targets, cfg, seed
        self.index = IntentIndex(models.vocab.codes[:, 0], models.popularity)
        self.max_len = models.teacher.cfg.max_len
        self.n_lat = min(cfg.latency_requests, len(inputs))
        self.bytes_up = 0.0
        self._runners: dict[str, OnnxStudent] = {}
        self._passes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _full(self, mode: str, scores_of: Callable[[slice], np.ndarray], params: int,
              size: int, latency: float) -> ModeResult:
        ranks, sampled = [], []
        # Sampled metrics need enough non-history items to draw negatives from.
        longest = max((len(set(h.tolist())) for h in self.inputs), default=0)
        can_sample = self.m.n_items - longest - 1 >= self.cfg.sampled_negatives
        for i in range(0, len(self.inputs), 256):
            sl = slice(i, i + 256)
            s = scores_of(sl)
            ranks.append(target_ranks(s, self.targets[sl], self.inputs[sl]))
            if can_sample:
                sampled.append(sampled_ranks(s, self.targets[sl], self.inputs[sl],
                                             self.cfg.sampled_negatives, seed=self.seed + i))
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
        fn = torch_scores(lambda x: t(x, coarse=coarse), inputs, self.max_len)

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

    def _pass(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Intent logits and item scores of a student file for every user, one request each."""
        if key not in self._passes:
            runner = self._runner(key)
            intents, scores = [], []
            with stage_progress() as progress:
                task = progress.add_task(key, total=len(self.inputs), status="")
                for h in self.inputs:
                    i, s = runner.run(h)
                    intents.append(i)
                    scores.append(s)
                    progress.advance(task)
            self._passes[key] = (np.stack(intents), np.stack(scores))
        return self._passes[key]

    def student_onnx(self, mode: str, key: str, params: int) -> ModeResult:
        scores = self._pass(key)[1]
        runner = self._runner(key)
        lat = p50_ms(lambda i: runner.run(self.inputs[i]), self.n_lat)
        return self._full(mode, lambda sl: scores[sl], params,
                          self.m.files[key].stat().st_size, lat)

    def device_pass(self) -> tuple[np.ndarray, np.ndarray]:
        """What the int8 student computes per request: intent logits and item scores."""
        return self._pass("student_int8")

    def requests(self, intent_logits: np.ndarray) -> list[CollaborativeRequest]:
        """Device side: each user's upstream payload (intent tokens only)."""
        item_intents = self.m.vocab.codes[:, 0]
        return [build_request(logits, h, item_intents, top_m=self.cfg.top_intents,
                              coarse_len=self.cfg.coarse_history, k=10, model_version="eval")
                for logits, h in zip(intent_logits, self.inputs, strict=True)]

    def cloud_answer(self, req: CollaborativeRequest,
                     teacher_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cloud side for one request: retrieve under its intents, keep the teacher's top N."""
        pool = self.index.candidates(np.array(req.intent_tokens), np.array(req.intent_weights),
                                     self.cfg.n_retrieve, self.cfg.popular_share)
        top = np.argsort(-teacher_row[pool], kind="stable")[: self.cfg.n_candidates]
        return pool[top], teacher_row[pool[top]]

    def cloud_candidates(self, intent_logits: np.ndarray) -> tuple[list, list]:
        """All users' cloud answers; the coarse teacher reads only each request's tokens."""
        t = self.m.teacher
        reqs = self.requests(intent_logits)
        coarse = [np.array(r.coarse_history, dtype=np.int64) for r in reqs]
        cands, t_scores = [], []
        for i in range(0, len(reqs), 256):
            sl = slice(i, i + 256)
            full = torch_scores(lambda x: t(x, coarse=True), coarse, self.max_len)(sl)
            for row, req in zip(full, reqs[sl], strict=True):
                c, ts = self.cloud_answer(req, row)
                cands.append(c)
                t_scores.append(ts)
        self.bytes_up = float(np.mean([len(r.to_json_bytes()) for r in reqs]))
        return cands, t_scores

    def collaborative(self, device: tuple[np.ndarray, np.ndarray], weight: float,
                      cloud: tuple[list, list] | None = None) -> ModeResult:
        intent_logits, scores = device
        cands, t_scores = cloud or self.cloud_candidates(intent_logits)
        ranks = np.full(len(self.inputs), MISS_RANK, dtype=np.int64)
        for u, (c, ts) in enumerate(zip(cands, t_scores, strict=True)):
            items, _ = fuse(c, ts, scores[u], weight, exclude=self.inputs[u])
            hit = np.flatnonzero(items == self.targets[u])
            if len(hit):
                ranks[u] = hit[0]
        return ModeResult("collaborative", ranks, 0, 0, 0.0,
                          extra={"fusion_weight": weight, "bytes_up_json": self.bytes_up,
                                 "n_candidates": self.cfg.n_candidates,
                                 "coarse_history": self.cfg.coarse_history,
                                 "top_intents": self.cfg.top_intents})

    def collaborative_latency(self, weight: float) -> float:
        """Device student + cloud retrieval and coarse teacher + device fusion, one request."""
        runner = self._runner("student_int8")
        t, cfg = self.m.teacher, self.cfg

        def one(i: int) -> None:
            h = self.inputs[i]
            logits, scores = runner.run(h)
            req = build_request(logits, h, self.m.vocab.codes[:, 0], top_m=cfg.top_intents,
                                coarse_len=cfg.coarse_history, k=10, model_version="eval")
            coarse = torch.tensor([req.coarse_history], dtype=torch.int64)
            with torch.inference_mode():
                row = t(coarse, coarse=True)[0].numpy()
            cands, t_scores = self.cloud_answer(req, row)
            fuse(cands, t_scores, scores, weight, exclude=h)
        return p50_ms(one, self.n_lat)


def tune_fusion_weight(evaluator: Evaluator, grid: tuple[float, ...]) -> tuple[float, dict]:
    """Pick the teacher weight of the device's fusion on validation users."""
    device = evaluator.device_pass()
    cloud = evaluator.cloud_candidates(device[0])
    scores = {}
    for w in grid:
        r = evaluator.collaborative(device, w, cloud).ranks
        scores[w] = metrics_from_ranks(r, (10,))["ndcg@10"]
    best = max(scores, key=lambda w: scores[w])
    return best, {str(k): v for k, v in scores.items()}
