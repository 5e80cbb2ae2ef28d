"""The semantic-id student's fine-tuning stage (compress.sid_finetune): it trains, it is
seeded on its own (resuming from a saved student gives the same weights), and it leaves items
new to the device out of the distribution it aligns to."""

import copy

import numpy as np
import pytest
import torch

from tandemrec.data.types import LeaveOneOutSplit
from tandemrec.models.intent_vocab import IntentVocab
from tandemrec.models.sid_student import SidStudent, SidStudentConfig
from tandemrec.train.config import CompressConfig
from tandemrec.train.distill_sid import SidView, finetune_sid_student
from tests.students import tiny_vocab

pytestmark = pytest.mark.core
LEVELS = [4, 3, 3]
N_ITEMS = 30


def _vocab() -> IntentVocab:
    return tiny_vocab(LEVELS, N_ITEMS)


def _split(items: np.ndarray) -> LeaveOneOutSplit:
    rng = np.random.default_rng(1)
    seqs = [rng.choice(items, size=int(rng.integers(6, 12))) for _ in range(40)]
    return LeaveOneOutSplit(train=[s[:-2] for s in seqs], eval_users=np.arange(40),
                            valid_input=[s[:-2] for s in seqs[:10]],
                            valid_target=np.array([s[-2] for s in seqs[:10]]),
                            test_input=[s[:-1] for s in seqs],
                            test_target=np.array([s[-1] for s in seqs]))


def _student() -> SidStudent:
    torch.manual_seed(0)
    return SidStudent(SidStudentConfig(level_sizes=LEVELS, hash_buckets=8, d_model=16,
                                       n_heads=2, mlp_hidden=32, max_len=12, dropout=0.1))


CFG = CompressConfig(finetune_epochs=2, lr=5e-3, batch_size=8)


def test_it_trains_and_resumes_to_the_same_weights():
    split, vocab = _split(np.arange(1, N_ITEMS + 1)), _vocab()
    start = _student()
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    torch.manual_seed(123)  # whatever the global generator did before does not matter
    fit_a = finetune_sid_student(a, split, vocab, CFG, seed=7)
    torch.manual_seed(456)
    finetune_sid_student(b, split, vocab, CFG, seed=7)
    assert [h["epoch"] for h in fit_a.history] == [1, 2]
    moved = [not torch.equal(p, q) for p, q in zip(a.parameters(), start.parameters(),
                                                    strict=True)]
    assert any(moved)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_new_items_stay_out_of_the_aligned_distribution():
    new = np.zeros(N_ITEMS + 1, dtype=bool)
    new[25:] = True
    view = SidView.build(_vocab(), _student().cfg, new)
    assert view.kept_rows.shape[0] == 1 + 24  # padding and the 24 known items
    assert (view.renum[25:] == 0).all() and view.renum[1:25].tolist() == list(range(1, 25))
    student = _student().eval()
    x = torch.tensor([[0, 3, 5, 7]])
    keep = x != 0
    scores = view.known_scores(student, x, keep)
    assert scores.shape == (3, 25) and torch.isinf(scores[:, 0]).all()
    # the known items' scores are the model's catalog scores for those items
    full = student.catalog_scores(view.rows[x[:, :]], view.rows)  # last position: (1, N+1)
    np.testing.assert_allclose(scores[-1, 1:].detach().numpy(),
                               full[0, 1:25].detach().numpy(), rtol=1e-5, atol=1e-5)
    split = _split(np.arange(1, 25))
    fit = finetune_sid_student(student, split, _vocab(), CFG, seed=7, exclude=new)
    assert len(fit.history) == 2 and np.isfinite(fit.best_score)


def test_the_table_student_can_be_the_reference_and_its_new_items_stay_out():
    # compress.sid_finetune_ref=table: the aligned distribution is the table student's over the
    # known items. A table student that always ranks item 3 first pulls the sid student there.
    from tandemrec.models.student import Student, StudentConfig

    torch.manual_seed(0)
    table = Student(StudentConfig(n_items=N_ITEMS, n_intents=LEVELS[0], d_model=16, n_heads=2,
                                  mlp_hidden=32, max_len=12, dropout=0.0))
    with torch.no_grad():
        for p in table.parameters():
            p.zero_()
        table.out_bias[3] = 8.0  # whatever the history, item 3
    new = np.zeros(N_ITEMS + 1, dtype=bool)
    new[25:] = True
    rows = SidView.build(_vocab(), _student().cfg, new).rows
    x = torch.tensor([[1, 2, 4, 5]])
    split, cfg = _split(np.arange(1, 25)), CompressConfig(finetune_epochs=3, lr=2e-2,
                                                          batch_size=8)

    def p_item3(ref: Student | None) -> float:
        student = _student()
        fit = finetune_sid_student(student, split, _vocab(), cfg, seed=7, exclude=new,
                                   table=ref)
        assert len(fit.history) == 3
        with torch.no_grad():
            return float(student.eval().catalog_scores(rows[x], rows).softmax(-1)[0, 3])

    assert p_item3(table) > 1.3 * p_item3(None)
