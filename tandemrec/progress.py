"""Rich progress bars and tables shared by the CLI stages."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)
if not console.is_terminal:  # log files: long lines, no wrapping
    console = Console(stderr=True, width=160)
_quiet = False  # set in every DDP process but rank 0 (train/ddp.py): one log, one bar


def quiet(on: bool = True) -> None:
    global _quiet
    _quiet = on


def stage_progress() -> Progress:
    """A progress bar showing the step count, a free-text status (loss, metrics) and the ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"),
        TimeRemainingColumn(), console=console, transient=False,
        disable=_quiet or not console.is_terminal,
    )


def log(message: str) -> None:
    if not _quiet:
        console.log(message)


def metrics_table(title: str, rows: list[dict], columns: list[str]) -> Table:
    """A table of result rows (dicts); floats are shown with 4 decimals."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c == "mode" else "right")
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v)))
        table.add_row(*cells)
    return table
