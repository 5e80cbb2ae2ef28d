"""Distil the teacher into the semantic-id student: the full-table student's losses, with the
item head composed from the code table (models/sid_student.py).

The teacher's top-K soft targets, the batches and the positions scored are distill.py's. The
student reads each history item as its rows of the code table, and its catalog-wide scores
come from `SidStudent.catalog_head`, the sum of each item's code vectors: the catalog exists
only during training (and offline evaluation), never in the device's model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tandem_contract.semantic_ids import sid_rows
from tandemrec.data.types import LeaveOneOutSplit
from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.sid_student import SidStudent, SidStudentConfig
from tandemrec.models.student import Student
from tandemrec.models.teacher_ensemble import AnyTeacher
from tandemrec.train.batches import loss_positions, n_batches, training_batches
from tandemrec.train.config import CompressConfig, StudentTrainConfig
from tandemrec.train.distill import distill_batches, kd_positions, known_items, teacher_targets
from tandemrec.train.loop import FitResult, fit, validation_ndcg
from tandemrec.train.losses import SoftTargets, chunked_head_loss
from tandemrec.train.precision import autocast, matmul_dtype


def level_sizes(vocab: IntentVocab) -> list[int]:
    """Codes per level of the vocabulary's semantic ids."""
    return [int(c.shape[0]) for c in vocab.centroids]


def sid_catalog(vocab: IntentVocab, hash_buckets: int, hash_count: int = 1) -> np.ndarray:
    """(N+1, L') every item's rows of the code table (row 0 of it: padding, all zeros)."""
    ids = np.arange(vocab.n_items + 1, dtype=np.int64)
    return sid_rows(vocab.codes, level_sizes(vocab), hash_buckets, ids, hash_count)


def sid_student_config(vocab: IntentVocab, cfg: StudentTrainConfig) -> SidStudentConfig:
    return SidStudentConfig(level_sizes=level_sizes(vocab), hash_buckets=cfg.hash_buckets,
                            hash_count=cfg.hash_count, **cfg.shape())


def init_codes_from_teacher(student: SidStudent, teacher: AnyTeacher, catalog: np.ndarray,
                            known: np.ndarray) -> None:
    """Start each code's vector at the mean of its items' residual teacher directions.

    As `distill.init_from_teacher`: the known items' teacher vectors, projected on their top
    principal directions; level 1 takes the mean of its items, each further level the mean of
    what the levels before it left (residual k-means over the same space); a hash bucket, as one
    more level, the mean of what the codes left of its items (so it starts as their residual).
    """
    with torch.no_grad():
        vecs = teacher.eval().item_vectors()[torch.from_numpy(known)]  # (N_known, Dt)
        u, s, _ = torch.linalg.svd(vecs - vecs.mean(0, keepdim=True), full_matrices=False)
        d = student.cfg.d_model
        resid = u[:, :d] * s[:d]
        resid = resid / resid.pow(2).mean().sqrt() * 0.5
        if resid.shape[1] < d:
            resid = torch.cat([resid, torch.zeros(resid.shape[0], d - resid.shape[1])], 1)
        table = torch.zeros(student.cfg.n_rows, d)
        rows = torch.from_numpy(catalog[known])  # (N_known, L')
        for level in range(student.cfg.row_width):
            r = rows[:, level]
            sums = torch.zeros_like(table).index_add_(0, r, resid)
            count = torch.zeros(len(table)).index_add_(0, r, torch.ones(len(r)))
            means = sums / count.clamp(min=1)[:, None]
            table[count > 0] = means[count > 0]
            resid = resid - means[r]
        table[0] = 0.0
        student.items.weight_t.copy_(table.T)


