"""Distil the teacher into the edge student (KL on item scores, CE on next item and intent)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tandemrec.data.types import LeaveOneOutSplit
from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.student import Student, StudentConfig
from tandemrec.models.teacher import Teacher
from tandemrec.train.batches import n_batches, training_batches
from tandemrec.train.config import StudentTrainConfig
from tandemrec.train.loop import FitResult, fit, validation_ndcg
from tandemrec.train.teacher import next_item_loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Temperature-scaled KL(teacher || student) over real items at non-padded positions.

    Multiplied by T^2 so its gradients keep their scale as the temperature changes (Hinton et
    al., 2015). Column 0 (padding) is dropped from both distributions.
    """
    keep = targets.reshape(-1) != 0
    s = student_logits.reshape(-1, student_logits.shape[-1])[keep, 1:] / temperature
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1])[keep, 1:] / temperature
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True,
                    reduction="batchmean") * temperature**2


def student_config(n_items: int, vocab: IntentVocab, cfg: StudentTrainConfig) -> StudentConfig:
    return StudentConfig(n_items=n_items, n_intents=vocab.n_intents, d_model=cfg.d_model,
                         n_layers=cfg.n_layers, n_heads=cfg.n_heads, mlp_hidden=cfg.mlp_hidden,
                         max_len=cfg.max_len, dropout=cfg.dropout)


def init_from_teacher(student: Student, teacher: Teacher) -> None:
    """Start the student's item table at the top principal directions of the teacher's items.

    Items that the teacher places close together start close together on the device too, so
    distillation spends its epochs on the sequence model rather than on rediscovering items.
    """
    with torch.no_grad():
        vecs = teacher.items()  # (N+1, Dt)
        centred = vecs - vecs[1:].mean(0, keepdim=True)
        u, s, _ = torch.linalg.svd(centred[1:], full_matrices=False)
        d = student.cfg.d_model
        proj = u[:, :d] * s[:d]  # (N, d)
        proj = proj / proj.pow(2).mean().sqrt() * 0.5
        table = torch.zeros(student.cfg.n_items + 1, d)
        table[1:] = proj
        student.items.weight_t.copy_(table.T)


def distill_student(teacher: Teacher, split: LeaveOneOutSplit, n_items: int,
                    vocab: IntentVocab, cfg: StudentTrainConfig,
                    seed: int) -> tuple[Student, FitResult]:
    """Train the student against the teacher's soft targets; early stopping on validation."""
    torch.manual_seed(seed)
    student = Student(student_config(n_items, vocab, cfg))
    init_from_teacher(student, teacher)
    teacher.eval()
    intent_of = torch.from_numpy(vocab.codes[:, 0].astype(np.int64))
    rng = np.random.default_rng(seed + 2)
    t_max_len = teacher.cfg.max_len

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher.scores(teacher.hidden(x[:, -t_max_len:]))
        h = student.hidden(x)  # (B, T, D)
        intent_logits, item_scores = student.heads(h)
        loss = cfg.w_kd * kd_loss(item_scores, t_logits, y, cfg.temperature)
        loss = loss + cfg.w_item * next_item_loss(item_scores, y)
        return loss + cfg.w_intent * next_item_loss(intent_logits, intent_of[y])

    def validate() -> dict[str, float]:
        return validation_ndcg(lambda x: student(x)[1], split.valid_input, split.valid_target,
                               cfg.max_len)

    result = fit(student, student.parameters(), name="distill",
                 batches=lambda _: training_batches(split.train, cfg.max_len, cfg.batch_size, rng),
                 n_batches=n_batches(split.train, cfg.batch_size), loss_fn=loss_fn,
                 validate=validate, lr=cfg.lr, max_epochs=cfg.max_epochs, patience=cfg.patience,
                 warmup_steps=cfg.warmup_steps, max_minutes=cfg.max_minutes)
    return student, result
