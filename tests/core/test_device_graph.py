"""The device graph (issue 24, item 3) computes the very bits of the module's own graph.

`export_onnx` writes a leaner graph for one unpadded history (ONNX Runtime's causal attention,
no mask, fixed reshapes) and `quantize_int8` rewrites the int8 file (the item table by rows,
split projections as one matmul per part). Evaluation, parity and the device all read these
files, so every output must equal, to the bit, what the module's own graph gave
(`batched=True`, the export before the change), in fp32 and in int8.
"""

import numpy as np
import onnx
import pytest

from tandem_contract.runtime import OnnxStudent
from tandemrec.train.export import export_onnx, quantize_int8
from tests.students import LOW_RANK, MAX_LEN, N_ITEMS, student

pytestmark = pytest.mark.core

def histories() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [np.array([], dtype=np.int64), np.array([7]), np.array([5, 9, 11])]
    out += [rng.integers(1, N_ITEMS + 1, n) for n in (2, MAX_LEN - 1, MAX_LEN, 3 * MAX_LEN)]
    return out + [rng.integers(1, N_ITEMS + 1, int(n)) for n in rng.integers(1, 40, 30)]


@pytest.mark.parametrize("layers,ranks", [(1, None), (2, None), (3, LOW_RANK)])
def test_device_graph_gives_the_bits_of_the_modules_graph(tmp_path, layers, ranks):
    s = student(layers, ranks)
    files = {}
    for name, batched in (("module", True), ("device", False)):
        fp32 = export_onnx(s, tmp_path / f"{name}.onnx", batched=batched)
        files[name] = (fp32, quantize_int8(fp32, tmp_path / f"{name}8.onnx"))
    for kind in (0, 1):  # fp32, then int8
        ref, dev = OnnxStudent(files["module"][kind]), OnnxStudent(files["device"][kind])
        for h in histories():
            for a, b in zip(ref.run(h), dev.run(h), strict=True):
                assert a.dtype == b.dtype and np.array_equal(a, b), (kind, len(h))


def test_int8_device_file_layout(tmp_path):
    s = student(2, LOW_RANK)
    path = quantize_int8(export_onnx(s, tmp_path / "s.onnx"), tmp_path / "s8.onnx")
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GroupQueryAttention") == 1  # every layer but the last
    assert "Split" not in ops  # qkv and gate_up: a matmul per part
    tables = [i for i in model.graph.initializer if N_ITEMS + 1 in i.dims]
    assert [(t.name, list(t.dims)) for t in tables if len(t.dims) == 2] == [
        ("items.u_t_quantized_rows", [N_ITEMS + 1, 8])]  # stored once, by rows
    smaller = (tmp_path / "module8.onnx")
    quantize_int8(export_onnx(s, tmp_path / "module.onnx", batched=True), smaller)
    assert path.stat().st_size < smaller.stat().st_size
