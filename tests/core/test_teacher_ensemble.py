"""The teacher ensemble: a renormalised mean of its members' log-probabilities."""

import pytest
import torch

from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.models.teacher_ensemble import TeacherEnsemble

pytestmark = pytest.mark.core


def member(seed: int, d_model: int = 16, max_len: int = 12, n_items: int = 30) -> Teacher:
    torch.manual_seed(seed)
    m = Teacher(TeacherConfig(n_items=n_items, text_dim=8, d_model=d_model, mlp_hidden=32,
                              max_len=max_len, dropout=0.0))
    with torch.no_grad():
        m.items.text.normal_()
    return m.eval()


SEQ = torch.tensor([[0, 0, 3, 7, 1, 12], [4, 5, 6, 7, 8, 9]])


@torch.no_grad()
def test_one_member_gives_its_own_log_probabilities():
    m = member(0)
    assert torch.allclose(TeacherEnsemble([m])(SEQ), torch.log_softmax(m(SEQ), -1), atol=1e-6)


@torch.no_grad()
def test_two_members_average_log_probabilities_and_renormalise():
    a, b = member(0), member(1, d_model=24)
    out = TeacherEnsemble([a, b])(SEQ)
    la, lb = torch.log_softmax(a(SEQ), -1), torch.log_softmax(b(SEQ), -1)
    mean = (la + lb) / 2
    # Renormalising shifts each row by one constant: the ranking is the mean's.
    assert torch.allclose(out, mean - torch.logsumexp(mean, -1, keepdim=True), atol=1e-6)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2), atol=1e-5)
    # Before renormalising, every item's score lies between the two members' scores.
    lo, hi = torch.minimum(la, lb), torch.maximum(la, lb)
    shift = torch.logsumexp(mean, -1, keepdim=True)
    assert bool(((out + shift >= lo - 1e-6) & (out + shift <= hi + 1e-6)).all())


@torch.no_grad()
def test_history_is_cut_to_the_shortest_member_window():
    short, long = member(0, max_len=4), member(1, max_len=12)
    ens = TeacherEnsemble([short, long])
    assert ens.max_len == 4
    assert torch.allclose(ens(SEQ), ens(SEQ[:, -4:]), atol=1e-6)


def test_members_must_share_the_catalog():
    with pytest.raises(ValueError, match="different catalogs"):
        TeacherEnsemble([member(0), member(1, n_items=31)])
    with pytest.raises(ValueError, match="at least one member"):
        TeacherEnsemble([])
