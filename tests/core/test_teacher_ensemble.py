"""The teacher ensemble: a renormalised mean of its members' log-probabilities."""

import pytest
import torch

from tandemrec.checkpoints import load_teacher, save_model
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
    assert ens.cfg.max_len == 4
    assert torch.allclose(ens(SEQ), ens(SEQ[:, -4:]), atol=1e-6)


def test_members_must_share_the_catalog():
    with pytest.raises(ValueError, match="different catalogs"):
        TeacherEnsemble([member(0), member(1, n_items=31)])
    with pytest.raises(ValueError, match="at least one member"):
        TeacherEnsemble([])


@torch.no_grad()
def test_all_positions_agree_with_the_last_and_vectors_sit_side_by_side():
    a, b = member(0), member(1, d_model=24)
    ens = TeacherEnsemble([a, b]).eval()
    every = ens.position_scores(SEQ)  # (B, T, N+1)
    assert every.shape == (2, SEQ.shape[1], 31)
    assert torch.allclose(every[:, -1], ens(SEQ), atol=1e-5)
    vecs = ens.item_vectors()
    assert vecs.shape == (31, 16 + 24)
    assert torch.equal(vecs[:, :16], a.item_vectors()) and torch.equal(vecs[:, 16:], b.items())


@torch.no_grad()
def test_checkpoint_round_trip_keeps_kind_members_and_intent_tokens(tmp_path):
    a, b = member(0), member(1, d_model=24, max_len=8)
    for m in (a, b):
        m.set_intents(5, torch.randn(5, m.cfg.d_model))
    ens = TeacherEnsemble([a, b]).eval()
    save_model(ens, tmp_path / "teacher.pt", {"members": [{"val_ndcg@10": 0.1}]})
    loaded, extra = load_teacher(tmp_path / "teacher.pt")
    assert isinstance(loaded, TeacherEnsemble) and not loaded.training
    assert extra == {"members": [{"val_ndcg@10": 0.1}]}
    assert (loaded.cfg.n_intents, loaded.cfg.max_len, loaded.cfg.n_items) == (5, 8, 30)
    assert torch.allclose(loaded(SEQ), ens(SEQ), atol=1e-6)
    tokens = torch.tensor([[0, 1, 2, 5]])
    assert torch.allclose(loaded(tokens, coarse=True), ens(tokens, coarse=True), atol=1e-6)
    # A single teacher still loads as one.
    save_model(a, tmp_path / "one.pt")
    one, _ = load_teacher(tmp_path / "one.pt")
    assert isinstance(one, Teacher) and torch.allclose(one(SEQ), a(SEQ), atol=1e-6)


def test_checkpoints_from_before_item_scale_was_removed_still_load(tmp_path):
    # Teachers (single or ensemble members) saved with `item_scale: false` in their config.
    a, b = member(0), member(1)
    for model, name in ((a, "one.pt"), (TeacherEnsemble([a, b]), "ens.pt")):
        save_model(model, tmp_path / name)
        ckpt = torch.load(tmp_path / name, weights_only=True)
        configs = ckpt["config"]["members"] if "members" in ckpt["config"] else [ckpt["config"]]
        for c in configs:
            c["item_scale"] = False
        torch.save(ckpt, tmp_path / name)
        loaded, _ = load_teacher(tmp_path / name)
        assert torch.allclose(loaded(SEQ), model(SEQ), atol=1e-6)
    # One trained with the per-item norm has weights no teacher has any more: refused by name.
    ckpt = torch.load(tmp_path / "one.pt", weights_only=True)
    ckpt["config"]["item_scale"] = True
    torch.save(ckpt, tmp_path / "scaled.pt")
    with pytest.raises(ValueError, match="item_scale"):
        load_teacher(tmp_path / "scaled.pt")
