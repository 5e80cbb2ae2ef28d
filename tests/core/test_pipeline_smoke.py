"""Every pipeline stage end to end through the CLI, on a small generated dataset."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cloud_service.models import load_model
from tandem_contract.bundle import bundle_sizes, verify_pair
from tandemrec.cli import app
from tandemrec.data import write_synthetic_csv
from tandemrec.eval.modes import MODES
from tandemrec.eval.sid_modes import SID_MODES
from tandemrec.models.teacher_ensemble import TeacherEnsemble
from tandemrec.paths import CONFIGS_DIR
from tandemrec.pipeline import kmeans_weights

pytestmark = pytest.mark.core


@pytest.mark.parametrize("members", [None, "[{}, {d_model: 24, dropout: 0.2}]"],
                         ids=["one-teacher", "teacher-ensemble"])
def test_every_stage_end_to_end(tmp_path, monkeypatch, members):
    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path / "cache"))
    logs = tmp_path / "shop.csv"
    write_synthetic_csv(logs, n_users=300, n_items=120, min_len=8, max_len=30, seed=3)
    run_dir, results = tmp_path / "run", tmp_path / "results"
    common = ["--dataset", str(logs), "--config", str(CONFIGS_DIR / "smoke.yaml"),
              "--run-dir", str(run_dir)]
    if members:
        common += ["--set", f"teacher.members={members}"]
    else:  # the semantic-id student beside the table one (issue 22), on the same teacher
        common += ["--set", "student.kind=sid"]
    runner = CliRunner()
    for stage in ("train", "distill", "compress", "export"):
        res = runner.invoke(app, [stage, *common])
        assert res.exit_code == 0, f"{stage} failed:\n{res.output}\n{res.exception!r}"
    # Without --results-dir the results stay with the run, never in the repository.
    where = ["--results-dir", str(results)] if members else []
    res = runner.invoke(app, ["evaluate", *common, *where])
    assert res.exit_code == 0, res.output
    if not members:
        results = run_dir / "results"

    (report_path,) = results.glob("quality-*.json")
    report = json.loads(report_path.read_text())
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == set(MODES) | (set() if members else set(SID_MODES))
    for row in rows.values():
        assert {"hr@10", "ndcg@10", "mrr@10", "params", "size_bytes", "p50_ms"} <= set(row)
    pop = rows["popularity"]["ndcg@10"]
    assert rows["cloud-full"]["ndcg@10"] > pop
    assert rows["student-fp32"]["ndcg@10"] > pop
    assert rows["student-int8"]["ndcg@10"] > pop
    assert rows["student-svd"]["params"] <= 0.52 * rows["student-fp32"]["params"]
    assert report_path.with_suffix(".md").exists()
    if not members:  # scored from semantic ids alone, it still learns (the pool: a subset)
        assert rows["sid-student-int8"]["ndcg@10"] > pop
        assert rows["sid-collaborative"]["ndcg@10"] >= rows["sid-edge-only"]["ndcg@10"] > pop
        assert 0 < report["sid"]["device_bundle_bytes"] < 100_000
        # its own pair: the model alone on the device side, the table pair's cloud side
        sid_device, sid_cloud = verify_pair(run_dir / "bundle-sid")
        assert set(sid_device["files"]) == {"sid_student_int8.onnx"}
        assert sid_device["extra"]["student"]["kind"] == "sid"
        assert set(sid_cloud["files"]) == {"teacher.pt", "codebook.json", "item_table.json"}
        assert bundle_sizes(run_dir / "bundle-sid")["device_bundle_bytes"] == \
            report["sid"]["device_bundle_bytes"]

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
        onnx = load_model(run_dir / "bundle", runtime="onnx")  # the cloud's default runtime
        assert onnx.graph is not None and served.graph is None
        for coarse, rows in ((True, [np.array([1, 2, 3]), np.array([4])]),
                             (False, [np.array([5, 1, 2, 9, 3]), np.array([], np.int64)])):
            np.testing.assert_allclose(onnx.score(rows, coarse), served.score(rows, coarse),
                                       atol=1e-4)
        _sid_student_alone(runner, common, run_dir, results)


def _sid_student_alone(runner, common, run_dir, results):
    """`tandem distill-sid` adds a semantic-id student to a finished run, on its teacher, with
    the table student's fine-tuning epochs after its distillation (compress.sid_finetune), or
    projected from its compressed table student (student.sid_init=table)."""
    teacher = (run_dir / "teacher.pt").stat().st_mtime_ns
    res = runner.invoke(app, ["distill-sid", *common, "--set", "student.hash_buckets=8",
                              "--set", "compress.sid_finetune=true"])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    assert (run_dir / "teacher.pt").stat().st_mtime_ns == teacher  # not trained again
    run = json.loads((run_dir / "run.json").read_text())
    assert len(run["finetune_sid"]["history"]) == 2  # smoke.yaml's compress.finetune_epochs
    sid = run["export_sid"]
    assert sid["parity"]["sid_student_fp32"]["max_abs_diff_scores"] <= \
        sid["parity"]["sid_student_fp32"]["atol"]
    assert sid["sizes"]["sid_student_int8.onnx"] == (run_dir / "sid_student_int8.onnx").stat(
        ).st_size
    # student.sid_init=table: projected from the compressed table student (two hashed rows per
    # item), then aligned to it
    res = runner.invoke(app, ["distill-sid", *common, "--set", "student.hash_buckets=8",
                              "--set", "student.hash_count=2",
                              "--set", "student.sid_init=table", "--set",
                              "compress.sid_finetune=true", "--set",
                              "compress.sid_finetune_ref=table"])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    run = json.loads((run_dir / "run.json").read_text())
    assert 0.0 < run["project_sid"]["vector_r2"] <= 1.0
    assert run["project_sid"]["seconds"] > 0 and len(run["finetune_sid"]["history"]) == 2
    parity = run["export_sid"]["parity"]["sid_student_fp32"]
    assert parity["max_abs_diff_scores"] <= parity["atol"]
    res = runner.invoke(app, ["evaluate", *common, "--set", "student.kind=sid",
                              "--results-dir", str(results)])
    assert res.exit_code == 0, res.output
    (report_path,) = results.glob("quality-*.json")
    report = json.loads(report_path.read_text())
    assert set(SID_MODES) <= {r["mode"] for r in report["rows"]}
    # the checkpoint's rows, not the config's
    assert report["sid"]["hash_buckets"] == 8 and report["sid"]["hash_count"] == 2


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


def test_new_items_protocol_reuses_the_teacher_and_hides_new_items(tmp_path, monkeypatch):
    """A new-items run on a standard run's teacher: the student never sees a new item."""
    from tandemrec.pipeline import open_run
    from tandemrec.train import compress, distill
    from tandemrec.train.config import load_config

    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TANDEM_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    logs = tmp_path / "shop.csv"
    write_synthetic_csv(logs, n_users=300, n_items=120, min_len=8, max_len=30, seed=3)
    smoke = str(CONFIGS_DIR / "smoke.yaml")
    standard, fresh = tmp_path / "standard", tmp_path / "fresh"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--dataset", str(logs), "--config", smoke,
                              "--run-dir", str(standard)])
    assert res.exit_code == 0, res.output
    assert not np.load(standard / "new_items.npy").any()  # standard: nothing is new

    seen: dict[str, object] = {}

    def spy(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            out = real(*args, **kwargs)
            seen.setdefault(name, (args, kwargs, out))
            return out
        monkeypatch.setattr(module, name, wrapper)

    spy(distill, "teacher_targets")
    spy(distill, "distill_student")
    spy(compress, "compress_student")
    res = runner.invoke(app, ["pipeline", "--dataset", str(logs), "--config", smoke,
                              "--run-dir", str(fresh), "--protocol", "new-items",
                              "--teacher-from", str(standard),
                              "--results-dir", str(tmp_path / "results")])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"

    new = np.load(fresh / "new_items.npy")
    assert new.shape == (121,) and new.sum() == 12 and not new[0]  # 10% of 120 items
    run = json.loads((fresh / "run.json").read_text())
    assert run["train"]["reused_from"] == str(standard) and run["train"]["seconds"] >= 0
    for name in ("teacher.pt", "codebook.json", "popularity.npy"):
        assert (fresh / name).read_bytes() == (standard / name).read_bytes()

    def items(seqs):
        return np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])

    # the student's split: no new item in its inputs, its next items or its validation targets
    args, _, _ = seen["distill_student"]
    split = args[1]
    assert not new[items(split.train)].any() and not new[items(split.valid_input)].any()
    assert not new[split.valid_target].any()
    args, _, _ = seen["compress_student"]
    assert not new[items(args[1].train)].any() and not new[args[1].valid_target].any()
    # the teacher's soft targets: the teacher knows the new items, the targets hold none
    _, kwargs, targets = seen["teacher_targets"]
    assert kwargs["exclude"] is not None and kwargs["exclude"].sum() == 12
    t_items = items([t.ravel() for t in targets.idx])
    assert t_items.size and not new[t_items].any()

    # the context the evaluator gets: the device's view and a results name of its own
    ctx = open_run(load_config(CONFIGS_DIR / "smoke.yaml",
                               [f"dataset={logs}", "protocol=new-items"]), fresh)
    np.testing.assert_array_equal(ctx.new_items, new)
    assert ctx.results_name == "shop-new-items"
    assert not new[items(ctx.device_split.test_input)].any()
    np.testing.assert_array_equal(ctx.device_split.test_target, ctx.split.test_target)
    assert new[ctx.split.test_target].any()  # some users' target is new: reported apart

    # default run dir of the new-items protocol; a teacher of another config is refused
    res = runner.invoke(app, ["train", "--dataset", str(logs), "--config", smoke,
                              "--protocol", "new-items", "--teacher-from", str(standard)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "artifacts" / "shop-new-items" / "teacher.pt").exists()
    res = runner.invoke(app, ["train", "--dataset", str(logs), "--config", smoke,
                              "--run-dir", str(tmp_path / "other"), "--set", "seed=8",
                              "--teacher-from", str(standard)])
    assert res.exit_code == 2
    message = " ".join(res.output.split())  # the console wraps long lines
    assert "different config (seed: 7 there, 8 here)" in message
