"""`tandem simulate` (a device fleet against a cloud) and `tandem demo` (the whole system)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tandemrec.paths import CONFIGS_DIR


def _fail(message: str) -> None:
    from tandemrec.progress import console

    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _outage(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    try:
        a, b = (float(x) for x in value.split(":"))
    except ValueError:
        _fail(f"--outage takes START:END in seconds, e.g. 4:8 (got {value!r})")
        raise
    if not 0 <= a < b:
        _fail(f"--outage needs 0 <= START < END (got {value!r})")
    return a, b


def simulate(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="ml-1m, ml-100k, beauty or "
                                          "a CSV of your own logs.")] = "ml-100k",
    bundle: Annotated[Path | None, typer.Option(help="Model bundle (default: "
                                                "artifacts/<dataset>/bundle, or bundle-sid "
                                                "with --student sid).")] = None,
    student: Annotated[str, typer.Option(help="table or sid: which student's bundle the "
                                         "devices run when --bundle is not given (sid: the "
                                         "semantic-id student, from a run with "
                                         "student.kind=sid).")] = "table",
    devices: Annotated[int, typer.Option(help="Simulated devices, one per held-out user; "
                                         "0 = all.")] = 0,
    modes: Annotated[str, typer.Option(help="Comma-separated: collaborative, cloud-full, "
                                       "edge-only, popularity.")] =
    "collaborative,cloud-full,edge-only,popularity",
    transport: Annotated[str, typer.Option(help="grpc or http.")] = "grpc",
    target: Annotated[str, typer.Option(help="A running cloud (host:port for gRPC, a URL for "
                                        "HTTP); empty = start one in-process.")] = "",
    api_key: Annotated[str, typer.Option(envvar="TANDEM_EDGE_API_KEY",
                                         help="Device API key for a running cloud.")] = "",
    concurrency: Annotated[int, typer.Option(help="Devices in flight at once.")] = 16,
    rate: Annotated[float, typer.Option(help="Requests per second across the fleet "
                                        "(0 = as fast as possible).")] = 0.0,
    latency_ms: Annotated[float, typer.Option(help="Added network latency.")] = 0.0,
    jitter_ms: Annotated[float, typer.Option(help="Latency jitter (uniform +-).")] = 0.0,
    loss: Annotated[float, typer.Option(help="Share of calls lost.")] = 0.0,
    outage: Annotated[str | None, typer.Option(help="START:END seconds of a full cloud "
                                               "outage.")] = None,
    slow_share: Annotated[float, typer.Option(help="Share of calls that are slow.")] = 0.0,
    slow_ms: Annotated[float, typer.Option(help="How much slower they are.")] = 0.0,
    feature_delay: Annotated[int, typer.Option(help="Cloud-full sees the history without "
                                               "its last n interactions.")] = 0,
    policy: Annotated[str, typer.Option(help="always, or shift (ask the cloud only when the "
                                        "device's intent shifted).")] = "always",
    deadline_ms: Annotated[float, typer.Option(help="The device's cloud deadline.")] = 150.0,
    steps: Annotated[int, typer.Option(help="Requests per device, replaying its last "
                                       "interactions (to study --policy shift).")] = 1,
    tag: Annotated[str, typer.Option(help="Suffix for the report's file names.")] = "",
    results_dir: Annotated[Path | None, typer.Option(
        help="Where the report goes (default: <bundle>/../results, the run's results "
             "folder).", show_default=False)] = None,
) -> None:
    """Replay held-out users as devices against the cloud and report accuracy, bytes
    upstream, latency and fallback rate per serving mode."""
    from tandem_contract.bundle import is_pair
    from tandemrec.paths import artifacts_dir
    from tandemrec.progress import console
    from tandemrec.sim.fleet import MODES
    from tandemrec.sim.network import Conditions
    from tandemrec.sim.report import write_report
    from tandemrec.sim.run import SimConfig
    from tandemrec.sim.run import simulate as run

    chosen = tuple(m.strip() for m in modes.split(",") if m.strip())
    if bad := [m for m in chosen if m not in MODES]:
        _fail(f"unknown mode(s) {bad}: choose from {', '.join(MODES)}")
    if transport not in ("grpc", "http") or policy not in ("always", "shift"):
        _fail("--transport is grpc or http; --policy is always or shift")
    name = Path(dataset).stem if Path(dataset).suffix else dataset
    default = _student_bundle(artifacts_dir() / name, student)  # checks --student too
    bundle = bundle or default
    if not is_pair(bundle):
        how = " --set student.kind=sid" if student == "sid" else ""
        _fail(f"no bundle at {bundle}: run `tandem pipeline -d {dataset}{how}` first, or pass "
              "--bundle")
    cond = Conditions(latency_ms, jitter_ms, loss, _outage(outage), slow_share, slow_ms)
    cfg = SimConfig(dataset=dataset, bundle=bundle, devices=devices, modes=chosen,
                    transport=transport, target=target, api_key=api_key,
                    concurrency=concurrency, rate=rate, conditions=cond,
                    feature_delay=feature_delay, policy=policy, deadline_ms=deadline_ms,
                    steps=steps)
    with console.status(f"simulating {devices or 'all'} devices ({cond.describe()})"):
        report, runs = run(cfg)
    report["tag"] = tag
    paths = write_report(report, runs, results_dir or bundle.parent / "results")
    print_rows(report)
    console.print("wrote " + ", ".join(str(p) for p in paths))


def print_rows(report: dict) -> None:
    from rich.table import Table

    from tandemrec.progress import console
    from tandemrec.sim.report import COLUMNS

    table = Table(title=f"{report['dataset']}: {report['devices']} simulated devices, "
                        f"{report['network']}")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "mode" else "right")
    for r in report["rows"]:
        table.add_row(*[f"{r[c]:.4f}" if c in ("hr@10", "ndcg@10") else
                        f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c])
                        for c in COLUMNS])
    console.print(table)
    for note in report.get("notes", []):
        console.print(note)


def demo(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset to demo on.")] =
    "ml-100k",
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline config.")] =
    CONFIGS_DIR / "demo.yaml",
    results_dir: Annotated[Path | None, typer.Option(
        help="Where reports and plots go (default: artifacts/demo/results).",
        show_default=False)] = None,
    student: Annotated[str, typer.Option(help="table or sid: the device student the fleet "
                                         "runs and the lift is printed for (sid: also trains "
                                         "the semantic-id student, on the same teacher).")] =
    "table",
) -> None:
    """The whole system in one command: train small models, start the cloud in-process on the
    embedded store, simulate every held-out user in every mode, print the results.

    It also trains a second device model for the new-item protocol (10% of the items new to
    the device, known to the cloud, the same teacher) and prints collaborative serving's lift
    over the device alone on both protocols."""
    import time

    from tandemrec.data.errors import DatasetNotFound, UnknownDataset
    from tandemrec.paths import artifacts_dir
    from tandemrec.pipeline import open_run, run_pipeline
    from tandemrec.progress import console
    from tandemrec.sim.report import write_report
    from tandemrec.sim.run import SimConfig
    from tandemrec.sim.run import simulate as run
    from tandemrec.train.config import load_config

    t0 = time.time()
    run_dir = artifacts_dir() / "demo"
    bundle = _student_bundle(run_dir, student)  # checks --student before any training
    results_dir = results_dir or run_dir / "results"
    sets = [f"dataset={dataset}", *(["student.kind=sid"] if student == "sid" else [])]
    console.rule(f"1/3 train, distil, compress, export and evaluate on {dataset}")
    try:
        ctx = open_run(load_config(config, sets), run_dir)
    except (DatasetNotFound, UnknownDataset, ValueError) as exc:
        _fail(str(exc))
        return
    run_pipeline(ctx, results_dir)
    console.rule("2/3 the new-item protocol: a device model that has never seen 10% of the items")
    fresh = open_run(load_config(config, [*sets, "protocol=new-items"]),
                     artifacts_dir() / "demo-new-items", teacher_from=run_dir)
    run_pipeline(fresh, results_dir)
    console.rule("3/3 serve the cloud in-process and simulate every held-out user")
    cfg = SimConfig(dataset=dataset, bundle=bundle, in_process=True)
    with console.status("simulating the fleet over gRPC"):
        report, runs = run(cfg)
    report["tag"] = "demo"
    paths = write_report(report, runs, results_dir)
    print_rows(report)
    print_lift(results_dir / f"quality-{ctx.results_name}.json", student)
    console.print(f"demo finished in {(time.time() - t0) / 60:.1f} min; reports and plots: "
                  + ", ".join(str(p) for p in paths))


def _student_bundle(run_dir: Path, student: str) -> Path:
    """The bundle pair a run writes for `student` (table or sid); any other name is refused."""
    from tandemrec.pipeline_sid import SID_BUNDLE

    if student not in ("table", "sid"):
        _fail(f"--student is table or sid (got {student!r})")
    return run_dir / (SID_BUNDLE if student == "sid" else "bundle")


def print_lift(results: Path, student: str = "table") -> None:
    """The offline evaluation's lift table: collaborative beside edge-only and cloud-full, for
    the table student's modes or the semantic-id student's."""
    import json

    from rich.table import Table

    from tandemrec.eval.lift import lift_rows
    from tandemrec.progress import console

    rows = lift_rows(json.loads(results.read_text()), student)
    which = ", semantic-id student" if student == "sid" else ""
    table = Table(title=f"NDCG@10 on held-out users (offline evaluation, full ranking{which})")
    for c in ("protocol", "users", "cloud-full", "edge-only", "collaborative",
              "lift over edge-only", "of cloud-full"):
        table.add_column(c, justify="left" if c in ("protocol", "users") else "right")
    for r in rows:
        table.add_row(r["protocol"], r["users"], f"{r['cloud-full']:.4f}",
                      f"{r['edge-only']:.4f}", f"{r['collaborative']:.4f}",
                      "n/a" if r["lift"] is None else f"{r['lift']:+.1%}",
                      "n/a" if r["of_cloud_full"] is None else f"{r['of_cloud_full']:.1%}")
    console.print(table)
