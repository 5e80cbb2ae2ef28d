"""Export the student to ONNX, check it against torch, and quantise its weights to int8."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tandemrec.models.blocks import CausalSelfAttention
from tandemrec.models.student import Student

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


def export_onnx(student: Student, path: Path) -> Path:
    """Write the student as ONNX: history (B, T) int64 -> intent logits, item scores.

    Uses the TorchScript-based exporter (dynamo=False), which needs no extra packages and writes
    a single self-contained file. Batch and history length are dynamic.
    """
    student = student.eval()
    for mod in student.modules():
        if isinstance(mod, CausalSelfAttention):
            mod.fused = False  # the exported graph gets plain matmuls
    example = torch.randint(1, student.cfg.n_items + 1, (1, student.cfg.max_len))
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(student, (example,), str(path), input_names=[INPUT],
                          output_names=list(OUTPUTS), opset_version=OPSET, dynamo=False,
                          dynamic_axes={INPUT: {0: "batch", 1: "history"},
                                        OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}})
    cfg = student.cfg
    _set_metadata(path, {"max_len": cfg.max_len, "n_items": cfg.n_items,
                         "n_intents": cfg.n_intents, "producer": "tandemrec"})
    return path


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
    """Dynamic int8 quantisation of weights (MatMul and Gather) with ONNX Runtime."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    logging.getLogger().setLevel(logging.ERROR)  # ORT logs a pre-processing hint as a warning
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gather"])
    _set_metadata(dst, _get_metadata(src))
    return dst


def check_parity(student: Student, onnx_path: Path, histories: list[np.ndarray],
                 atol: float) -> ParityReport:
    """Compare torch and ONNX Runtime outputs on real histories, one request at a time."""
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
