"""ONNX export: outputs match torch, the item table is stored once, int8 runs and is smaller."""

import numpy as np
import onnx
import pytest
import torch

from tandem_contract.runtime import OnnxStudent
from tandemrec.models.student import Student, StudentConfig
from tandemrec.train.export import check_parity, export_onnx, quantize_int8

pytestmark = pytest.mark.core

N_ITEMS = 300


def student(ranks=None) -> Student:
    torch.manual_seed(1)
    return Student(StudentConfig(n_items=N_ITEMS, n_intents=8, d_model=32, mlp_hidden=64,
                                 max_len=20, dropout=0.0, ranks=ranks or {})).eval()


HISTORIES = [np.array([5, 9, 11]), np.arange(1, 40), np.array([7])]


@pytest.mark.parametrize("ranks", [None, {"emb": 8, "layers": [
    {"qkv": 8, "proj": None, "gate_up": 8, "down": 8}] * 2}])
def test_onnx_matches_torch(tmp_path, ranks):
    s = student(ranks)
    path = export_onnx(s, tmp_path / "s.onnx")
    rep = check_parity(s, path, HISTORIES, atol=1e-4)
    assert rep.ok, rep
    assert rep.top10_agreement == 1.0


def test_item_table_written_once(tmp_path):
    path = export_onnx(student(), tmp_path / "s.onnx")
    model = onnx.load(str(path))
    big = [i.name for i in model.graph.initializer if N_ITEMS + 1 in i.dims and len(i.dims) == 2]
    assert big == ["items.weight_t"]


def test_int8_is_smaller_and_close(tmp_path):
    s = student()
    fp32 = export_onnx(s, tmp_path / "s.onnx")
    int8 = quantize_int8(fp32, tmp_path / "s8.onnx")
    assert int8.stat().st_size < fp32.stat().st_size
    tables = {i.name: i.data_type for i in onnx.load(str(int8)).graph.initializer
              if N_ITEMS + 1 in i.dims and len(i.dims) == 2}
    eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert list(tables) == ["items.weight_t_quantized_rows"]  # once, by rows for the lookup
    assert tables["items.weight_t_quantized_rows"] in eight_bit
    a = OnnxStudent(fp32).run(HISTORIES[1])[1]
    b = OnnxStudent(int8).run(HISTORIES[1])[1]
    assert np.corrcoef(a[1:], b[1:])[0, 1] > 0.95


def test_runtime_handles_empty_history_and_truncation(tmp_path):
    runner = OnnxStudent(export_onnx(student(), tmp_path / "s.onnx"), max_len=20)
    intents, scores = runner.run(np.array([], dtype=np.int64))
    assert intents.shape == (9,) and scores.shape == (N_ITEMS + 1,)
    _, long = runner.run(np.arange(1, 100))
    _, tail = runner.run(np.arange(80, 100))
    assert np.allclose(long, tail, atol=1e-5)
