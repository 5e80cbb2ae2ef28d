"""Compress the student: SVD low-rank factorisation with per-layer ranks, then progressive
layer-wise alignment (OD-LLM, Yin et al., 2026) to recover what truncation lost.

1. Ranks: every singular value of every factorisable matrix competes for a global parameter
   budget by the share of its matrix's energy it keeps per parameter it costs; so each layer
   gets the rank its spectrum deserves rather than one rank for all.
2. Initialise the factors from the truncated SVD (W ~ U_r S_r V_r^T, split as sqrt(S) each side).
3. Progressive alignment: stage 0 aligns the item vectors, stage l aligns the output of block l
   with the uncompressed student's (MSE), training only that block; earlier stages are done
   first so each stage starts from aligned inputs. If alignment lowers validation NDCG@10, the
   fine-tuning starts from the plain SVD factors instead (both scores go in the report).
4. A final stage aligns the output distribution (KL to the uncompressed student plus the
   next-item and next-intent losses), with early stopping on validation NDCG@10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tandemrec.data.types import LeaveOneOutSplit
from tandemrec.models.blocks import LowRankLinear
from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.student import Student, StudentConfig
from tandemrec.progress import log, stage_progress
from tandemrec.train.batches import loss_positions, n_batches, training_batches
from tandemrec.train.config import CompressConfig
from tandemrec.train.device import Runtime, current
from tandemrec.train.loop import FitResult, fit, validation_ndcg
from tandemrec.train.losses import SoftTargets, chunked_head_loss
from tandemrec.train.teacher import next_item_loss

LINEARS = ("qkv", "proj", "gate_up", "down")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Factorisable:
    key: tuple  # ("emb",) or ("layer", i, name)
    weight: torch.Tensor  # (out, in) as nn.Linear stores it; the item table as (N+1, D)


def factorisable(student: Student) -> list[Factorisable]:
    """The matrices SVD may factorise: the item table and every linear layer in the blocks."""
    mats = [Factorisable(("emb",), student.items.dense().detach())]
    blocks: list[Any] = list(student.decoder.blocks)  # nn.ModuleList items type as Module
    for i, block in enumerate(blocks):
        mods: dict[str, nn.Linear] = {"qkv": block.attn.qkv, "proj": block.attn.proj,
                "gate_up": block.mlp.gate_up, "down": block.mlp.down}
        for name in LINEARS:
            mats.append(Factorisable(("layer", i, name), mods[name].weight.detach()))
    return mats


def _rank_for(energy: np.ndarray, tau: float) -> int:
    """Smallest rank whose leading singular values keep a share `tau` of the energy."""
    cum = np.cumsum(energy) / energy.sum()
    return min(len(energy), int(np.searchsorted(cum, tau - 1e-12)) + 1)


def _cost(shape: tuple[int, ...], rank: int) -> tuple[int, bool]:
    """Parameters of a rank-r factorisation, or of the dense matrix if that is smaller."""
    factored = rank * sum(shape)
    dense = shape[0] * shape[1]
    return (factored, True) if factored < dense else (dense, False)


def choose_ranks(student: Student, param_ratio: float, min_rank: int = 4) -> dict:
    """Per-matrix ranks so the compressed student has about `param_ratio` of the parameters.

    Every matrix keeps the same share tau of its spectral energy, with tau as high as the
    budget allows (bisection): a matrix with a flat spectrum gets a higher rank than one whose
    energy sits in a few directions. Where a factorisation would not be smaller, the matrix
    stays dense.
    """
    mats = factorisable(student)
    total = n_params(student)
    dense_cost = sum(m.weight.numel() for m in mats)
    budget = param_ratio * total - (total - dense_cost)  # what the matrices may use
    energy = [torch.linalg.svdvals(m.weight).numpy() ** 2 for m in mats]

    def plan(tau: float) -> tuple[int, list[int]]:
        ranks = [max(min_rank, _rank_for(e, tau)) for e in energy]
        return sum(_cost(tuple(m.weight.shape), r)[0]
                   for m, r in zip(mats, ranks, strict=True)), ranks

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if plan(mid)[0] <= budget else (lo, mid)
    _, ranks = plan(lo)
    out: dict = {"emb": ranks[0], "energy_kept": lo,
                 "layers": [{} for _ in student.decoder.blocks]}
    for m, r in zip(mats[1:], ranks[1:], strict=True):
        _, i, name = m.key
        out["layers"][i][name] = r if _cost(tuple(m.weight.shape), r)[1] else None
    return out


def _split_svd(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in) ~ B @ A with B (out, r), A (r, in), sharing sqrt(S) between the sides."""
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def svd_compress(student: Student, param_ratio: float) -> Student:
    """A factorised copy of the student, initialised from truncated SVDs."""
    ranks = choose_ranks(student, param_ratio)
    cfg = StudentConfig(**{**student.cfg.to_dict(), "ranks": ranks})
    small = Student(cfg)
    state = {k: v for k, v in student.state_dict().items()}
    own = small.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape == value.shape:
            own[key] = value.clone()
    small.load_state_dict(own)
    with torch.no_grad():
        b, a = _split_svd(student.items.dense(), ranks["emb"])  # (N+1, r), (r, D)
        small.items.u_t.copy_(b.T)
        small.items.v.copy_(a)
        for block_s, block_o, lr in zip(small.decoder.blocks, student.decoder.blocks,
                                        ranks["layers"], strict=True):
            for name, parent_s, parent_o in (
                ("qkv", block_s.attn, block_o.attn), ("proj", block_s.attn, block_o.attn),
                ("gate_up", block_s.mlp, block_o.mlp), ("down", block_s.mlp, block_o.mlp),
            ):
                mod_s, mod_o = getattr(parent_s, name), getattr(parent_o, name)
                if isinstance(mod_s, LowRankLinear):
                    b, a = _split_svd(mod_o.weight, lr[name])
                    mod_s.up.weight.copy_(b)
                    mod_s.down.weight.copy_(a)
    return small


