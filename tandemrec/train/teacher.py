"""Train the cloud teacher (full softmax over the catalog) and its coarse intent-token mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from tandemrec.data.types import LeaveOneOutSplit
from tandemrec.models.hf_teacher import HFDecoder
from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.train.batches import Rows, loss_positions, n_batches, training_batches
from tandemrec.train.config import TeacherTrainConfig
from tandemrec.train.device import Runtime, current
from tandemrec.train.loop import FitResult, fit, validation_ndcg
from tandemrec.train.losses import chunked_head_loss

if TYPE_CHECKING:
    from tandemrec.models.intent_vocab import IntentVocab
    from tandemrec.models.teacher_ensemble import AnyTeacher


def next_item_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Full-softmax cross-entropy over all positions; padded targets (0) are ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=0)


def sampled_position_loss(model: Teacher, h: torch.Tensor, y: torch.Tensor, share: float,
                          gen: torch.Generator, mm_dtype: torch.dtype | None = None
                          ) -> torch.Tensor:
    """Full-softmax cross-entropy at a random `share` of the positions. h: (B, T, D), y: (B, T)."""
    return kept_position_loss(model, h, y, loss_positions(y, share, gen), mm_dtype)


def kept_position_loss(model: Teacher, h: torch.Tensor, y: torch.Tensor, keep: torch.Tensor,
                       mm_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Full-softmax cross-entropy at the positions `keep` (B, T) holds."""
    vecs, bias, scale = model.head()
    # Never builds the (M, N+1) score matrix; mm_dtype: see train/precision.py.
    return chunked_head_loss(h[keep], vecs, bias, y[keep], scale, mm_dtype=mm_dtype)


def build_teacher(n_items: int, text_vecs: np.ndarray | None, cfg: TeacherTrainConfig,
                  train: list[np.ndarray]) -> Teacher:
    """A fresh teacher whose item tower holds the text vectors and knows which items are cold.

    With an hf backbone (cfg.backbone "hf" or "hf:<path>", train/hf_backbone.py) the decoder is
    that transformers model, pretrained when the directory has weights, and the teacher's
    width is its hidden size; with cfg.lora set its weights are frozen under LoRA adapters.
    """
    text = text_vecs if cfg.use_text else None
    shape, backbone = cfg.shape(), None
    hf: dict[str, Any] = {}
    if cfg.backbone != "native":
        from tandemrec.train.hf_backbone import load_backbone

        hf_config, backbone = load_backbone(cfg.backbone, cfg.hf_config)
        hf = {"backbone": "hf", "hf_config": hf_config}
        shape.update(_hf_shape(hf_config, cfg))
    mcfg = TeacherConfig(n_items=n_items, text_dim=0 if text is None else text.shape[1],
                         **shape, **hf)
    model = Teacher(mcfg, backbone)
    if cfg.lora is not None:
        assert isinstance(model.decoder, HFDecoder)  # config: lora needs an hf backbone
        model.decoder.add_lora(**cfg.lora.model_dump())
    seen = np.zeros(n_items + 1, dtype=np.float32)
    for s in train:
        seen[s] = 1.0
    seen[0] = 0.0
    with torch.no_grad():
        model.items.has_id.copy_(torch.from_numpy(seen))
        if text is not None:
            model.items.text.copy_(torch.from_numpy(text.astype(np.float32)))
    return model


def _hf_shape(hf_config: dict[str, Any], cfg: TeacherTrainConfig) -> dict[str, Any]:
    """The teacher's shape fields for an hf backbone: its width (what the item tower and the
    head must match) and, for the record, its depth, heads and MLP width."""
    width = int(hf_config.get("hidden_size") or hf_config.get("n_embd") or 0)
    if width <= 0:
        raise ValueError(f"the hf backbone's config ({hf_config.get('model_type')}) states no "
                         f"hidden_size")
    heads = hf_config.get("num_attention_heads") or hf_config.get("n_head")
    layers = hf_config.get("num_hidden_layers") or hf_config.get("n_layer")
    mlp = hf_config.get("intermediate_size") or hf_config.get("n_inner")
    return {"d_model": width,
            "n_heads": heads if heads and width % heads == 0 else 1,
            "n_layers": layers or cfg.n_layers, "mlp_hidden": mlp or 4 * width}


@dataclass
class Objective:
    """What a training stage hands `fit`: the loss, the batches of an epoch, validation."""

    loss_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    batches: Callable[[int], Iterator[tuple]]
    n_batches: int
    validate: Callable[[], dict[str, float]]


