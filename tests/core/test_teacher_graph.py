"""The teacher's serving forward in ONNX Runtime scores as eager torch does, in both modes."""

import numpy as np
import pytest
import torch

from tandemrec.models.inputs import left_pad
from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.models.teacher_ensemble import TeacherEnsemble
from tandemrec.teacher_graph import OnnxTeacher, exportable

pytestmark = pytest.mark.core

N_ITEMS, N_INTENTS = 40, 6


def member(seed: int, d_model: int = 16) -> Teacher:
    torch.manual_seed(seed)
    m = Teacher(TeacherConfig(n_items=N_ITEMS, text_dim=8, d_model=d_model, mlp_hidden=32,
                              max_len=12, n_intents=N_INTENTS, dropout=0.3))
    with torch.no_grad():
        m.items.text.normal_()
    return m


def histories(rng: np.random.Generator, high: int) -> list[np.ndarray]:
    """Ragged histories, some longer than the window, one a single event."""
    return [rng.integers(1, high + 1, size=n) for n in (1, 5, 12, 20, 3)]


@pytest.mark.parametrize("ensemble", [False, True])
def test_onnx_scores_match_torch_in_both_modes(ensemble):
    teacher = TeacherEnsemble([member(0), member(1, d_model=24)]) if ensemble else member(0)
    graph = OnnxTeacher(teacher, threads=1)
    assert not teacher.training  # exported and compared in eval mode: dropout is off
    rng = np.random.default_rng(0)
    for coarse, high in ((True, N_INTENTS), (False, N_ITEMS)):
        x = left_pad(histories(rng, high), teacher.cfg.max_len)  # padded, cut to the window
        with torch.inference_mode():
            want = teacher(x, coarse=coarse).numpy()
        got = graph(x.numpy(), coarse)
        assert got.shape == (5, N_ITEMS + 1) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert (np.argsort(-got, 1)[:, :5] == np.argsort(-want, 1)[:, :5]).all()
        # Another batch size and length through the same session (both axes are dynamic).
        one = left_pad([rng.integers(1, high + 1, size=2)], teacher.cfg.max_len)
        with torch.inference_mode():
            np.testing.assert_allclose(graph(one.numpy(), coarse),
                                       teacher(one, coarse=coarse).numpy(), atol=1e-4)


def test_hf_backbones_and_graphs_past_protobufs_limit_are_not_exported(monkeypatch):
    import tandemrec.teacher_graph as tg

    teacher = member(0)
    assert exportable(teacher) and exportable(TeacherEnsemble([teacher]))
    monkeypatch.setattr(tg, "MAX_GRAPH_BYTES", 1000)  # a tiny teacher's constants pass it
    assert not exportable(teacher)
    monkeypatch.undo()
    # The config of an HF-backbone checkpoint (test_hf_teacher serves a real one on torch).
    teacher.cfg = teacher.cfg.model_copy(update={"backbone": "hf", "hf_config": {}})
    assert not exportable(teacher)

