"""Model invariants: padding, last-position shortcut, cold start through text, SVD factors."""

import numpy as np
import pytest
import torch

from tandemrec.models.student import Student, StudentConfig
from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.train.compress import (
    _split_svd,
    _stage_params,
    choose_ranks,
    n_params,
    svd_compress,
)

pytestmark = pytest.mark.core


def small_teacher() -> Teacher:
    torch.manual_seed(0)
    m = Teacher(TeacherConfig(n_items=30, text_dim=8, d_model=16, mlp_hidden=32, max_len=12,
                              dropout=0.0))
    with torch.no_grad():
        m.items.text.normal_()
    return m.eval()


def small_student(ranks=None) -> Student:
    torch.manual_seed(0)
    return Student(StudentConfig(n_items=30, n_intents=4, d_model=16, mlp_hidden=32, max_len=12,
                                 dropout=0.0, ranks=ranks or {})).eval()


@pytest.mark.parametrize("fused", [True, False])
def test_left_padding_does_not_change_the_answer(fused):
    t = small_teacher()
    for mod in t.modules():
        if hasattr(mod, "fused"):
            mod.fused = fused
    seq = torch.tensor([[3, 7, 9]])
    padded = torch.tensor([[0, 0, 0, 3, 7, 9]])
    with torch.no_grad():
        assert torch.allclose(t(seq), t(padded), atol=1e-5)


def test_last_only_equals_full_sequence_last_position():
    s = small_student()
    seq = torch.tensor([[0, 4, 5, 6, 1], [2, 3, 4, 5, 6]])
    with torch.no_grad():
        full = s.hidden(seq)[:, -1]
        last = s.hidden(seq, last_only=True)[:, -1]
    assert torch.allclose(full, last, atol=1e-5)


def test_cold_item_is_scored_through_its_text_alone():
    t = small_teacher()
    with torch.no_grad():
        t.items.has_id[5] = 0.0
        before = t(torch.tensor([[1, 2, 3]]))[0, 5].item()
        t.items.id_emb.weight[5].normal_()  # its id embedding must not matter
        t._vec_cache = None
        after = t(torch.tensor([[1, 2, 3]]))[0, 5].item()
        t.items.text[5].normal_()  # its text must
        t._vec_cache = None
        changed = t(torch.tensor([[1, 2, 3]]))[0, 5].item()
    assert before == pytest.approx(after, abs=1e-6)
    assert changed != pytest.approx(before, abs=1e-4)


def test_position_init_scale():
    small = Teacher(TeacherConfig(n_items=10, text_dim=4, max_len=400, pos_std=0.02))
    assert small.decoder.pos.weight.std().item() == pytest.approx(0.02, rel=0.05)
    default = Teacher(TeacherConfig(n_items=10, text_dim=4, max_len=400))
    assert default.decoder.pos.weight.std().item() == pytest.approx(1.0, rel=0.05)


def test_coarse_mode_reads_intent_tokens():
    t = small_teacher()
    t.set_intents(4, torch.randn(4, 16))
    with torch.no_grad():
        out = t(torch.tensor([[1, 2, 4]]), coarse=True)
    assert out.shape == (1, 31)


def test_split_svd_is_exact_at_full_rank():
    w = torch.randn(6, 4)
    b, a = _split_svd(w, 4)
    assert torch.allclose(b @ a, w, atol=1e-5)


def test_compression_meets_the_parameter_budget_and_keeps_shapes():
    s = small_student()
    small = svd_compress(s, 0.5)
    assert n_params(small) <= 0.5 * n_params(s) * 1.02
    ranks = choose_ranks(s, 0.5)
    assert ranks["emb"] == small.items.rank
    seq = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        a, b = s(seq), small(seq)
    assert a[1].shape == b[1].shape and a[0].shape == b[0].shape
    # Truncation keeps most of the signal: the scores stay correlated with the dense student's.
    corr = np.corrcoef(a[1][0, 1:].numpy(), b[1][0, 1:].numpy())[0, 1]
    assert corr > 0.5


def test_alignment_stages_train_one_part_each():
    """Stage 0 trains the item table (and input norm); stage l trains block l-1 and nothing else.

    Training the tied item table in later stages pulled the output head towards hidden states.
    """
    small = svd_compress(small_student(), 0.5)
    ids = {id(p) for p in _stage_params(small, 0)}
    assert ids == {id(p) for p in [*small.items.parameters(), *small.in_norm.parameters()]}
    for stage, block in enumerate(small.decoder.blocks, start=1):
        got = {id(p) for p in _stage_params(small, stage)}
        assert got == {id(p) for p in block.parameters()}
        assert not got & {id(p) for p in small.items.parameters()}
