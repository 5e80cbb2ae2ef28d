"""A user's own interaction logs (CSV/TSV/`::`/Parquet, optionally gzipped) as a SequenceDataset."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandemrec.data._parse import (
    decode,
    dense_index,
    group_sequences,
    parse_int_lines,
    read_bytes,
)
from tandemrec.data.errors import DataFormatError
from tandemrec.data.types import SequenceDataset

# Columns that `text_cols=None` picks up as item text, matched case-insensitively.
TEXT_COLUMN_NAMES = ("title", "name", "text", "description", "genres", "genre", "category", "brand")
PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SEPARATORS = (",", "\t", ";", "|")
_LEADING_ZERO = re.compile(rb"(?<![0-9])0[0-9]")


Column = list[object] | np.ndarray  # ndarray when the column parsed as integers


@dataclass
class _Table:
    """Rows of string cells with their header and where each row came from (for errors)."""

    header: list[str]
    columns: dict[str, Column]
    locations: np.ndarray  # 1-based line (delimited) or row (Parquet) of each record
    unit: str  # "line" or "row"
    headerless: bool = False


def _sniff_separator(path: Path, first_line: str) -> str | None:
    """Pick the separator from the file name, else from the first line; None = whitespace."""
    name = path.name.lower().removesuffix(".gz")
    if "::" in first_line:
        return "::"
    if name.endswith(".tsv"):
        return "\t"
    if name.endswith(".csv"):
        return ","
    return next((s for s in ("\t", ",", ";", "|") if s in first_line), None)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _split_rows(text: str, sep: str | None) -> tuple[list[list[str]], list[int]]:
    """Split text into non-blank records and their 1-based line numbers."""
    if sep in _CSV_SEPARATORS:
        reader = csv.reader(io.StringIO(text), delimiter=sep)
        rows: list[list[str]] = []
        lines: list[int] = []
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(reader.line_num)
        return rows, lines
    # Multi-character ("::") and whitespace separators: csv cannot do these, and such files
    # (MovieLens .dat) never quote fields, so plain splitting is exact and faster.
    raw = text.split("\n")
    lines = [i for i, line in enumerate(raw, 1) if line.strip()]
    if sep is None or not sep.strip():
        return [raw[i - 1].split() for i in lines], lines
    return [raw[i - 1].rstrip("\r").split(sep) for i in lines], lines


def _headerless_names(
    path: Path, first: str, line: int, n: int, user_col: str, item_col: str, time_col: str | None
) -> list[str]:
    """Column names for a file without a header, inferred from the number of fields."""
    time = time_col or "timestamp"
    if n == 2:
        return [user_col, item_col]
    if n == 3:
        return [user_col, item_col, time]
    if n == 4:
        return [user_col, item_col, "rating", time]
    expected = "2-4 fields (user, item[, rating][, timestamp]) in a file without a header"
    raise DataFormatError(path, expected, first, line)


def _first_line(text: str) -> tuple[int, str]:
    """0-based index and text of the first non-blank line (without splitting the whole file)."""
    start = index = 0
    while True:
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        if line.strip() or end < 0:
            return index, line.rstrip("\r")
        start, index = end + 1, index + 1


def _split_line(line: str, sep: str | None) -> list[str]:
    if sep in _CSV_SEPARATORS:
        return next(csv.reader([line], delimiter=sep), [])
    return line.split() if sep is None or not sep.strip() else line.split(sep)


def _numeric_table(
    text: str, sep: str | None, skip: int, header: list[str], headerless: bool
) -> _Table | None:
    """All-integer files (MovieLens ratings.dat, numeric CSVs) parsed with numpy; None if the
    file is not purely integers, in which case the general path parses it and reports errors."""
    body = text.split("\n", skip)[-1] if skip else text
    try:
        data = body.encode("ascii")
    except UnicodeEncodeError:
        return None
    if sep is not None and sep.strip():
        data = data.replace(sep.encode("ascii"), b" ")
    if _LEADING_ZERO.search(data):
        return None  # "007" must stay "007" in item_ids, so such ids go the string path
    try:
        lines = parse_int_lines(data, Path("-"), "")
    except DataFormatError:
        return None
    width = len(header)
    if lines.counts.size == 0 or np.any(lines.counts != width):
        return None
    values = lines.values.reshape(-1, width)
    columns: dict[str, Column] = {name: values[:, j] for j, name in enumerate(header)}
    return _Table(header, columns, lines.line_numbers + skip, "line", headerless)


def _read_delimited(
    path: Path, sep: str | None, has_header: bool | None, cols: tuple[str, str, str | None]
) -> _Table:
    text = decode(read_bytes(path))
    if not text.strip():
        raise DataFormatError(path, "at least one interaction", "an empty file")
    first_index, first = _first_line(text)
    if sep is None:
        sep = _sniff_separator(path, first)
    head_cells = _split_line(first, sep)
    user_col, item_col, _ = cols
    head = [cell.strip() for cell in head_cells]
    if has_header is None:
        # A header names the columns; a data row of ids and timestamps holds some number.
        has_header = (user_col in head and item_col in head) or not any(map(_is_number, head))
    if has_header:
        header = head
    else:
        found = (sep or " ").join(head_cells)
        header = _headerless_names(path, found, first_index + 1, len(head), *cols)
    skip = first_index + 1 if has_header else 0
    fast = _numeric_table(text, sep, skip, header, not has_header)
    if fast is not None:
        return fast
    rows, lines = _split_rows(text, sep)
    if has_header:
        rows, lines = rows[1:], lines[1:]
    width = len(header)
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            shown = "whitespace" if sep is None else repr(sep)
            found = (sep or " ").join(row)
            raise DataFormatError(path, f"{width} fields separated by {shown}", found, line)
    values = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    columns: dict[str, Column] = {name: list(col) for name, col in zip(header, values, strict=True)}
    return _Table(header, columns, np.array(lines, dtype=np.int64), "line", not has_header)


def _read_parquet(path: Path) -> _Table:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {path.name} needs pyarrow: pip install pyarrow") from exc
    if not path.is_file():
        read_bytes(path)  # raises DatasetNotFound with the standard message
    table = pq.read_table(path)
    columns: dict[str, Column] = {}
    for name in table.column_names:
        column = table.column(name)
        # Arrow dates/timestamps become integer seconds/units so they sort like numeric logs.
        if pa.types.is_date(column.type):
            column = column.cast(pa.timestamp("s"))
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        if pa.types.is_integer(column.type) and column.null_count == 0:
            columns[name] = column.to_numpy().astype(np.int64)
        else:
            columns[name] = column.to_pylist()
    rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
    return _Table(list(table.column_names), columns, rows, "row")


def _ids(table: _Table, col: str, path: Path) -> np.ndarray:
    values = table.columns[col]
    if isinstance(values, np.ndarray):
        return values
    for value, where in zip(values, table.locations.tolist(), strict=True):
        if value is None or not str(value).strip():
            raise DataFormatError(path, f"a value in column {col!r}", "", where, unit=table.unit)
    return np.char.strip(np.array([str(v) for v in values], dtype=str))


def _times(table: _Table, col: str, path: Path) -> np.ndarray:
    """Numeric timestamps; ints stay int64 so millisecond/nanosecond ties are not blurred."""
    values = table.columns[col]
    if isinstance(values, np.ndarray):
        return values
    cells = ["" if v is None else str(v).strip() for v in values]
    try:
        return np.array(cells, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    for cell, where in zip(cells, table.locations.tolist(), strict=True):
        if not _is_number(cell) or not np.isfinite(float(cell)):
            expected = f"a numeric timestamp in column {col!r}"
            raise DataFormatError(path, expected, cell, where, unit=table.unit)
    return np.array(cells, dtype=np.float64)


def _row_texts(table: _Table, text_cols: list[str]) -> list[str]:
    parts = [table.columns[c] for c in text_cols]
    texts = []
    for cells in zip(*parts, strict=True):
        pieces = [str(c).strip() for c in cells if c is not None and str(c).strip()]
        texts.append(". ".join(pieces))
    return texts


def _item_texts(item_codes: np.ndarray, row_texts: list[str], n_items: int) -> list[str]:
    """First non-empty text of each item in file order; "" where an item never has one."""
    texts = [""] * (n_items + 1)
    nonempty = np.flatnonzero(np.array([bool(t) for t in row_texts], dtype=bool))
    _, first = np.unique(item_codes[nonempty], return_index=True)
    for row in nonempty[first]:
        texts[int(item_codes[row]) + 1] = row_texts[row]
    return texts


def _dataset_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".parquet", ".pq", ".csv", ".tsv", ".dat", ".txt"):
        name = name.removesuffix(suffix)
    return name or path.name


def load_interactions_file(
    path: Path | str,
    *,
    sep: str | None = None,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = "timestamp",
    text_cols: list[str] | None = None,
    has_header: bool | None = None,
    name: str | None = None,
) -> SequenceDataset:
    """Load a user's own interaction log so it can be trained on like the benchmark datasets.

    Accepts CSV/TSV/`::`/whitespace files (optionally `.gz`) and Parquet. Without a header the
    columns are user,item / user,item,timestamp / user,item,rating,timestamp by count (MovieLens
    `ratings.dat`). Users and items are re-indexed densely in order of their original id (numeric
    when all ids are integers), so the mapping does not depend on row order; each user's items
    are sorted by time (stable: ties keep file order; `time_col=None` keeps file order).
    `text_cols=None` uses the columns named like TEXT_COLUMN_NAMES; pass [] for no text.
    """
    path = Path(path)
    cols = (user_col, item_col, time_col)
    if path.name.lower().endswith(PARQUET_SUFFIXES):
        table = _read_parquet(path)
    else:
        table = _read_delimited(path, sep, has_header, cols)
    if table.headerless and time_col not in table.columns:
        time_col = None  # "user item" pairs carry no time: their file order is the order
    if text_cols is None:
        reserved = {user_col, item_col, time_col}
        wanted = {n.lower() for n in TEXT_COLUMN_NAMES}
        text_cols = [c for c in table.header if c.lower() in wanted and c not in reserved]
    required = [c for c in (user_col, item_col, time_col) if c is not None] + list(text_cols)
    missing = [c for c in required if c not in table.columns]
    if missing:
        expected = (
            f"columns {', '.join(required)} (missing {', '.join(missing)}; choose others with "
            "user_col=, item_col=, time_col=, text_cols=)"
        )
        raise DataFormatError(path, expected, ", ".join(table.header))
    if table.locations.size == 0:
        raise DataFormatError(path, "at least one interaction", "only a header")
    user_codes, user_ids = dense_index(_ids(table, user_col, path))
    item_codes, item_ids = dense_index(_ids(table, item_col, path))
    times = _times(table, time_col, path) if time_col is not None else None
    n_items = len(item_ids)
    sequences = group_sequences(user_codes, item_codes + 1, times, len(user_ids))
    texts = None
    if text_cols:
        texts = _item_texts(item_codes, _row_texts(table, text_cols), n_items)
    meta = {
        "source": str(path),
        "ids": "dense in order of original id (numeric when all ids are integers)",
        "order": f"by {time_col}, ties in file order" if time_col else "file order",
        "text_columns": ", ".join(text_cols),
    }
    return SequenceDataset(
        name=name or _dataset_name(path),
        sequences=sequences,
        n_items=n_items,
        user_ids=user_ids,
        item_ids=[""] + item_ids,
        item_texts=texts,
        meta=meta,
    )
