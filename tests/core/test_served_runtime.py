"""A served version's teacher runtime: ONNX Runtime by default, torch when asked or when the
export fails, the same scores either way."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import cloud_service.models as models
from cloud_service.models import load_model
from cloud_service.settings import CloudSettings

pytestmark = pytest.mark.core

ROWS = {True: [np.array([1, 2, 3]), np.array([4])], False: [np.array([3, 1, 2, 5]), np.array([2])]}


def test_default_runtime_is_onnx_with_torch_scores(bundle):
    assert CloudSettings().teacher_runtime == "onnx" and not CloudSettings().teacher_spin
    onnx, eager = load_model(bundle, runtime="onnx"), load_model(bundle, runtime="torch")
    assert onnx.graph is not None and eager.graph is None
    for coarse, rows in ROWS.items():
        np.testing.assert_allclose(onnx.score(rows, coarse), eager.score(rows, coarse), atol=1e-4)


def test_a_failed_export_serves_the_teacher_on_torch(bundle, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter says no")

    monkeypatch.setattr(models, "OnnxTeacher", broken)
    with caplog.at_level(logging.WARNING, logger="tandem.cloud"):
        served = load_model(bundle, runtime="onnx")
    assert served.graph is None
    assert "serving it on torch: exporter says no" in caplog.text
    assert served.score(ROWS[True], True).shape == (2, served.n_items + 1)


def test_an_unknown_runtime_is_refused_by_the_settings(monkeypatch):
    monkeypatch.setenv("TANDEM_CLOUD_TEACHER_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match="teacher_runtime"):
        CloudSettings()
