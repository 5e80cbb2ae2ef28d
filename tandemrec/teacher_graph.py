"""The cloud teacher's serving forward as ONNX Runtime sessions: the same scores for less CPU.

The cloud scores each micro-batch with the teacher's last-position forward (coarse intent
tokens, or item ids for cloud-full). Exported once at load and run by ONNX Runtime, a batch of
32 coarse histories of the two-member ML-1M ensemble took 10.8 ms on two threads against 19.9
ms in eager torch, with scores within 3e-6 and the same top 10 (bench/teacher_runtime.py).
The graph is exported in memory from the loaded teacher, so any bundle serves this way without
a new file; teachers it does not cover (a Hugging Face backbone, or weights and item vectors
past what one graph can hold) stay on torch.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from tandemrec.models.blocks import plain_attention
from tandemrec.models.teacher import Teacher
from tandemrec.models.teacher_ensemble import AnyTeacher, TeacherEnsemble

OPSET = 17
INPUT, OUTPUT = "seq", "scores"


class _Mode(nn.Module):
    """The teacher's forward in one mode: (B, T) ids or intent tokens -> (B, N+1) scores."""

    def __init__(self, teacher: AnyTeacher, coarse: bool) -> None:
        super().__init__()
        self.teacher, self.coarse = teacher, coarse

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.teacher(seq, coarse=self.coarse)


# A graph in memory is one protobuf, which cannot pass 2 GB; the cached item vectors and the
# weights are its constants. Bigger teachers (catalogs of millions) stay on torch.
MAX_GRAPH_BYTES = 1_500_000_000


def exportable(teacher: AnyTeacher) -> bool:
    """True for native-decoder teachers (and ensembles of them) whose constants fit one graph;
    HF backbones and bigger teachers stay on torch."""
    members = list(teacher.members) if isinstance(teacher, TeacherEnsemble) else [teacher]
    native = all(isinstance(m, Teacher) and m.cfg.backbone == "native" for m in members)
    return native and _constant_bytes(members) <= MAX_GRAPH_BYTES


def _constant_bytes(members: Sequence[nn.Module]) -> int:
    """Bytes of the weights plus the item vectors each member caches (an upper bound)."""
    weights = sum(p.numel() * p.element_size() for m in members for p in m.parameters())
    vectors = sum((m.cfg.n_items + 1) * m.cfg.d_model * 4 for m in members
                  if isinstance(m, Teacher))
    return weights + vectors


def export_mode(teacher: AnyTeacher, coarse: bool) -> bytes:
    """The ONNX graph (bytes) of one mode, any batch and history length."""
    teacher.eval()
    plain_attention(teacher)
    module = _Mode(teacher, coarse).eval()  # the exporter restores this mode afterwards
    high = teacher.cfg.n_intents if coarse else teacher.cfg.n_items
    example = torch.randint(1, high + 1, (2, 8))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # Under no_grad the item vectors are the teacher's cached tensor: a constant of the
        # graph, not recomputed from the text vectors on every call.
        # The TorchScript exporter writes to a file object too; its annotation names paths only.
        torch.onnx.export(module, (example,), buf,  # type: ignore[arg-type]
                          input_names=[INPUT], output_names=[OUTPUT],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT: {0: "batch", 1: "history"},
                                        OUTPUT: {0: "batch"}})
    return buf.getvalue()


class OnnxTeacher:
    """Scores as `teacher(seq, coarse=...)` does, from one ONNX Runtime session per mode."""

    def __init__(self, teacher: AnyTeacher, threads: int, spin: bool = False) -> None:
        import onnxruntime as ort  # the cloud's teacher runtime; the training path never needs it

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads that spin between calls answer a lone request sooner but burn CPU
        # that the event loop and the next requests need once the replica is busy.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.sessions = {
            coarse: ort.InferenceSession(export_mode(teacher, coarse), opts,
                                         providers=["CPUExecutionProvider"])
            for coarse in (True, False)}

    def __call__(self, seq: np.ndarray, coarse: bool) -> np.ndarray:
        """(B, T) int64 left-padded histories -> (B, N+1) float32 scores."""
        out = self.sessions[coarse].run([OUTPUT], {INPUT: np.ascontiguousarray(seq, np.int64)})
        return np.asarray(out[0], dtype=np.float32)