def train_teacher(split: LeaveOneOutSplit, n_items: int, text_vecs: np.ndarray | None,
                  cfg: TeacherTrainConfig, seed: int,
                  rt: Runtime | None = None) -> tuple[Teacher, FitResult]:
    """Fit the teacher on the training prefixes; early stopping on validation NDCG@10.

    It trains on `rt`'s device (default: this process's, train/device.py), under DDP when
    torchrun started several processes, and is returned on the CPU.
    """
    rt = rt or current()
    torch.manual_seed(seed)
    model = rt.place(build_teacher(n_items, text_vecs, cfg, split.train))
    task = teacher_objective(model, split, cfg, seed, rt)
    result = fit(model, model.parameters(), name="teacher", batches=task.batches,
                 n_batches=task.n_batches, loss_fn=task.loss_fn, validate=task.validate,
                 lr=cfg.lr, max_epochs=cfg.max_epochs, patience=cfg.patience,
                 warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                 max_minutes=cfg.max_minutes, rt=rt)
    if isinstance(model.decoder, HFDecoder):
        model.decoder.merge_lora()  # adapters folded in: the checkpoint is a plain backbone
    return model.cpu().eval(), result


def teacher_objective(model: Teacher, split: LeaveOneOutSplit, cfg: TeacherTrainConfig,
                      seed: int, rt: Runtime) -> Objective:
    """The teacher's full-mode training on `rt`: its seeded batches, loss and validation."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    mm_dtype = rt.matmul_dtype(cfg.precision)

    def loss_fn(x: torch.Tensor, y: torch.Tensor,
                rows: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with rt.autocast(mm_dtype):
            h = model.hidden(x)
        keep = loss_positions(y, cfg.loss_positions, gen, rows)
        return kept_position_loss(model, h, y, keep, mm_dtype), keep.sum()

    def validate() -> dict[str, float]:
        return validation_ndcg(model, split.valid_input, split.valid_target, cfg.max_len, rt=rt)

    return Objective(loss_fn, lambda _: training_batches(split.train, cfg.max_len, cfg.batch_size,
                                                         rng, cfg.recent_window, rt.shard()),
                     n_batches(split.train, cfg.batch_size), validate)


def coarse_inputs(seqs: list[np.ndarray], vocab: IntentVocab, last: int) -> list[np.ndarray]:
    """What the cloud sees in collaborative mode: intent tokens of the last `last` items."""
    return [vocab.intent_of(s[-last:]) if last > 0 else s[:0] for s in seqs]


def coarse_validation(model: AnyTeacher, split: LeaveOneOutSplit, inputs: list[np.ndarray],
                      rt: Runtime | None = None) -> dict[str, float]:
    """Validation NDCG@10 of the coarse mode on `inputs` (the validation users' intent tokens,
    from `coarse_inputs`); items already seen are excluded."""
    return validation_ndcg(lambda x: model(x, coarse=True), inputs, split.valid_target,
                           model.cfg.max_len, exclude=split.valid_input, rt=rt)


def train_coarse(model: Teacher, split: LeaveOneOutSplit, vocab: IntentVocab,
                 cfg: TeacherTrainConfig, coarse_history: int, seed: int,
                 rt: Runtime | None = None) -> FitResult:
    """Teach the teacher to read intent tokens: a new token table, the rest frozen.

    Freezing keeps full-mode accuracy exactly as trained; the token table starts at the mean
    item vector of each intent, so the decoder already understands it at step 0. `model` is
    on the CPU before and after; it trains on `rt`'s device, as `train_teacher`.
    """
    rt = rt or current()
    with torch.no_grad():
        vecs = model.items().numpy()
    init = np.stack([vecs[vocab.items_of(k)].mean(0) for k in range(1, vocab.n_intents + 1)])
    model.set_intents(vocab.n_intents, torch.from_numpy(init))
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("intent_emb")
    rt.place(model)
    codes = torch.from_numpy(vocab.codes[:, 0].astype(np.int64)).to(rt.device)
    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator().manual_seed(seed + 1)
    val_inputs = coarse_inputs(split.valid_input, vocab, coarse_history)  # once, not per epoch
    mm_dtype = rt.matmul_dtype("fp32")  # float32 on a CPU, as always; bf16 on a GPU

    def loss_fn(x: torch.Tensor, y: torch.Tensor,
                rows: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with rt.autocast(mm_dtype):
            h = model.hidden(codes[x], coarse=True)
        keep = loss_positions(y, cfg.loss_positions, gen, rows)
        return kept_position_loss(model, h, y, keep, mm_dtype), keep.sum()

    def validate() -> dict[str, float]:
        return coarse_validation(model, split, val_inputs, rt)

    result = fit(model, model.intent_emb.parameters(), name="teacher-coarse",
                 batches=lambda _: training_batches(split.train, cfg.max_len, cfg.batch_size, rng,
                                                    shard=rt.shard()),
                 n_batches=n_batches(split.train, cfg.batch_size), loss_fn=loss_fn,
                 validate=validate, lr=cfg.lr * 2, max_epochs=cfg.coarse_epochs,
                 patience=cfg.coarse_epochs, warmup_steps=10, rt=rt)
    for p in model.parameters():
        p.requires_grad = True
    model.cpu().eval()
    return result
