"""Every pipeline stage end to end through the CLI, on a small generated dataset."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cloud_service.models import load_model
from tandemrec.bundle import bundle_sizes, verify_pair
from tandemrec.cli import app
from tandemrec.data import write_synthetic_csv
from tandemrec.eval.modes import MODES
from tandemrec.models.teacher_ensemble import TeacherEnsemble
from tandemrec.paths import REPO_ROOT
from tandemrec.pipeline import kmeans_weights

pytestmark = pytest.mark.core


@pytest.mark.parametrize("members", [None, "[{}, {d_model: 24, dropout: 0.2}]"],
                         ids=["one-teacher", "teacher-ensemble"])
def test_every_stage_end_to_end(tmp_path, monkeypatch, members):
    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path / "cache"))
    logs = tmp_path / "shop.csv"
    write_synthetic_csv(logs, n_users=300, n_items=120, min_len=8, max_len=30, seed=3)
    run_dir, results = tmp_path / "run", tmp_path / "results"
    common = ["--dataset", str(logs), "--config", str(REPO_ROOT / "configs" / "smoke.yaml"),
              "--run-dir", str(run_dir)]
    if members:
        common += ["--set", f"teacher.members={members}"]
    runner = CliRunner()
    for stage in ("train", "distill", "compress", "export"):
        res = runner.invoke(app, [stage, *common])
        assert res.exit_code == 0, f"{stage} failed:\n{res.output}\n{res.exception!r}"
    res = runner.invoke(app, ["evaluate", *common, "--results-dir", str(results)])
    assert res.exit_code == 0, res.output

    (report_path,) = results.glob("quality-*.json")
    report = json.loads(report_path.read_text())
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == set(MODES)
    for row in rows.values():
        assert {"hr@10", "ndcg@10", "mrr@10", "params", "size_bytes", "p50_ms"} <= set(row)
    pop = rows["popularity"]["ndcg@10"]
    assert rows["cloud-full"]["ndcg@10"] > pop
    assert rows["student-fp32"]["ndcg@10"] > pop
    assert rows["student-int8"]["ndcg@10"] > pop
    assert rows["student-svd"]["params"] <= 0.52 * rows["student-fp32"]["params"]
    assert report_path.with_suffix(".md").exists()

    run = json.loads((run_dir / "run.json").read_text())
    for rep in run["export"]["parity"].values():
        assert rep["max_abs_diff_scores"] <= rep["atol"]
    device, cloud = verify_pair(run_dir / "bundle")
    assert set(device["files"]) == {"student_int8.onnx", "device_items.json"}
    assert set(cloud["files"]) == {"teacher.pt", "codebook.json", "item_table.json"}
    assert device["version"] == cloud["version"]
    sizes = bundle_sizes(run_dir / "bundle")
    assert 0 < sizes["device_bundle_bytes"] < sizes["cloud_bundle_bytes"]
    if members:  # the ensemble is what the run validated, saved and the cloud serves
        assert [m["val_ndcg@10"] > 0 for m in run["train"]["members"]] == [True, True]
        assert run["train"]["val_ndcg@10"] > 0 and run["train"]["coarse_val_ndcg@10"] > 0
        served = load_model(run_dir / "bundle")
        assert isinstance(served.teacher, TeacherEnsemble)
        scores = served.score([np.array([1, 2, 3]), np.array([4])], coarse=True)
        assert scores.shape == (2, served.n_items + 1)
        np.testing.assert_allclose(np.exp(scores).sum(1), 1.0, rtol=1e-4)


def test_bad_dataset_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["train", "--dataset", "no-such-set", "--run-dir",
                                   str(tmp_path)])
    assert res.exit_code == 2
    assert "no-such-set" in res.output


def test_intent_kmeans_weighting_options():
    pop = np.array([0, 9, 4, 1])
    assert kmeans_weights(pop, "none") is None
    np.testing.assert_allclose(kmeans_weights(pop, "popularity"), [0, 9, 4, 1])
    np.testing.assert_allclose(kmeans_weights(pop, "sqrt"), [0, 3, 2, 1])
    with pytest.raises(ValueError, match="intents.weighting must be one of"):
        kmeans_weights(pop, "log")