def distill_sid_student(teacher: AnyTeacher, split: LeaveOneOutSplit, vocab: IntentVocab,
                        cfg: StudentTrainConfig, seed: int,
                        exclude: np.ndarray | None = None) -> tuple[SidStudent, FitResult]:
    """Train the semantic-id student against the teacher's soft targets, as `distill_student`.

    `exclude` (bool, (N+1,)): items new to the device. They stay out of the soft targets and
    out of the softmax the student trains with (the device does not know they exist), but they
    keep their semantic ids, so the trained student can score them.
    """
    torch.manual_seed(seed)
    student = SidStudent(sid_student_config(vocab, cfg))
    view = SidView.build(vocab, student.cfg, exclude)
    init_codes_from_teacher(student, teacher, view.catalog, view.known)
    max_len = min(cfg.max_len, teacher.cfg.max_len)
    targets = teacher_targets(teacher, split.train, max_len, cfg.kd_top_k, cfg.temperature,
                              exclude=exclude)
    rng = np.random.default_rng(seed + 2)
    gen = torch.Generator().manual_seed(seed + 2)
    mm_dtype = matmul_dtype(cfg.precision)

    def loss_fn(x: torch.Tensor, y: torch.Tensor, t_idx: torch.Tensor,
                t_logp: torch.Tensor) -> torch.Tensor:
        keep = kd_positions(x, y, cfg.loss_positions, gen)
        soft = SoftTargets(p=t_logp[keep].exp(), idx=view.renum[t_idx[keep]],
                           temperature=cfg.temperature, weight=cfg.w_kd)
        return view.loss(student, x, y, keep, soft, cfg.w_item, cfg.w_intent, mm_dtype)

    result = fit(student, student.parameters(), name="distill-sid",
                 batches=lambda _: distill_batches(split, targets, max_len, cfg.batch_size, rng),
                 n_batches=n_batches(split.train, cfg.batch_size), loss_fn=loss_fn,
                 validate=view.validator(student, split, cfg.max_len), lr=cfg.lr,
                 max_epochs=cfg.max_epochs, patience=cfg.patience,
                 warmup_steps=cfg.warmup_steps, max_minutes=cfg.max_minutes, keep=cfg.keep)
    return student, result


def finetune_sid_student(student: SidStudent, split: LeaveOneOutSplit, vocab: IntentVocab,
                         cfg: CompressConfig, seed: int, exclude: np.ndarray | None = None,
                         table: Student | None = None) -> FitResult:
    """The table student's final stage for the semantic-id student: align to a frozen
    distribution over the catalog (KL at T=1) with the next-item and next-intent losses, at
    `cfg.lr` for `cfg.finetune_epochs`, so both students train for the same epochs.

    The reference is the student's own frozen copy (born-again self-distillation, Furlanello
    et al., 2018), or with `table` the compressed table student of the same run: a teacher
    assistant (Mirzadeh et al., 2020) that is closer to the semantic-id student's capacity than
    the teacher and ranks better than it does alone. Seeded on its own, so it gives the same
    weights whether it follows the distillation or resumes from a saved student.
    """
    torch.manual_seed(seed + 4)
    view = SidView.build(vocab, student.cfg, exclude)
    reference = (view.frozen_scores(student) if table is None
                 else view.table_scores(table.eval()))
    rng = np.random.default_rng(seed + 4)
    gen = torch.Generator().manual_seed(seed + 4)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        keep = loss_positions(y, cfg.loss_positions, gen)
        with torch.no_grad():
            ref_scores = reference(x, keep)
        soft = SoftTargets(p=ref_scores.softmax(-1))
        return view.loss(student, x, y, keep, soft, 1.0, 0.5, None)

    return fit(student, student.parameters(), name="finetune-sid",
               batches=lambda _: training_batches(split.train, student.cfg.max_len,
                                                  cfg.batch_size, rng),
               n_batches=n_batches(split.train, cfg.batch_size), loss_fn=loss_fn,
               validate=view.validator(student, split, student.cfg.max_len), lr=cfg.lr,
               max_epochs=cfg.finetune_epochs, patience=cfg.finetune_epochs, warmup_steps=10,
               max_minutes=cfg.max_minutes)


