"""Errors raised by the data layer, written so a user can fix their file without reading code."""

from __future__ import annotations

from pathlib import Path

_MAX_FOUND = 120  # long lines (a Beauty user has hundreds of items) would drown the message


def _clip(text: str) -> str:
    text = text.rstrip("\r\n")
    return text if len(text) <= _MAX_FOUND else text[: _MAX_FOUND - 3] + "..."


class DataFormatError(ValueError):
    """A data file is not in the expected format; names the file, the line, expected vs found."""

    def __init__(
        self,
        path: Path | str,
        expected: str,
        found: str | None = None,
        line: int | None = None,
        *,
        unit: str = "line",
    ) -> None:
        self.path = Path(path)
        self.expected = expected
        self.found = found
        self.line = line
        where = self.path.name if line is None else f"{self.path.name} {unit} {line}"
        message = f"{where}: expected {expected}"
        if found is not None:
            message += f', got "{_clip(found)}"'
        # The bare file name keeps the message short; the directory helps when several exist.
        message += f" (in {self.path.parent})"
        super().__init__(message)


class DatasetNotFound(FileNotFoundError):
    """A dataset file is missing; says which file, where it was looked for and how to get it."""

    def __init__(self, path: Path | str, how_to_get: str = "") -> None:
        self.path = Path(path)
        self.how_to_get = how_to_get
        message = f"{self.path.name} not found in {self.path.parent}."
        if how_to_get:
            message += f" {how_to_get.rstrip('.')}."
        message += (
            " Datasets are read from $TANDEM_DATA_DIR (default ../shared/data beside the checkout);"
            " set TANDEM_DATA_DIR to the directory that holds the dataset folders."
        )
        # Only a message argument: OSError.__str__ would otherwise reformat it as "[Errno ...]".
        super().__init__(message)


class UnknownDataset(ValueError):
    """A dataset name that is neither a known dataset nor an existing file."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"unknown dataset {name!r}: expected one of {', '.join(known)} or a path to a "
            "CSV/TSV/Parquet interactions file"
        )
