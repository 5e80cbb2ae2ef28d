"""The semantic-id student projected from the table student (student.sid_init: table): the
code rows solve the least-squares problem, and the decoder and intent head are the table
student's, low-rank layers included."""

import numpy as np
import pytest
import torch

from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.student import Student, StudentConfig
from tandemrec.train.compress import svd_compress
from tandemrec.train.distill_sid import sid_catalog
from tandemrec.train.sid_project import fit_code_rows, sid_from_table
from tests.students import tiny_vocab

pytestmark = pytest.mark.core
LEVELS = [4, 3, 3]
N_ITEMS, BUCKETS = 30, 8


def _vocab() -> IntentVocab:
    return tiny_vocab(LEVELS, N_ITEMS)


def _table() -> Student:
    torch.manual_seed(0)
    return Student(StudentConfig(n_items=N_ITEMS, n_intents=LEVELS[0], d_model=16, n_heads=2,
                                 mlp_hidden=32, max_len=12, dropout=0.1)).eval()


def test_three_items_on_three_rows_are_solved_exactly():
    # items: rows {1, 3}, {2, 3}, {1}: x1 + x3 = 3, x2 + x3 = 5, x1 = 1 -> x = (1, 3, 2)
    rows = torch.tensor([[1, 3], [2, 3], [1, 0]])
    x, _ = fit_code_rows(rows, torch.tensor([[3.0], [5.0], [1.0]]), 4, ridge=0.0)
    np.testing.assert_allclose(x[:, 0].numpy(), [0.0, 1.0, 3.0, 2.0], atol=1e-5)


def test_weights_pull_a_shared_row_towards_the_heavier_item():
    # two items on one row, targets 0 and 3, weights 1 and 2: x = (1 * 0 + 2 * 3) / 3 = 2
    rows = torch.tensor([[1], [1]])
    x, _ = fit_code_rows(rows, torch.tensor([[0.0], [3.0]]), 2, ridge=0.0,
                         weights=torch.tensor([1.0, 2.0]))
    np.testing.assert_allclose(x[:, 0].numpy(), [0.0, 2.0], atol=1e-6)


def test_the_rows_meet_the_normal_equations():
    rng = np.random.default_rng(3)
    rows = torch.from_numpy(sid_catalog(_vocab(), BUCKETS)[1:])  # (30, 4) over 19 rows
    targets = torch.from_numpy(rng.normal(size=(N_ITEMS, 5)))
    ridge = 0.01
    x, _ = fit_code_rows(rows, targets, 1 + sum(LEVELS) + BUCKETS, ridge=ridge)
    a = torch.zeros(N_ITEMS, x.shape[0], dtype=torch.float64)
    a.scatter_add_(1, rows, torch.ones(rows.shape, dtype=torch.float64))
    a[:, 0] = 0.0  # padding columns count for nothing
    grad = a.T @ (a @ x - targets) + ridge * x
    assert x[0].abs().max() == 0.0
    assert grad[1:].abs().max() < 1e-5


def test_a_table_built_from_codes_gives_the_same_scores():
    vocab, table = _vocab(), _table()
    catalog = torch.from_numpy(sid_catalog(vocab, BUCKETS))
    rng = torch.Generator().manual_seed(5)
    n_rows = 1 + sum(LEVELS) + BUCKETS
    code_vecs = torch.randn(n_rows, 16, generator=rng)
    code_bias = torch.randn(n_rows, generator=rng)
    code_vecs[0], code_bias[0] = 0.0, 0.0
    with torch.no_grad():  # every item's vector and bias is the sum of its rows'
        table.items.weight_t.copy_(code_vecs[catalog].sum(1).T)
        table.out_bias.copy_(code_bias[catalog].sum(1))
    sid, rep = sid_from_table(table, vocab, BUCKETS)
    assert rep.vector_r2 > 0.9999 and rep.bias_r2 > 0.9999
    x = torch.tensor([[0, 0, 3, 7, 12], [4, 9, 1, 30, 2]])
    with torch.no_grad():
        want = table(x)[1]
        got = sid.eval().catalog_scores(catalog[x], catalog)
    np.testing.assert_allclose(got[:, 1:].numpy(), want[:, 1:].numpy(), atol=1e-2)  # the ridge


def test_a_compressed_table_keeps_its_low_rank_decoder():
    small = svd_compress(_table(), 0.5).eval()
    sid, rep = sid_from_table(small, _vocab(), BUCKETS)
    assert sid.cfg.ranks == {"layers": small.cfg.ranks["layers"]}
    assert "emb" not in sid.cfg.ranks  # the code table itself stays dense
    for part in ("decoder", "intent_head", "in_norm"):
        mine, theirs = getattr(sid, part).state_dict(), getattr(small, part).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    # 30 random vectors on 19 rows cannot be reproduced, but most of their energy is
    assert 0.3 < rep.vector_r2 < 1.0


def test_a_second_hash_explains_more_of_the_same_rows():
    # 30 random item vectors on 4 + 3 + 3 codes and 8 buckets: two hashes into the same 8 rows
    # tell apart items that share codes and one bucket, so the fit keeps more of them.
    table = _table()
    one = sid_from_table(table, _vocab(), BUCKETS)[1]
    two, rep = sid_from_table(table, _vocab(), BUCKETS, hash_count=2)
    assert two.cfg.row_width == len(LEVELS) + 2 and two.cfg.n_rows == 1 + sum(LEVELS) + BUCKETS
    assert rep.vector_r2 > one.vector_r2


def test_excluded_items_stay_out_of_the_fit():
    # An excluded (new) item's vector must not pull the rows: moving it changes nothing.
    exclude = np.zeros(N_ITEMS + 1, dtype=bool)
    exclude[[4, 17]] = True
    table = _table()
    before = sid_from_table(table, _vocab(), BUCKETS, exclude)[0].items.dense().clone()
    with torch.no_grad():
        table.items.weight_t[:, [4, 17]] += 5.0
    after = sid_from_table(table, _vocab(), BUCKETS, exclude)[0].items.dense()
    torch.testing.assert_close(after, before)
