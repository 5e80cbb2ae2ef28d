"""Distil the teacher into the edge student (KL on item scores, CE on next item and intent)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tandemrec.data.types import LeaveOneOutSplit
from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.student import Student, StudentConfig
from tandemrec.models.teacher_ensemble import AnyTeacher
from tandemrec.progress import stage_progress
from tandemrec.train.batches import (
    Rows,
    Shard,
    eval_batches,
    left_pad,
    length_buckets,
    local_rows,
    loss_positions,
    n_batches,
    pad_to,
    padded_length,
)
from tandemrec.train.config import StudentTrainConfig
from tandemrec.train.device import Runtime, current
from tandemrec.train.loop import FitResult, fit, validation_ndcg
from tandemrec.train.losses import SoftTargets, chunked_head_loss


@dataclass
class TeacherTargets:
    """The teacher's top-K next-item distribution at every training position, computed once.

    The teacher is frozen and each user's training input is the same every epoch, so its soft
    targets are too: computing them once takes the teacher (and its catalog-wide softmax) out
    of the distillation loop, which is what made distillation cost 3x a teacher epoch.
    """
    idx: list[np.ndarray]  # per user (n_positions, K) int32 item ids, best first
    logp: list[np.ndarray]  # per user (n_positions, K) float16 log-probs at the temperature,
    # renormalised over the K items


def known_items(n_items: int, exclude: np.ndarray | None) -> np.ndarray:
    """(N+1,) bool: the items the device trains on (not padding, not `exclude`d as new)."""
    known = np.ones(n_items + 1, dtype=bool) if exclude is None else ~np.asarray(exclude, bool)
    known[0] = False
    return known


def teacher_targets(teacher: AnyTeacher, seqs: list[np.ndarray], max_len: int, k: int,
                    temperature: float, batch_size: int = 64,
                    exclude: np.ndarray | None = None,
                    device: torch.device | None = None) -> TeacherTargets:
    """Top-`k` teacher log-probs (at `temperature`) for every position of every training input.

    `exclude` (bool, (N+1,)) masks items out of the targets before the top-k: under the
    fresh-catalog protocol the items new to the device, which the student must never be pushed
    towards. The distribution is renormalised over the items kept; `k` shrinks to their number
    when fewer are left. `device`: where the teacher is (the targets are kept on the CPU).
    """
    teacher.eval()
    n_known = teacher.cfg.n_items - (int(exclude[1:].sum()) if exclude is not None else 0)
    k = min(k, n_known)
    mask = torch.from_numpy(np.asarray(exclude, dtype=bool)).to(device) \
        if exclude is not None else None
    inputs = [s[-(max_len + 1):-1] for s in seqs]
    order = np.argsort([len(s) for s in inputs], kind="stable")  # similar lengths batch together
    idx: list[np.ndarray] = [np.zeros((0, k), np.int32)] * len(inputs)
    logp: list[np.ndarray] = [np.zeros((0, k), np.float16)] * len(inputs)
    with torch.inference_mode(), stage_progress() as progress:
        task = progress.add_task("teacher targets", total=len(inputs), status="")
        for sl, x in eval_batches([inputs[i] for i in order], max_len, batch_size):
            scores = teacher.position_scores(x if device is None else x.to(device)) / temperature
            # scores: (B, T, N+1)
            scores[..., 0] = -torch.inf
            if mask is not None:
                scores[..., mask] = -torch.inf
            top, top_idx = scores.topk(k, dim=-1)  # (B, T, K)
            top, top_idx = top.log_softmax(-1).cpu(), top_idx.cpu()
            for r, i in enumerate(order[sl]):
                n = len(inputs[i])
                if n:
                    idx[i] = top_idx[r, -n:].numpy().astype(np.int32)
                    logp[i] = top[r, -n:].numpy().astype(np.float16)
            progress.update(task, advance=x.shape[0])
    return TeacherTargets(idx, logp)


def topk_kd_loss(scores: torch.Tensor, t_idx: torch.Tensor, t_logp: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """Cross-entropy from the teacher's top-K distribution to the student's, T^2-scaled.

    scores (M, N+1) student logits at the kept positions; t_idx, t_logp (M, K). Equals
    KL(teacher_K || student) up to the teacher's entropy, a constant. Written as a logsumexp
    and a gather so no (M, N+1) log-softmax is materialised: on this CPU the catalog-sized
    elementwise passes, not the matmuls, are what a step costs.
    """
    lse = torch.logsumexp(scores / temperature, -1)  # (M,)
    s_k = scores.gather(1, t_idx) / temperature  # (M, K)
    return (lse - (t_logp.exp() * s_k).sum(-1)).mean() * temperature**2


def distill_batches(split: LeaveOneOutSplit, targets: TeacherTargets, max_len: int,
                    batch_size: int, rng: np.random.Generator,
                    shard: Shard | None = None) -> Iterator[tuple]:
    """(inputs, next items, teacher top-K ids, teacher log-probs), all left-padded alike.

    With `shard` (DDP), this process's rows of each global batch, as wide as the whole batch,
    and where they sit (a Rows) last.
    """
    for rows in length_buckets(split.train, batch_size, rng):
        seqs = [split.train[i][-(max_len + 1):] for i in rows]
        k = targets.idx[rows[0]].shape[1]
        stand_in = False
        if shard is None:
            full, mine = left_pad(seqs, max_len + 1), None
        else:
            mine, stand_in = local_rows(shard, len(rows))
            full = pad_to(seqs[mine.start:mine.stop], padded_length(seqs, max_len + 1))
            rows = rows[mine.start:mine.stop]
        t = full.shape[1] - 1
        t_idx = np.zeros((len(rows), t, k), dtype=np.int64)
        t_logp = np.zeros((len(rows), t, k), dtype=np.float32)
        for r, i in enumerate(rows):
            n = len(targets.idx[i])
            t_idx[r, t - n:] = targets.idx[i]
            t_logp[r, t - n:] = targets.logp[i]
        batch = (full[:, :-1], full[:, 1:] * (not stand_in), torch.from_numpy(t_idx),
                 torch.from_numpy(t_logp))
        yield batch if mine is None else (*batch, mine)


def kd_positions(x: torch.Tensor, y: torch.Tensor, share: float,
                 gen: torch.Generator | None = None, rows: Rows | None = None) -> torch.Tensor:
    """(B, T) bool: positions scored this step, only where the input holds an item.

    The teacher's targets exist where it read an item. The first target of a short history
    sits after a padding input and has none: scoring it against the zero-filled rows would
    teach the student to put K units of mass on the padding column.
    """
    return loss_positions(y, share, gen, rows) & (x != 0)


def student_config(n_items: int, vocab: IntentVocab, cfg: StudentTrainConfig) -> StudentConfig:
    return StudentConfig(n_items=n_items, n_intents=vocab.n_intents, **cfg.shape())


def init_from_teacher(student: Student, teacher: AnyTeacher,
                      exclude: np.ndarray | None = None) -> None:
    """Start the student's item table at the top principal directions of the teacher's items.

    Items that the teacher places close together start close together on the device too, so
    distillation spends its epochs on the sequence model rather than on rediscovering items.
    Items in `exclude` (bool, (N+1,): new to the device) take no part and start at zero, so
    the student inherits nothing the teacher learnt about them.
    """
    with torch.no_grad():
        vecs = teacher.eval().item_vectors()  # (N+1, Dt); an ensemble's members side by side
        known = torch.from_numpy(known_items(vecs.shape[0] - 1, exclude))
        rows = vecs[known]
        u, s, _ = torch.linalg.svd(rows - rows.mean(0, keepdim=True), full_matrices=False)
        d = student.cfg.d_model
        proj = u[:, :d] * s[:d]  # (N_known, d)
        proj = proj / proj.pow(2).mean().sqrt() * 0.5
        table = torch.zeros(student.cfg.n_items + 1, proj.shape[1])
        table[known] = proj
        if table.shape[1] < d:  # fewer known items than dimensions: pad the directions
            table = torch.cat([table, torch.zeros(table.shape[0], d - table.shape[1])], 1)
        student.items.weight_t.copy_(table.T)


def distill_student(teacher: AnyTeacher, split: LeaveOneOutSplit, n_items: int,
                    vocab: IntentVocab, cfg: StudentTrainConfig, seed: int,
                    exclude: np.ndarray | None = None,
                    rt: Runtime | None = None) -> tuple[Student, FitResult]:
    """Train the student against the teacher's soft targets; early stopping on validation.

    `exclude` (bool, (N+1,)): items new to the device under the fresh-catalog protocol. They
    are kept out of the teacher's soft targets and out of the item table's initialisation;
    `split` must already hold none of them (pipeline: drop_new_targets(device_split, new)).
    The teacher and the student are on the CPU before and after; both work on `rt`'s device
    (default: this process's), and under DDP every process computes all the soft targets.
    """
    rt = rt or current()
    torch.manual_seed(seed)
    student = Student(student_config(n_items, vocab, cfg))
    init_from_teacher(student, teacher, exclude)
    rt.place(student)
    # The student reads the same window as the teacher so that their positions line up.
    max_len = min(cfg.max_len, teacher.cfg.max_len)
    targets = teacher_targets(rt.place(teacher), split.train, max_len, cfg.kd_top_k,
                              cfg.temperature, exclude=exclude, device=rt.device)
    teacher.cpu().eval()
    intent_of = torch.from_numpy(vocab.codes[:, 0].astype(np.int64)).to(rt.device)
    rng = np.random.default_rng(seed + 2)
    gen = torch.Generator().manual_seed(seed + 2)

    mm_dtype = rt.matmul_dtype(cfg.precision)

    def loss_fn(x: torch.Tensor, y: torch.Tensor, t_idx: torch.Tensor, t_logp: torch.Tensor,
                rows: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        keep = kd_positions(x, y, cfg.loss_positions, gen, rows)
        with rt.autocast(mm_dtype):
            h = student.hidden(x)[keep]  # (M, D)
        y_k = y[keep]
        soft = SoftTargets(p=t_logp[keep].exp(), idx=t_idx[keep], temperature=cfg.temperature,
                           weight=cfg.w_kd)
        vecs, bias, scale = student.item_head()
        # = w_kd * topk_kd + w_item * CE on the item scores, never built as one (M, N+1) matrix
        loss = chunked_head_loss(h, vecs, bias, y_k, scale, cfg.w_item, soft, mm_dtype=mm_dtype)
        intent = F.cross_entropy(student.intent_head(h), intent_of[y_k])
        return loss + cfg.w_intent * intent, keep.sum()

    def validate() -> dict[str, float]:
        return validation_ndcg(lambda x: student(x)[1], split.valid_input, split.valid_target,
                               cfg.max_len, rt=rt)

    result = fit(student, student.parameters(), name="distill",
                 batches=lambda _: distill_batches(split, targets, max_len, cfg.batch_size, rng,
                                                   rt.shard()),
                 n_batches=n_batches(split.train, cfg.batch_size), loss_fn=loss_fn,
                 validate=validate, lr=cfg.lr, max_epochs=cfg.max_epochs, patience=cfg.patience,
                 warmup_steps=cfg.warmup_steps, max_minutes=cfg.max_minutes, keep=cfg.keep, rt=rt)
    return student.cpu().eval(), result
