"""The `tandem` command: data, the model pipeline stages, serving and the fleet simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tandemrec.paths import artifacts_dir, default_config

app = typer.Typer(
    help="tandemrec: device-cloud collaborative serving for LLM-based sequential "
         "recommendation. Train a cloud teacher, distil and compress an on-device student, "
         "and evaluate every serving mode on the same held-out users.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", "-c", help="YAML config (see configs/). Defaults to configs/<dataset>.yaml "
                           "when it exists, else built-in defaults.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="Override a config value, e.g. --set teacher.max_epochs=5 "
                        "(repeatable; values are parsed as YAML).")]
DatasetOpt = Annotated[str, typer.Option(
    "--dataset", "-d", help="ml-1m, ml-100k, beauty, or a path to your own "
                            "user,item,timestamp CSV/Parquet file.")]
RunDirOpt = Annotated[Path | None, typer.Option(
    "--run-dir", help="Where the stages read and write checkpoints (default: "
                      "artifacts/<dataset>, or artifacts/<dataset>-new-items under the "
                      "new-items protocol).")]
ResultsOpt = Annotated[Path | None, typer.Option(
    "--results-dir", help="Where quality-<dataset>.json, .md and .png are written "
                          "(quality-<dataset>-new-items.* under the new-items protocol). "
                          "Default: <run-dir>/results; bench/results holds the committed "
                          "ones.", show_default=False)]
ProtocolOpt = Annotated[str | None, typer.Option(
    "--protocol", help="standard, or new-items: a seeded share of the items "
                       "(new_items_share, default 10%) is new to the device, known to the "
                       "cloud. Shortcut for --set protocol=...", show_default=False)]
TeacherFromOpt = Annotated[Path | None, typer.Option(
    "--teacher-from", help="Copy teacher.pt, codebook.json and popularity.npy from this run "
                           "directory instead of training a teacher; its config must match "
                           "this run's dataset, seed, val_users, teacher and intents.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Datasets directory (default: $TANDEM_DATA_DIR or ../shared/data).")]


def _fail(message: str) -> None:
    from tandemrec.progress import console

    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _context(dataset: str, config: Path | None, overrides: list[str] | None,
             run_dir: Path | None, data_dir: Path | None, protocol: str | None = None,
             teacher_from: Path | None = None):
    from tandemrec.data.errors import DataFormatError, DatasetNotFound, UnknownDataset
    from tandemrec.pipeline import open_run
    from tandemrec.train.config import load_config

    if config is None:
        config = default_config(dataset)
    sets = [f"dataset={dataset}", *(overrides or [])]
    if protocol is not None:
        sets.append(f"protocol={protocol}")
    try:
        cfg = load_config(config, sets)
        name = Path(dataset).stem if Path(dataset).suffix else dataset
        if cfg.protocol == "new-items":
            name += "-new-items"
        return open_run(cfg, run_dir or artifacts_dir() / name, data_dir, teacher_from)
    except (ValueError, DataFormatError, DatasetNotFound, UnknownDataset) as exc:
        _fail(str(exc))


def _stage(stage: str, dataset: str, config: Path | None, overrides: list[str] | None,
           run_dir: Path | None, data_dir: Path | None, results_dir: Path | None,
           protocol: str | None = None, teacher_from: Path | None = None) -> None:
    from tandemrec import pipeline
    from tandemrec.teacher_reuse import TeacherReuseError

    ctx = _context(dataset, config, overrides, run_dir, data_dir, protocol, teacher_from)
    results_dir = results_dir or ctx.run_dir / "results"
    try:
        if stage == "pipeline":
            pipeline.run_pipeline(ctx, results_dir)
        elif stage == "evaluate":
            pipeline.stage_evaluate(ctx, results_dir)
        elif stage == "sid":
            pipeline.pipeline_sid.stage_sid(ctx)
        else:
            getattr(pipeline, f"stage_{stage}")(ctx)
    except (FileNotFoundError, TeacherReuseError) as exc:
        _fail(str(exc))


@app.command()
def data(data_dir: DataDirOpt = None) -> None:
    """List the datasets found in the data directory and how to obtain the missing ones."""
    from rich.table import Table

    from tandemrec.data import describe_data_dir
    from tandemrec.paths import data_dir as default_dir
    from tandemrec.progress import console

    root = data_dir or default_dir()
    table = Table(title=f"datasets in {root}")
    for col in ("name", "status", "users", "items", "interactions", "path / how to get it"):
        table.add_column(col)
    for row in describe_data_dir(root):
        found = row["status"] == "found"
        where = str(row["path"]) if found else str(row.get("error") or row["how_to_get"])
        table.add_row(str(row["name"]), str(row["status"]),
                      *(f"{row[k]:,}" if found and row.get(k) else "" for k in
                        ("users", "items", "interactions")), where)
    console.print(table)


@app.command()
def train(dataset: DatasetOpt = "ml-100k", config: ConfigOpt = None, set_: SetOpt = None,
          run_dir: RunDirOpt = None, data_dir: DataDirOpt = None,
          protocol: ProtocolOpt = None, teacher_from: TeacherFromOpt = None) -> None:
    """Train the teacher, build the intent vocabulary, train the teacher's coarse mode.

    With `teacher.members` (e.g. --set 'teacher.members=[{dropout: 0.3}, {}]') it trains an
    ensemble, one teacher per entry, and the cloud serves their mean log-probability. The
    teacher trains on every item under either protocol; --teacher-from copies one instead.
    """
    _stage("train", dataset, config, set_, run_dir, data_dir, None, protocol,
           teacher_from)


@app.command()
def distill(dataset: DatasetOpt = "ml-100k", config: ConfigOpt = None, set_: SetOpt = None,
            run_dir: RunDirOpt = None, data_dir: DataDirOpt = None,
            protocol: ProtocolOpt = None) -> None:
    """Distil the teacher into the small edge student (intent head + item head)."""
    _stage("distill", dataset, config, set_, run_dir, data_dir, None, protocol)


@app.command("distill-sid")
def distill_sid(dataset: DatasetOpt = "ml-100k", config: ConfigOpt = None, set_: SetOpt = None,
                run_dir: RunDirOpt = None, data_dir: DataDirOpt = None,
                protocol: ProtocolOpt = None) -> None:
    """Distil and export only the semantic-id student, on a run whose teacher exists.

    To try another semantic-id student on a finished run without training the rest again:
    tandem distill-sid -d beauty --set student.hash_buckets=8192, then tandem evaluate -d
    beauty --set student.kind=sid for the sid-* rows beside the others.
    """
    _stage("sid", dataset, config, [*(set_ or []), "student.kind=sid"], run_dir, data_dir,
           None, protocol)


@app.command()
def compress(dataset: DatasetOpt = "ml-100k", config: ConfigOpt = None, set_: SetOpt = None,
             run_dir: RunDirOpt = None, data_dir: DataDirOpt = None,
             protocol: ProtocolOpt = None) -> None:
    """SVD low-rank factorisation of the student with progressive layer-wise alignment."""
    _stage("compress", dataset, config, set_, run_dir, data_dir, None, protocol)


@app.command()
def export(dataset: DatasetOpt = "ml-100k", config: ConfigOpt = None, set_: SetOpt = None,
           run_dir: RunDirOpt = None, data_dir: DataDirOpt = None,
           protocol: ProtocolOpt = None) -> None:
    """Export the students to ONNX, quantise to int8, check ONNX against torch."""
    _stage("export", dataset, config, set_, run_dir, data_dir, None, protocol)


@app.command()
def evaluate(dataset: DatasetOpt = "ml-100k", config: ConfigOpt = None, set_: SetOpt = None,
             run_dir: RunDirOpt = None, data_dir: DataDirOpt = None,
             results_dir: ResultsOpt = None, protocol: ProtocolOpt = None) -> None:
    """Evaluate every serving mode on the same held-out users; write the results table."""
    _stage("evaluate", dataset, config, set_, run_dir, data_dir, results_dir, protocol)


@app.command("pipeline")
def pipeline_cmd(dataset: DatasetOpt = "ml-100k", config: ConfigOpt = None,
                 set_: SetOpt = None, run_dir: RunDirOpt = None, data_dir: DataDirOpt = None,
                 results_dir: ResultsOpt = None, protocol: ProtocolOpt = None,
                 teacher_from: TeacherFromOpt = None) -> None:
    """Run train, distill, compress, export and evaluate in order.

    A new-items run that reuses a standard run's teacher (the teacher is the same under both
    protocols): tandem pipeline -d ml-1m --protocol new-items --teacher-from artifacts/ml-1m
    """
    _stage("pipeline", dataset, config, set_, run_dir, data_dir, results_dir, protocol,
           teacher_from)


def _register_cloud_commands() -> None:
    from tandemrec import cli_cloud, cli_fleet

    app.command("serve")(cli_cloud.serve)
    app.command("publish")(cli_cloud.publish)
    app.add_typer(cli_cloud.registry_app, name="registry")
    app.command("simulate")(cli_fleet.simulate)
    app.command("demo")(cli_fleet.demo)


_register_cloud_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
