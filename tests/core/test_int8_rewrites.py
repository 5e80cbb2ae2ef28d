"""The int8 rewrites that cut nodes from the device graph (issue 24, acceptance 5) give the
bits of the file without them, for the table student (dense and factorised) and the
semantic-id student, on histories with padding, negative ids and every length.

`rewrite_int8` is run once as it is and once with the newer rewrites patched out (what
`quantize_int8` wrote before them); every output must be equal to the bit.
"""

from unittest import mock

import numpy as np
import onnx
import pytest
import torch

from tandem_contract.runtime import OnnxStudent
from tandem_contract.semantic_ids import sid_rows
from tandemrec.models.sid_student import SidStudent, SidStudentConfig
from tandemrec.models.student import Student
from tandemrec.train import int8_graph
from tandemrec.train.export import export_onnx, quantize_int8
from tests.students import LOW_RANK, MAX_LEN, N_ITEMS
from tests.students import student as table_student

pytestmark = pytest.mark.core

LEVELS = [6, 4, 3]
NEW = ("_last_row_parts", "history_rows", "slice_positions", "valid_from_table",
       "attention_lengths", "prune")


def histories() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [np.array([], dtype=np.int64), np.array([0]), np.array([0, 0, 5]),
           np.array([7, 0, 9, 0]), np.array([-3, 4]), np.array([-(N_ITEMS + 1), 2]),
           np.array([N_ITEMS, 1]), rng.integers(1, N_ITEMS + 1, 3 * MAX_LEN)]
    return out + [rng.integers(0, N_ITEMS + 1, n) for n in range(1, MAX_LEN + 1)]


def both(s: Student | SidStudent, tmp_path) -> tuple[OnnxStudent, OnnxStudent]:
    """The int8 file with every rewrite, and without the newer ones."""
    fp32 = export_onnx(s, tmp_path / "s.onnx")
    new = quantize_int8(fp32, tmp_path / "new.onnx")
    with mock.patch.multiple(int8_graph, **{name: lambda *a: None for name in NEW}):
        old = quantize_int8(fp32, tmp_path / "old.onnx")
    assert len(onnx.load(str(new)).graph.node) < len(onnx.load(str(old)).graph.node)
    return OnnxStudent(new), OnnxStudent(old)


def same(new: OnnxStudent, old: OnnxStudent, hs: list[np.ndarray]) -> None:
    for h in hs:
        for a, b in zip(new.run(h), old.run(h), strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b), len(h)


@pytest.mark.parametrize("layers,ranks", [(1, None), (2, None), (3, LOW_RANK)])
def test_table_student_bits_unchanged(tmp_path, layers, ranks):
    same(*both(table_student(layers, ranks), tmp_path), histories())


@pytest.mark.parametrize("hash_buckets", [0, 8])
def test_sid_student_bits_unchanged(tmp_path, hash_buckets):
    torch.manual_seed(0)
    s = SidStudent(SidStudentConfig(level_sizes=LEVELS, hash_buckets=hash_buckets, d_model=16,
                                    n_heads=2, mlp_hidden=32, max_len=12, n_layers=2,
                                    dropout=0.0)).eval()
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(1, k + 1, 51) for k in LEVELS], 1)
    codes[0] = 0
    catalog = sid_rows(codes, LEVELS, hash_buckets, np.arange(51))
    hs = [catalog[rng.integers(0, 51, n)] for n in (1, 2, 5, 11, 12, 30)]
    same(*both(s, tmp_path), hs + [catalog[[0, 0, 3]]])


def test_table_student_layout(tmp_path):
    path = quantize_int8(export_onnx(table_student(2, LOW_RANK), tmp_path / "s.onnx"),
                         tmp_path / "s8.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # positions sliced, the padding mask looked up, attention lengths from one Shape
    assert not {"Range", "Equal", "Not", "Unsqueeze"} & set(ops)
    assert ops.count("Shape") == 1
    # the last layer's queries: one row of the shared quantised input
    assert ops.count("DynamicQuantizeLinear") >= 1 and ops.count("MatMulIntegerToFloat") == 3
