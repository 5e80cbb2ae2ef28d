"""Export the student to ONNX, check it against torch, and quantise its weights to int8."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tandemrec.models.blocks import CausalSelfAttention, plain_attention
from tandemrec.models.sid_student import SidStudent
from tandemrec.models.student import Student, StudentConfig
from tandemrec.train.int8_graph import CONTRIB, rewrite_int8

AnyStudent = Student | SidStudent

INPUT = "history"
OUTPUTS = ("intent_logits", "item_scores")
OPSET = 17


@dataclass
class ParityReport:
    max_abs_diff_scores: float
    max_abs_diff_intents: float
    top10_agreement: float  # share of top-10 lists identical between torch and ONNX
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff_scores <= self.atol and self.max_abs_diff_intents <= self.atol


def export_onnx(student: AnyStudent, path: Path, batched: bool = False) -> Path:
    """Write the student as ONNX: history (1, T) int64 -> intent logits, item scores.

    The semantic-id student reads (1, T, L') rows of its code table and scores its V rows
    (models/sid_student.py); the device sums an item's row scores.

    By default the device graph (`DeviceGraph`): one history at a time, as the device and the
    evaluation run it, with ONNX Runtime's causal attention kernel and no attention mask; its
    outputs are bit for bit those of the module's own graph. `batched=True` exports the module's
    own forward instead (any batch, left padding masked).

    Uses the TorchScript-based exporter (dynamo=False), which needs no extra packages and writes
    a single self-contained file. The history length is dynamic.
    """
    student = student.eval()
    plain_attention(student)
    example = _example(student)
    path.parent.mkdir(parents=True, exist_ok=True)
    module: nn.Module = student if batched else DeviceGraph(student)
    axes = ({INPUT: {0: "batch", 1: "history"}, OUTPUTS[0]: {0: "batch"},
             OUTPUTS[1]: {0: "batch"}} if batched else {INPUT: {1: "history"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT],
                          output_names=list(OUTPUTS), opset_version=OPSET, dynamo=False,
                          custom_opsets={CONTRIB: 1}, dynamic_axes=axes)
    cfg = student.cfg
    sizes = ({"n_items": cfg.n_items} if isinstance(cfg, StudentConfig) else
             {"kind": "sid", "level_sizes": ",".join(map(str, cfg.level_sizes)),
              "hash_buckets": cfg.hash_buckets, "hash_count": cfg.hash_count})
    _set_metadata(path, {"max_len": cfg.max_len, **sizes, "n_intents": cfg.n_intents,
                         "producer": "tandemrec"})
    return path


def _example(student: AnyStudent) -> torch.Tensor:
    """An input of the student's shape: item ids (1, T), or rows of the code table (1, T, L')."""
    cfg = student.cfg
    if isinstance(cfg, StudentConfig):
        return torch.randint(1, cfg.n_items + 1, (1, cfg.max_len))
    return torch.randint(1, cfg.n_rows, (1, cfg.max_len, cfg.row_width))


class _CausalAttention(torch.autograd.Function):
    """Causal attention of one unpadded sequence, packed [q | k | v] (1, T, 3D) -> (1, T, D);
    exported as ONNX Runtime's GroupQueryAttention (as many key heads as query heads, no cache),
    which reads the packed projection as it is."""

    @staticmethod
    def forward(ctx: Any, qkv: torch.Tensor, heads: int, d_head: int) -> torch.Tensor:
        t = qkv.shape[1]
        qh, kh, vh = (x.reshape(1, t, heads, d_head).transpose(1, 2)
                      for x in qkv.split(heads * d_head, dim=-1))
        att = (qh @ kh.transpose(-2, -1)) * (1.0 / math.sqrt(d_head))
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        return (att.softmax(dim=-1) @ vh).transpose(1, 2).reshape(1, t, heads * d_head)

    @staticmethod
    def symbolic(g: Any, qkv: Any, heads: int, d_head: int) -> Any:
        def const(value: Any, dtype: torch.dtype = torch.int64) -> Any:
            return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

        def absent() -> Any:  # an omitted optional input
            node = g.op("prim::Constant")
            node.setType(torch._C.OptionalType.ofTensor())
            return node

        length = g.op("Cast", g.op("Gather", g.op("Shape", qkv), const(1), axis_i=0),
                      to_i=6)  # INT32
        last = g.op("Reshape", g.op("Sub", length, const(1, torch.int32)), const([1]))
        out = g.op(f"{CONTRIB}::GroupQueryAttention", qkv, absent(), absent(), absent(),
                   absent(), last, length, num_heads_i=heads, kv_num_heads_i=heads,
                   scale_f=1.0 / math.sqrt(d_head), outputs=1)
        out.setType(qkv.type().with_sizes([1, None, heads * d_head]))  # (1, T, D)
        return out


class DeviceGraph(nn.Module):
    """The student's forward for one history without padding, the graph the device runs.

    The same operations as `Student.forward` on a (1, T) history, less what one unpadded
    history does not need: no (T, T) attention mask is built and added; the first layers attend
    through ONNX Runtime's causal kernel, which skips the masked half of each softmax and gives
    the same bits; the last layer's one query sees every key, so it takes no mask at all; the
    reshapes have fixed sizes instead of shape arithmetic. A padding id still contributes a
    zero input (an empty history is one padding step, which can only attend to itself).
    """

    def __init__(self, student: AnyStudent) -> None:
        super().__init__()
        # The student's own parts under their own names, so the file's tensors are named alike
        self.cfg, self.items, self.in_norm = student.cfg, student.items, student.in_norm
        self.decoder, self.intent_head, self.out_bias = (student.decoder, student.intent_head,
                                                         student.out_bias)

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dec, items = self.decoder, self.items
        table = items.weight_t if items.rank is None else items.u_t
        ids = seq[0].reshape(-1) if seq.dim() == 3 else seq[0]  # (T or T*L',)
        rows = table.index_select(1, ids).T  # (T or T*L', D or r), as ItemTable.lookup
        if items.rank is not None:
            rows = rows @ items.v
        if seq.dim() == 3:  # semantic ids: an item is the sum of its code vectors
            rows = rows.reshape(seq.shape[1], seq.shape[2], -1).sum(1)  # (T, D)
        valid = seq[..., 0] != 0 if seq.dim() == 3 else seq != 0  # (1, T)
        x = self.in_norm(rows[None])
        t = x.shape[1]
        positions = (t - 1) - torch.arange(t)  # as Decoder: 0 is the most recent item
        x = (x + dec.pos(positions)[None]) * valid[..., None]
        blocks: list[Any] = list(dec.blocks)
        for i, block in enumerate(blocks):
            last = i == len(blocks) - 1
            a = self._attend(block.attn, block.norm1(x), last)
            x = (x[:, -1:] if last else x) + a
            gate, up = block.mlp.gate_up(block.norm2(x)).split(self.cfg.mlp_hidden, dim=-1)
            x = x + block.mlp.down(F.silu(gate) * up)
        return Student.heads(self, dec.norm(x)[:, -1])  # type: ignore[arg-type]  # same parts

    @staticmethod
    def _attend(attn: CausalSelfAttention, x: torch.Tensor, last: bool) -> torch.Tensor:
        h, dh = attn.n_heads, attn.d_head
        if not last:
            return attn.proj(_CausalAttention.apply(attn.qkv(x), h, dh))
        q, k, v = attn.qkv(x).split(h * dh, dim=-1)
        # One query: (1, 1, H * Dh) lies in memory as (1, H, 1, Dh), so a reshape does what a
        # transpose would (one node instead of two, no copy), here and for the heads' output.
        qh = q[:, -1:].reshape(1, h, 1, dh)
        kh = k.reshape(1, -1, h, dh).transpose(1, 2)  # (1, H, T, Dh)
        vh = v.reshape(1, -1, h, dh).transpose(1, 2)
        att = (qh @ kh.transpose(-2, -1)) * (1.0 / math.sqrt(dh))  # a mask row of zeros: none
        y = (att.softmax(dim=-1) @ vh).reshape(1, 1, h * dh)
        return attn.proj(y)


def _set_metadata(path: Path, meta: dict) -> None:
    """Record what the device needs to drive the model (its history window, its sizes)."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def _get_metadata(path: Path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantisation of weights (MatMul and Gather) with ONNX Runtime, then the
    rewrites of the int8 graph that leave every output bit as it was (`rewrite_int8`)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    logging.getLogger().setLevel(logging.ERROR)  # ORT logs a pre-processing hint as a warning
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gather"])
    rewrite_int8(dst)
    _set_metadata(dst, _get_metadata(src))
    return dst


def check_parity(student: AnyStudent, onnx_path: Path, histories: list[np.ndarray],
                 atol: float) -> ParityReport:
    """Compare torch and ONNX Runtime outputs on real histories, one request at a time
    (the semantic-id student's histories as rows of its code table, (T, L') each)."""
    from tandem_contract.runtime import OnnxStudent

    runner = OnnxStudent(onnx_path, threads=1)
    student.eval()
    d_scores, d_intents, same = 0.0, 0.0, 0
    with torch.inference_mode():
        for h in histories:
            h = h[-student.cfg.max_len:]
            intents_t, scores_t = student(torch.from_numpy(h[None].astype(np.int64)))
            intents_o, scores_o = runner.run(h)
            d_scores = max(d_scores, float(np.abs(scores_t.numpy()[0] - scores_o).max()))
            d_intents = max(d_intents, float(np.abs(intents_t.numpy()[0] - intents_o).max()))
            top_t = np.argsort(-scores_t.numpy()[0][1:])[:10]
            top_o = np.argsort(-scores_o[1:])[:10]
            same += int(np.array_equal(top_t, top_o))
    return ParityReport(d_scores, d_intents, same / max(1, len(histories)), atol)
