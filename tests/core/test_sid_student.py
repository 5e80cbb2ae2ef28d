"""The semantic-id student: scores factorise over levels, its size ignores the catalog, and its
ONNX graph (fp32 and int8) gives the module's outputs."""

import numpy as np
import pytest
import torch

from tandem_contract.runtime import OnnxStudent
from tandem_contract.semantic_ids import score_items, sid_rows, table_rows
from tandemrec.models.sid_student import SidStudent, SidStudentConfig
from tandemrec.train.export import check_parity, export_onnx, quantize_int8

pytestmark = pytest.mark.core
LEVELS = [6, 4, 3]


def _catalog(n: int, hash_buckets: int, seed: int = 0, hash_count: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(1, k + 1, n + 1) for k in LEVELS], 1)
    codes[0] = 0
    return sid_rows(codes, LEVELS, hash_buckets, np.arange(n + 1), hash_count)


def _student(hash_buckets: int = 0, **shape) -> SidStudent:
    torch.manual_seed(0)
    cfg = SidStudentConfig(level_sizes=LEVELS, hash_buckets=hash_buckets, d_model=16, n_heads=2,
                           mlp_hidden=32, max_len=12, dropout=0.0, **shape)
    return SidStudent(cfg).eval()


@pytest.mark.parametrize("hash_buckets", [0, 8])
def test_scores_factorise_over_the_code_table(hash_buckets):
    student = _student(hash_buckets)
    catalog = _catalog(50, hash_buckets)
    hist = torch.from_numpy(catalog[[3, 9, 17, 4]][None])  # (1, T, L')
    with torch.no_grad():
        _, rows = student(hist)
        full = student.catalog_scores(hist, torch.from_numpy(catalog))[0]
        vecs, bias, scale = student.catalog_head(torch.from_numpy(catalog))
        h = student.hidden(hist, last_only=True)[:, -1]
    np.testing.assert_allclose(score_items(rows[0].numpy(), catalog[1:]), full[1:].numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose((scale * h @ vecs.T + bias)[0].numpy(), full.numpy(),
                               rtol=1e-5, atol=1e-5)


def test_size_does_not_grow_with_the_catalog():
    small, big = _catalog(100, 8), _catalog(100_000, 8)
    student = _student(8)
    assert student.cfg.n_rows == table_rows(LEVELS, 8) == 22
    assert small.max() < 22 and big.max() < 22  # a 10^5 catalog reads the same 22 rows
    with torch.no_grad():
        scores = student.catalog_scores(torch.from_numpy(big[[5, 6]][None]),
                                        torch.from_numpy(big))
    assert scores.shape == (1, 100_001) and torch.isfinite(scores).all()


@pytest.mark.parametrize(("hash_buckets", "hash_count"), [(0, 1), (8, 1), (8, 2)])
def test_onnx_fp32_and_int8_match_torch(tmp_path, hash_buckets, hash_count):
    student = _student(hash_buckets, hash_count=hash_count)
    catalog = _catalog(60, hash_buckets, seed=1, hash_count=hash_count)
    assert catalog.shape[1] == student.cfg.row_width
    rng = np.random.default_rng(2)
    histories = [catalog[rng.integers(1, 61, n)] for n in (1, 5, 12, 20)]
    fp32 = export_onnx(student, tmp_path / "sid.onnx")
    report = check_parity(student, fp32, histories, atol=1e-4)
    assert report.ok and report.top10_agreement == 1.0
    int8 = quantize_int8(fp32, tmp_path / "sid_int8.onnx")
    assert int8.stat().st_size < fp32.stat().st_size
    runner = OnnxStudent(int8)
    intents, rows = runner.run(histories[1])
    assert intents.shape == (LEVELS[0] + 1,) and rows.shape == (student.cfg.n_rows,)
    with torch.no_grad():
        _, ref = student(torch.from_numpy(histories[1][None]))
    assert np.corrcoef(rows, ref[0].numpy())[0, 1] > 0.99
    empty = runner.run(np.zeros((0, student.cfg.row_width), dtype=np.int64))
    assert np.isfinite(empty[1]).all()
    meta = runner.session.get_modelmeta().custom_metadata_map
    assert meta["kind"] == "sid" and meta["level_sizes"] == "6,4,3"