@dataclass(frozen=True)
class SidView:
    """The catalog as the semantic-id student trains on it: every item's rows of the code
    table, and the known items renumbered 1..N_known for the softmax (0 = padding)."""

    catalog: np.ndarray  # (N+1, L') rows of every item
    known: np.ndarray  # (N+1,) bool: items in the softmax (not padding, not new)
    kept: torch.Tensor  # (N_known+1,) item ids in softmax order, padding first
    rows: torch.Tensor  # (N+1, L')
    kept_rows: torch.Tensor  # (N_known+1, L')
    renum: torch.Tensor  # (N+1,) item id -> softmax index (0 for items left out)
    intent_of: torch.Tensor  # (N+1,) level-1 code of each item

    @classmethod
    def build(cls, vocab: IntentVocab, cfg: SidStudentConfig,
              exclude: np.ndarray | None) -> SidView:
        n = vocab.n_items
        known = known_items(n, exclude)
        catalog = sid_catalog(vocab, cfg.hash_buckets, cfg.hash_count)
        kept = np.concatenate([[0], np.flatnonzero(known)])
        renum = np.zeros(n + 1, dtype=np.int64)
        renum[kept] = np.arange(len(kept))
        return cls(catalog, known, torch.from_numpy(kept), torch.from_numpy(catalog),
                   torch.from_numpy(catalog[kept]),
                   torch.from_numpy(renum),
                   torch.from_numpy(vocab.codes[:, 0].astype(np.int64)))

    def loss(self, student: SidStudent, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor,
             soft: SoftTargets, w_item: float, w_intent: float,
             mm_dtype: torch.dtype | None) -> torch.Tensor:
        """Catalog loss (soft targets and next item) plus the next intent, at positions `keep`."""
        with autocast(mm_dtype):
            h = student.hidden(self.rows[x])[keep]  # (M, D)
        y_k = y[keep]
        vecs, bias, scale = student.catalog_head(self.kept_rows)  # (N_known+1, D), (N_known+1,)
        loss = chunked_head_loss(h, vecs, bias, self.renum[y_k], scale, w_item, soft,
                                 mm_dtype=mm_dtype)
        return loss + w_intent * F.cross_entropy(student.intent_head(h), self.intent_of[y_k])

    def known_scores(self, student: SidStudent, x: torch.Tensor, keep: torch.Tensor,
                     head: tuple[torch.Tensor, torch.Tensor, float] | None = None
                     ) -> torch.Tensor:
        """(M, N_known+1) scores of the known items at positions `keep`; padding never.
        `head`: the student's `catalog_head(kept_rows)` where the caller already holds it."""
        h = student.hidden(self.rows[x])[keep]
        vecs, bias, scale = head if head is not None else student.catalog_head(self.kept_rows)
        s = (h @ vecs.T) * scale + bias
        s[..., 0] = -torch.inf
        return s

    def frozen_scores(self, student: SidStudent) -> Callable[[torch.Tensor, torch.Tensor],
                                                             torch.Tensor]:
        """`known_scores` of a frozen copy of `student` as it is now (its head built once)."""
        ref = copy.deepcopy(student).eval()
        with torch.no_grad():
            head = ref.catalog_head(self.kept_rows)
        return lambda x, keep: self.known_scores(ref, x, keep, head)

    def table_scores(self, table: Student) -> Callable[[torch.Tensor, torch.Tensor],
                                                       torch.Tensor]:
        """(M, N_known+1) a table student's scores of the known items; padding never."""

        def scores(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            s = table.heads(table.hidden(x)[keep])[1][:, self.kept]
            s[:, 0] = -torch.inf
            return s

        return scores

    def validator(self, student: SidStudent, split: LeaveOneOutSplit,
                  max_len: int) -> Callable[[], dict[str, float]]:
        """Validation NDCG@10 over the known items (new ones are never a device's answer)."""
        unknown = torch.from_numpy(~self.known)

        def scores(x: torch.Tensor) -> torch.Tensor:
            s = student.catalog_scores(self.rows[x], self.rows)
            s[:, unknown] = -torch.inf
            return s

        return lambda: validation_ndcg(scores, split.valid_input, split.valid_target, max_len)
