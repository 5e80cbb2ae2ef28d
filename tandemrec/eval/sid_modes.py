"""The semantic-id student's serving modes, on the same held-out users as the others.

- sid-student-fp32 / sid-student-int8: full ranking over the catalog, each item scored from
  its semantic id (the sum of its row scores); under the new-item protocol this includes the
  items the student never trained on, since every item has a semantic id.
- sid-edge-only: no network and no catalog table on the device. The device ranks the pool
  the cloud sent with its previous answer (the answer to the same user one interaction
  earlier: n_candidates items with their semantic ids); a target outside it is a miss.
- sid-collaborative: the device sends its intents as the table student's device does, and
  ranks the cloud's answer plus its own top items of the earlier pool with
  `tandem_contract.fusion.fuse`, scoring each of them from its semantic id. Under the new-item
  protocol the cloud flags the items newer than the device's model (`item_new`); the device
  treats those as unknown and scores them by the bundle's `device_missing` rule, as the table
  device does. The fusion setting is chosen on the fusion-tuning users, as for the table
  student. In every mode a new item scores without its hash row (trained on other items).

The device keeps every item of its history (the cloud told it their semantic ids), so these
modes read the whole history under either protocol.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from tandem_contract.fusion import (
    CloudCandidates,
    DeviceView,
)
from tandem_contract.semantic_ids import SidSpec, drop_hash, score_items, sid_device_side
from tandemrec.eval.modes import Evaluator, Models, ModeResult, fusion_grid, p50_ms, tune_fusion
from tandemrec.train.config import EvalConfig

if TYPE_CHECKING:
    from tandemrec.pipeline import RunContext

SID_MODES = ("sid-student-fp32", "sid-student-int8", "sid-collaborative", "sid-edge-only")


class SidEvaluator(Evaluator):
    """The Evaluator's users, cloud and fusion, with the semantic-id student on the device."""

    device_key = "sid_student_int8"

    def __init__(self, models: Models, catalog: np.ndarray, spec: SidSpec,
                 inputs: list[np.ndarray], targets: np.ndarray, cfg: EvalConfig,
                 seed: int = 0) -> None:
        super().__init__(models, inputs, targets, cfg, seed, device_inputs=inputs)
        self.catalog, self.sid_max_len = catalog, spec.max_len  # catalog: (N+1, L') rows per item
        self.spec = spec
        # Candidates' rows: the items newer than the device's model score without their hash
        # row, as the SDK scores the items the cloud flags (history events keep theirs).
        self.scored = drop_hash(catalog, ~self.view.known, spec.hash_buckets, spec.hash_count) \
            if self.has_unknown else catalog
        self.pools: dict[int, np.ndarray] = {}  # user -> items of the cloud's earlier answer

    def device_input(self, history: np.ndarray) -> np.ndarray:
        """(T, L'): the history's window as rows of the code table, what the device feeds."""
        return self.catalog[np.asarray(history, dtype=np.int64)[-self.sid_max_len:]]

    def _run(self, key: str, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        runner = self._runner(key)
        out = [runner.run(self.device_input(h)) for h in histories]
        return np.stack([i for i, _ in out]), np.stack([s for _, s in out]).astype(np.float32)

    def device_chunk(self, key: str, sl: slice) -> tuple[np.ndarray, np.ndarray]:
        """Intent logits (B, K1+1) and row scores (B, V); also the users' earlier pools."""
        self._pools(sl)
        return self._run(key, self.inputs[sl])

    def _pools(self, sl: slice) -> None:
        """The cloud's answer to each user one interaction earlier (its request built by
        this student), kept as the device's pool; not counted in the bytes sent."""
        users = range(*sl.indices(len(self.inputs)))
        todo = [u for u in users if u not in self.pools]
        if not todo:
            return
        earlier = [self.inputs[u][:-1] for u in todo]
        logits, _ = self._run(self.device_key, earlier)
        sent = self.bytes_up
        answers = self.cloud_chunk(sl, logits, earlier) if len(todo) == len(users) else \
            [self.cloud_chunk(slice(u, u + 1), logits[j:j + 1], [earlier[j]])[0]
             for j, u in enumerate(todo)]
        self.bytes_up = sent
        self.pools.update({u: a.items for u, a in zip(todo, answers, strict=True)})

    def device_side(self, scores: np.ndarray, answer: CloudCandidates,
                    u: int) -> tuple[np.ndarray, DeviceView]:
        """The SDK's view (`sid_device_side`): the items of the answer and its pool, scored
        from their semantic ids, those the cloud flags as newer than the device's model
        unknown to it (the bundle's `device_missing` rule scores them, as on the table device)."""
        items = np.union1d(answer.items, self.pools.get(u, answer.items[:0]))
        new = ~self.view.known[items] if self.has_unknown else np.zeros(len(items), dtype=bool)
        return sid_device_side(scores, items, self.m.vocab.codes[items], new, self.m.n_items,
                               self.spec)

    def full_ranking(self, mode: str, key: str, params: int) -> ModeResult:
        """Every catalog item scored from its semantic id."""
        def scores_of(sl: slice) -> np.ndarray:
            _, rows = self._run(key, self.inputs[sl])
            rows[:, 0] = 0.0
            s = rows[:, self.scored].sum(-1)  # (B, N+1)
            s[:, 0] = -np.inf
            return s

        runner = self._runner(key)
        lat = p50_ms(lambda i: runner.run(self.device_input(self.inputs[i])), self.n_lat)
        return self._full(mode, scores_of, params, self.m.files[key].stat().st_size, lat)

    def edge_only(self, params: int) -> ModeResult:
        """The earlier pool ranked by the device alone; a target outside it is a miss."""
        def scores_of(sl: slice) -> np.ndarray:
            _, rows = self.device_chunk(self.device_key, sl)
            out = np.full((len(rows), self.m.n_items + 1), -np.inf, dtype=np.float32)
            for b, u in enumerate(range(*sl.indices(len(self.inputs)))):
                pool = self.pools[u]
                out[b, pool] = score_items(rows[b], self.scored[pool])
            return out

        result = self._full("sid-edge-only", scores_of, params,
                            self.m.files[self.device_key].stat().st_size, 0.0)
        runner = self._runner(self.device_key)

        def one(i: int) -> None:
            _, rows = runner.run(self.device_input(self.inputs[i]))
            pool = self.pools[i]
            s = score_items(rows, self.scored[pool])
            pool[np.argpartition(-s, min(10, len(s) - 1))[:10]]
        result.p50_ms = p50_ms(one, self.n_lat)
        return result


def evaluate_sid(ctx: RunContext, models: Models) -> tuple[list[ModeResult], dict[str, Any]]:
    """The sid-* modes on the test users; the fusion setting chosen on the tuning users."""
    from tandemrec.checkpoints import load_sid_student
    from tandemrec.eval.modes import n_params
    from tandemrec.pipeline_sid import SID_CKPT, SID_FP32, SID_INT8, spec_of
    from tandemrec.progress import log
    from tandemrec.train.distill_sid import sid_catalog

    student, _ = load_sid_student(ctx.path(SID_CKPT))
    models = dataclasses.replace(models, files={**models.files,
                                                "sid_student_fp32": ctx.path(SID_FP32),
                                                "sid_student_int8": ctx.path(SID_INT8)})
    spec = spec_of(student)
    catalog = sid_catalog(models.vocab, spec.hash_buckets, spec.hash_count)
    cfg, params = ctx.cfg.eval, n_params(student)

    def evaluator(inputs: list[np.ndarray], targets: np.ndarray) -> SidEvaluator:
        return SidEvaluator(models, catalog, spec, inputs, targets, cfg, ctx.cfg.seed)

    # Every item has a semantic id, but under the new-item protocol the cloud flags the items
    # newer than the device's model, which the device scores by the rule chosen here.
    grid = fusion_grid(cfg, bool(ctx.new_items.any()))
    tuning: dict[str, float] = {}
    fusion = grid[0]
    if len(grid) > 1:
        fusion, tuning = tune_fusion(evaluator(*ctx.split.fusion_users()), grid,
                                     cfg.fusion_confidence, ctx.cfg.seed, cfg.fusion_tolerance)
        log(f"semantic-id student's fusion: {fusion} ({len(grid)} settings tried)")
    ev = evaluator(ctx.split.test_input, ctx.split.test_target)
    results = [ev.full_ranking("sid-student-fp32", "sid_student_fp32", params),
               ev.full_ranking("sid-student-int8", "sid_student_int8", params)]
    collab = dataclasses.replace(ev.collaborative(fusion), mode="sid-collaborative")
    collab.params = params + n_params(models.teacher)
    collab.size_bytes = models.files["sid_student_int8"].stat().st_size
    collab.p50_ms = ev.collaborative_latency(fusion)
    results += [collab, ev.edge_only(params)]
    return results, {"fusion": fusion.serving(), "fusion_tuning": tuning,
                     "hash_buckets": spec.hash_buckets, "hash_count": spec.hash_count,
                     "level_sizes": student.cfg.level_sizes}