def _stage_params(small: Student, stage: int) -> list[nn.Parameter]:
    """What stage `stage` trains: the item table and input norm (0), else block `stage - 1` alone.

    Training everything below the aligned point (session 4) moved the item table, which is
    also the tied output head, towards hidden states: validation NDCG@10 fell from 0.149 to
    0.131 before fine-tuning. One block per stage leaves the head to the embedding stage.
    """
    if stage == 0:
        return list(small.items.parameters()) + list(small.in_norm.parameters())
    return list(small.decoder.blocks[stage - 1].parameters())


def progressive_align(small: Student, student: Student, split: LeaveOneOutSplit,
                      cfg: CompressConfig, seed: int, rt: Runtime | None = None) -> list[dict]:
    """Stage by stage, match the compressed model's states to the uncompressed student's."""
    rt = rt or Runtime()
    rng = np.random.default_rng(seed + 3)
    n_layers = len(student.decoder.blocks)
    history = []
    student.eval()
    with stage_progress() as progress:
        task = progress.add_task("align", total=(n_layers + 1) * cfg.align_steps, status="")
        for stage in range(n_layers + 1):
            params = _stage_params(small, stage)
            # At 3x this rate (session 1) alignment lowered validation NDCG before fine-tuning
            # recovered it: the regression overshoots what the later layers expect.
            opt = torch.optim.Adam(params, lr=cfg.lr)
            # No dropout: the reference runs without it, and regressing a noisy output onto a
            # clean one shrinks the weights instead of matching them.
            small.eval()
            losses: list[float] = []
            step = 0
            while step < cfg.align_steps:
                for x, _ in rt.batches(training_batches(split.train, small.cfg.max_len,
                                                        cfg.batch_size, rng)):
                    with torch.no_grad():
                        if stage == 0:
                            ref = student.in_norm(student.items.lookup(x))
                        else:
                            ref = student.hidden(x, return_hidden=True)[1][stage - 1]
                    if stage == 0:
                        out = small.in_norm(small.items.lookup(x))
                    else:
                        out = small.hidden(x, return_hidden=True)[1][stage - 1]
                    valid = (x != 0)[..., None]
                    loss = ((out - ref) ** 2 * valid).sum() / valid.sum() / out.shape[-1]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(loss.item())
                    step += 1
                    progress.update(task, advance=1,
                                    status=f"stage {stage} mse {np.mean(losses[-20:]):.4f}")
                    if step >= cfg.align_steps:
                        break
            history.append({"stage": stage, "mse_start": losses[0], "mse_end": losses[-1]})
            log(f"align stage {stage}: mse {losses[0]:.4f} -> {np.mean(losses[-20:]):.4f}")
    small.eval()
    return history


