"""Shared parsing helpers: fast whitespace-separated integer files, decoding, dense re-indexing."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandemrec.data.errors import DataFormatError, DatasetNotFound

_MAX_DIGITS = 18  # int64 holds every 18-digit number; longer tokens would overflow silently


def read_bytes(path: Path, how_to_get: str = "") -> bytes:
    """Read a whole file (transparently gunzipping `.gz`), raising DatasetNotFound if absent."""
    if not path.is_file():
        raise DatasetNotFound(path, how_to_get)
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle:
            return handle.read()
    return path.read_bytes()


def decode(data: bytes, encoding: str | None = None) -> str:
    """Decode bytes as the given encoding, else UTF-8 (BOM tolerated) falling back to Latin-1."""
    if encoding is not None:
        return data.decode(encoding)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Latin-1 never fails, and it is what MovieLens and many older exports use.
        return data.decode("latin-1")


def line_text(data: bytes, line: int) -> str:
    """The text of 1-based line `line` of `data`, for error messages."""
    lines = data.split(b"\n", line)
    return lines[line - 1].decode("latin-1") if line - 1 < len(lines) else ""


@dataclass
class IntLines:
    """Integer tokens of a whitespace-separated file, grouped by non-blank line."""

    values: np.ndarray  # every token, flat, int64
    counts: np.ndarray  # tokens on each non-blank line
    offsets: np.ndarray  # start of each line's tokens in `values` (length n_lines + 1)
    line_numbers: np.ndarray  # 1-based line number in the file of each non-blank line

    def first_line_where(self, bad: np.ndarray) -> int | None:
        """Index (into the non-blank lines) of the first True in `bad`, or None."""
        hits = np.flatnonzero(bad)
        return int(hits[0]) if hits.size else None


def parse_int_lines(data: bytes, path: Path, expected: str) -> IntLines:
    """Parse a file of whitespace-separated non-negative integers with numpy, keeping line numbers.

    Validation is vectorised over the raw bytes, so a bad file costs no more than a good one and
    the error still points at the first offending line.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    is_ws = (buf == 32) | (buf == 9) | (buf == 13) | (buf == 10)
    is_digit = (buf >= 48) & (buf <= 57)
    bad = np.flatnonzero(~(is_ws | is_digit))
    newlines = np.flatnonzero(buf == 10)
    if bad.size:
        line = int(np.searchsorted(newlines, bad[0])) + 1
        raise DataFormatError(path, expected, line_text(data, line), line)
    prev_ws = np.empty_like(is_ws)
    if prev_ws.size:
        prev_ws[0] = True
        prev_ws[1:] = is_ws[:-1]
    starts = np.flatnonzero(~is_ws & prev_ws)
    next_ws = np.empty_like(is_ws)
    if next_ws.size:
        next_ws[-1] = True
        next_ws[:-1] = is_ws[1:]
    ends = np.flatnonzero(~is_ws & next_ws) + 1
    token_line = np.searchsorted(newlines, starts)  # 0-based line of each token
    too_long = np.flatnonzero(ends - starts > _MAX_DIGITS)
    if too_long.size:
        line = int(token_line[too_long[0]]) + 1
        raise DataFormatError(path, expected, line_text(data, line), line)
    # fromstring misreads whitespace-only input as one number, so skip it when there is no token.
    text = data.decode("ascii")
    values = np.fromstring(text, dtype=np.int64, sep=" ") if starts.size else starts[:0]
    if values.size != starts.size:  # cannot happen after the byte check; guard numpy changes
        raise DataFormatError(path, expected, f"{values.size} of {starts.size} integers parsed")
    per_line = np.bincount(token_line, minlength=newlines.size + 1)
    nonblank = np.flatnonzero(per_line)
    counts = per_line[nonblank]
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return IntLines(values, counts, offsets, nonblank + 1)


def require_columns(lines: IntLines, n: int, path: Path, expected: str, data: bytes) -> np.ndarray:
    """Reshape to (n_lines, n), raising on the first line with a different token count."""
    if lines.counts.size == 0:
        raise DataFormatError(path, "at least one line of data", "an empty file")
    first = lines.first_line_where(lines.counts != n)
    if first is not None:
        line = int(lines.line_numbers[first])
        raise DataFormatError(path, expected, line_text(data, line), line)
    return lines.values.reshape(-1, n)


def require_positive(
    ids: np.ndarray, lines: np.ndarray, path: Path, expected: str, data: bytes
) -> None:
    """Raise on the first id < 1: id 0 is padding, so a file may never use it for a real item."""
    hits = np.flatnonzero(ids < 1)
    if hits.size:
        line = int(lines[hits[0]])
        raise DataFormatError(path, expected, line_text(data, line), line)


def dense_index(keys: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map string keys to dense 0-based codes ordered by original id.

    The order is numeric when every key is an integer and lexicographic otherwise, so the
    mapping depends only on the set of ids, never on row order.
    """
    if keys.dtype.kind in "iu":
        ints, codes = np.unique(keys, return_inverse=True)
        return codes.reshape(-1), [str(k) for k in ints.tolist()]
    uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
    try:
        numeric = np.array([int(k) for k in uniq], dtype=np.int64)
        order = np.lexsort((uniq, numeric))
    except (ValueError, OverflowError):
        order = np.arange(uniq.size)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[order] = np.arange(uniq.size)
    return rank[inverse.reshape(-1)], [str(k) for k in uniq[order]]


def group_sequences(
    user_codes: np.ndarray, items: np.ndarray, times: np.ndarray | None, n_users: int
) -> list[np.ndarray]:
    """Split interactions into per-user arrays, time-ordered with ties kept in file order."""
    if times is None:
        order = np.argsort(user_codes, kind="stable")
    else:
        order = np.argsort(times, kind="stable")
        order = order[np.argsort(user_codes[order], kind="stable")]
    ordered = np.ascontiguousarray(items[order], dtype=np.int64)
    counts = np.bincount(user_codes, minlength=n_users)
    return list(np.split(ordered, np.cumsum(counts)[:-1]))
