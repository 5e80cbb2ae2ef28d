"""`tandem simulate` and `tandem demo`: the table student's bundle, or the semantic-id one's."""

from __future__ import annotations

from typer.testing import CliRunner

from tandemrec.cli import app


def test_the_student_option_names_the_bundle_and_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TANDEM_ARTIFACTS_DIR", str(tmp_path))
    runner = CliRunner()
    res = runner.invoke(app, ["simulate", "-d", "ml-100k", "--student", "sid"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())  # rich wraps long lines
    assert str(tmp_path / "ml-100k" / "bundle-sid") in text.replace(" ", "")
    assert "--set student.kind=sid" in text
    res = runner.invoke(app, ["simulate", "-d", "ml-100k"])
    assert res.exit_code == 2 and "student.kind" not in res.output
    assert "ml-100k/bundle:" in " ".join(res.output.split()).replace(" ", "")


def test_an_unknown_student_is_refused_with_the_choices():
    res = CliRunner().invoke(app, ["simulate", "--student", "big"])
    assert res.exit_code == 2
    assert "--student is table or sid" in " ".join(res.output.split())


def test_the_demo_refuses_an_unknown_student_before_training():
    res = CliRunner().invoke(app, ["demo", "--student", "big"])
    assert res.exit_code == 2
    assert "--student is table or sid" in " ".join(res.output.split())