def finetune_compressed(small: Student, student: Student, split: LeaveOneOutSplit,
                        vocab: IntentVocab, cfg: CompressConfig, seed: int,
                        rt: Runtime | None = None) -> FitResult:
    """Final stage: align output distributions to the uncompressed student (KL at T=1)."""
    rt = rt or Runtime()
    rng = np.random.default_rng(seed + 4)
    intent_of = torch.from_numpy(vocab.codes[:, 0].astype(np.int64)).to(rt.device)
    mm_dtype = rt.matmul_dtype("fp32")  # float32 on a CPU, as always; bf16 on a GPU

    gen = torch.Generator().manual_seed(seed + 4)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        keep = loss_positions(y, cfg.loss_positions, gen)
        y_k = y[keep]
        with torch.no_grad():
            _, ref_scores = student.heads(student.hidden(x)[keep])  # (M, N+1)
            ref_scores[:, 0] = -torch.inf  # padding is never a next item
        with rt.autocast(mm_dtype):
            h = small.hidden(x)[keep]  # (M, D)
        vecs, bias, scale = small.item_head()
        loss = chunked_head_loss(h, vecs, bias, y_k, scale, 1.0,
                                 SoftTargets(p=ref_scores.softmax(-1)), mm_dtype=mm_dtype)
        return loss + 0.5 * next_item_loss(small.intent_head(h), intent_of[y_k])

    def validate() -> dict[str, float]:
        return validation_ndcg(lambda x: small(x)[1], split.valid_input, split.valid_target,
                               small.cfg.max_len, rt=rt)

    return fit(small, small.parameters(), name="compress-finetune",
               batches=lambda _: training_batches(split.train, small.cfg.max_len,
                                                  cfg.batch_size, rng),
               n_batches=n_batches(split.train, cfg.batch_size), loss_fn=loss_fn,
               validate=validate, lr=cfg.lr, max_epochs=cfg.finetune_epochs,
               patience=cfg.finetune_epochs, warmup_steps=10, max_minutes=cfg.max_minutes, rt=rt)


def compress_student(student: Student, split: LeaveOneOutSplit, vocab: IntentVocab,
                     cfg: CompressConfig, seed: int,
                     rt: Runtime | None = None) -> tuple[Student, dict]:
    """SVD to `param_ratio` of the parameters, then progressive alignment and fine-tuning.

    The SVD is on the CPU; alignment and fine-tuning on `rt`'s device (default: this process's,
    in one process: compression is not data-parallel). Both students end on the CPU.
    """
    rt = rt or Runtime(current().device)
    torch.manual_seed(seed)
    small = svd_compress(student, cfg.param_ratio)
    small.eval()
    rt.place(small)
    rt.place(student)
    plain = validation_ndcg(lambda x: small(x)[1], split.valid_input, split.valid_target,
                            small.cfg.max_len, rt=rt)
    log(f"plain SVD ({n_params(small)}/{n_params(student)} params): "
        f"val NDCG@10 {plain['ndcg@10']:.4f}")
    plain_state = {k: v.clone() for k, v in small.state_dict().items()}
    align = progressive_align(small, student, split, cfg, seed, rt)
    aligned = validation_ndcg(lambda x: small(x)[1], split.valid_input, split.valid_target,
                              small.cfg.max_len, rt=rt)
    kept = aligned["ndcg@10"] >= plain["ndcg@10"]
    log(f"after layer-wise alignment: val NDCG@10 {aligned['ndcg@10']:.4f}"
        + ("" if kept else "; lower than plain SVD, so fine-tuning starts from plain SVD"))
    if not kept:
        small.load_state_dict(plain_state)
    result = finetune_compressed(small, student, split, vocab, cfg, seed, rt)
    small.cpu().eval()
    student.cpu().eval()
    report = {
        "params_dense": n_params(student), "params_compressed": n_params(small),
        "ranks": small.cfg.ranks, "val_ndcg@10_plain_svd": plain["ndcg@10"],
        "val_ndcg@10_aligned": aligned["ndcg@10"], "alignment_kept": kept,
        "val_ndcg@10_final": result.best_score,
        "alignment": align, "finetune": result.history,
    }
    return small, report

