"""Loaders for the benchmark datasets (ML-1M, ML-100K, Amazon Beauty) in their published formats."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from tandemrec.data._parse import (
    IntLines,
    decode,
    line_text,
    parse_int_lines,
    read_bytes,
    require_columns,
    require_positive,
)
from tandemrec.data.catalog import HOW_TO_GET, KNOWN_DATASETS, KnownDataset, resolve_name
from tandemrec.data.errors import DataFormatError, DatasetNotFound, UnknownDataset
from tandemrec.data.interactions import load_interactions_file
from tandemrec.data.types import SequenceDataset

__all__ = [
    "describe_data_dir",
    "load_beauty",
    "load_dataset",
    "load_interactions_file",
    "load_ml100k",
    "load_ml1m",
]


def _dataset_dir(root: Path | None, folder: str, marker: str) -> Path:
    """`root/folder`, or `root` itself when the caller already pointed at the dataset folder."""
    root = _root(root)
    return root if (root / marker).is_file() else root / folder


def _text_lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    """Non-blank lines with 1-based numbers; split on "\\n" only, since Latin-1 text may hold
    bytes such as 0x85 that str.splitlines() would treat as line breaks."""
    text = decode(read_bytes(path), encoding)
    return [(i, line.rstrip("\r")) for i, line in enumerate(text.split("\n"), 1) if line.strip()]


def _int_pairs(path: Path) -> np.ndarray:
    data = read_bytes(path)
    expected = '"<id> <id>" (2 integers)'
    return require_columns(parse_int_lines(data, path, expected), 2, path, expected, data)


def _movie_text(title: str, genres: list[str]) -> str:
    return f"{title}. Genres: {', '.join(genres)}" if genres else title


def _read_movies_dat(path: Path) -> dict[int, str]:
    """MovieID -> item text from ML-1M `movies.dat` (`MovieID::Title::Genres`, Latin-1)."""
    texts: dict[int, str] = {}
    for number, line in _text_lines(path, "latin-1"):
        parts = line.split("::")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            raise DataFormatError(path, '"MovieID::Title::Genres"', line, number)
        genres = [g for g in parts[2].strip().split("|") if g]
        texts[int(parts[0])] = _movie_text(parts[1].strip(), genres)
    return texts


def load_ml1m(root: Path | None = None, *, with_text: bool = True) -> SequenceDataset:
    """Load SASRec's ML-1M (`ml-1m/ml-1m.txt`), the standard sequential-recommendation benchmark.

    Dense ids are SASRec's own (users 1..6040 -> index 0..6039, items 1..3416) and each user's
    items keep the file's (time) order. `item_ids`/`user_ids` are the original MovieLens ids and
    item texts ("Title (Year). Genres: A, B") come from `movies.dat`, both via asash's
    `sas_to_original_*.txt` mappings; without those files ids stay SASRec's and texts are None.
    """
    folder = _dataset_dir(root, "ml-1m", "ml-1m.txt")
    path = folder / "ml-1m.txt"
    data = read_bytes(path, HOW_TO_GET["ml-1m"])
    expected = '"<user> <item>" (2 integers)'
    lines = parse_int_lines(data, path, expected)
    pairs = require_columns(lines, 2, path, expected, data)
    users, items = pairs[:, 0], pairs[:, 1]
    require_positive(pairs.min(axis=1), lines.line_numbers, path, "ids >= 1", data)
    # The file is grouped by user already; a stable sort is a no-op then and repairs it if not.
    order = np.argsort(users, kind="stable")
    sas_users, counts = np.unique(users, return_counts=True)
    sequences = list(np.split(np.ascontiguousarray(items[order]), np.cumsum(counts)[:-1]))
    n_items = int(items.max()) if items.size else 0
    meta = {"source": str(path), "ids": "SASRec ids (dense); user_ids/item_ids are MovieLens ids"}

    user_map = _optional_map(folder / "sas_to_original_users.txt")
    item_map = _optional_map(folder / "sas_to_original_items.txt")
    user_ids = [str(user_map.get(int(u), int(u))) for u in sas_users]
    item_ids = [""] + [str(item_map.get(i, i)) for i in range(1, n_items + 1)]
    texts: list[str] | None = None
    movies = folder / "movies.dat"
    if with_text and item_map and movies.is_file():
        by_movie = _read_movies_dat(movies)
        texts = [""] + [by_movie.get(item_map.get(i, -1), "") for i in range(1, n_items + 1)]
    elif with_text:
        meta["item_text"] = "unavailable: needs sas_to_original_items.txt and movies.dat"
    if not user_map or not item_map:
        meta["ids"] = "SASRec ids; mapping files missing so user_ids/item_ids are SASRec ids"
    return SequenceDataset("ml-1m", sequences, n_items, user_ids, item_ids, texts, meta)


def _optional_map(path: Path) -> dict[int, int]:
    if not path.is_file():
        return {}
    pairs = _int_pairs(path)
    return dict(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), strict=True))


def _read_genres(path: Path) -> list[str]:
    """Genre names in flag order from ML-100K `u.genre` (`name|index`)."""
    named: dict[int, str] = {}
    for number, line in _text_lines(path, "latin-1"):
        name, _, index = line.rpartition("|")
        if not name or not index.strip().isdigit():
            raise DataFormatError(path, '"<genre name>|<index>"', line, number)
        named[int(index)] = name
    return [named[i] for i in sorted(named)]


def _read_u_item(path: Path, genres: list[str]) -> dict[int, str]:
    """Item id -> text from ML-100K `u.item` (pipe-separated, Latin-1, genre flags at the end)."""
    texts: dict[int, str] = {}
    width = 5 + len(genres)
    expected = f'"id|title|release date|video date|url|<{len(genres)} genre flags>"'
    for number, line in _text_lines(path, "latin-1"):
        parts = line.split("|")
        if (genres and len(parts) != width) or len(parts) < 2 or not parts[0].isdigit():
            raise DataFormatError(path, expected, line, number)
        flags = parts[5:width] if genres else []
        # "unknown" is a placeholder genre; it adds nothing to an item's text.
        names = [g for g, f in zip(genres, flags, strict=False) if f == "1" and g != "unknown"]
        texts[int(parts[0])] = _movie_text(parts[1].strip(), names)
    return texts


def load_ml100k(root: Path | None = None, *, with_text: bool = True) -> SequenceDataset:
    """Load MovieLens 100K (`ml-100k/u.data`), a small benchmark that is quick to iterate on.

    Each user's ratings are sorted by timestamp (stable, ties keep file order). Users and items
    are re-indexed densely in order of their original numeric id, so on the full file item k is
    MovieLens item k. Texts ("Title (Year). Genres: A, B") come from `u.item` and `u.genre`.
    """
    folder = _dataset_dir(root, "ml-100k", "u.data")
    path = folder / "u.data"
    data = read_bytes(path, HOW_TO_GET["ml-100k"])
    expected = '"<user>\\t<item>\\t<rating>\\t<timestamp>" (4 integers)'
    lines = parse_int_lines(data, path, expected)
    rows = require_columns(lines, 4, path, expected, data)
    require_positive(rows[:, :2].min(axis=1), lines.line_numbers, path, "ids >= 1", data)
    orig_users, user_codes = np.unique(rows[:, 0], return_inverse=True)
    orig_items, item_codes = np.unique(rows[:, 1], return_inverse=True)
    user_codes = user_codes.reshape(-1)
    item_codes = item_codes.reshape(-1)
    order = np.argsort(rows[:, 3], kind="stable")
    order = order[np.argsort(user_codes[order], kind="stable")]
    counts = np.bincount(user_codes, minlength=orig_users.size)
    sequences = list(np.split(item_codes[order] + 1, np.cumsum(counts)[:-1]))
    texts: list[str] | None = None
    meta = {"source": str(path), "ids": "dense in order of original id"}
    if with_text and (folder / "u.item").is_file():
        genre_path = folder / "u.genre"
        genres = _read_genres(genre_path) if genre_path.is_file() else []
        by_id = _read_u_item(folder / "u.item", genres)
        texts = [""] + [by_id.get(int(i), "") for i in orig_items]
    elif with_text:
        meta["item_text"] = "unavailable: u.item missing"
    return SequenceDataset(
        "ml-100k",
        sequences,
        int(orig_items.size),
        [str(u) for u in orig_users],
        [""] + [str(i) for i in orig_items],
        texts,
        meta,
    )


def _beauty_sequences(data: bytes, path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    expected = '"<user> <item> [<item> ...]" (a user id, then item ids in time order)'
    lines: IntLines = parse_int_lines(data, path, expected)
    if lines.counts.size == 0:
        raise DataFormatError(path, "at least one user", "an empty file")
    first = lines.first_line_where(lines.counts < 2)
    if first is not None:
        line = int(lines.line_numbers[first])
        raise DataFormatError(path, expected, line_text(data, line), line)
    line_of_value = np.repeat(lines.line_numbers, lines.counts)
    require_positive(lines.values, line_of_value, path, "ids >= 1", data)
    users = lines.values[lines.offsets[:-1]]
    _, first_seen, seen = np.unique(users, return_index=True, return_counts=True)
    if np.any(seen > 1):
        dup = np.setdiff1d(np.arange(users.size), first_seen)[0]
        line = int(lines.line_numbers[dup])
        raise DataFormatError(path, "each user on one line only", line_text(data, line), line)
    starts, stops = lines.offsets[:-1] + 1, lines.offsets[1:]
    sequences = [lines.values[a:b] for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]
    return sequences, users


def _read_beauty_titles(path: Path) -> dict[int, tuple[str, str]]:
    """Item id -> (ASIN, title) from `Beauty_item_titles.tsv`, HTML entities decoded."""
    rows = _text_lines(path, "utf-8")
    header = ["item_id", "asin", "title"]
    if not rows or rows[0][1].split("\t") != header:
        found = rows[0][1] if rows else ""
        raise DataFormatError(path, 'the header "item_id\\tasin\\ttitle"', found, 1)
    titles: dict[int, tuple[str, str]] = {}
    for number, line in rows[1:]:
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            raise DataFormatError(path, '"<item_id>\\t<asin>\\t<title>"', line, number)
        titles[int(parts[0])] = (parts[1], html.unescape(parts[2]).strip())
    return titles


def load_beauty(root: Path | None = None, *, with_text: bool = True) -> SequenceDataset:
    """Load the 5-core Amazon Beauty of S3-Rec (`amazon-beauty/Beauty.txt`), a sparse benchmark.

    One user per line, items in time order; ids are already dense (items 1..12101), users keep
    file order. `item_ids` are Amazon ASINs and texts the product titles when
    `Beauty_item_titles.tsv` is present (empty titles stay ""); otherwise ids and None.
    """
    folder = _dataset_dir(root, "amazon-beauty", "Beauty.txt")
    path = folder / "Beauty.txt"
    data = read_bytes(path, HOW_TO_GET["beauty"])
    sequences, users = _beauty_sequences(data, path)
    n_items = max((int(s.max()) for s in sequences), default=0)
    item_ids = [""] + [str(i) for i in range(1, n_items + 1)]
    texts: list[str] | None = None
    meta = {"source": str(path), "ids": "S3-Rec ids (dense); item_ids are ASINs when known"}
    titles_path = folder / "Beauty_item_titles.tsv"
    if with_text and titles_path.is_file():
        titles = _read_beauty_titles(titles_path)
        item_ids = [""] + [titles.get(i, (str(i), ""))[0] for i in range(1, n_items + 1)]
        texts = [""] + [titles.get(i, ("", ""))[1] for i in range(1, n_items + 1)]
    elif with_text:
        meta["item_text"] = "unavailable: Beauty_item_titles.tsv missing"
    user_ids = [str(u) for u in users.tolist()]
    return SequenceDataset("beauty", sequences, n_items, user_ids, item_ids, texts, meta)


def _main_file(known: KnownDataset, root: Path) -> Path:
    """The first of the dataset's candidate files that exists, else the first candidate."""
    paths = [root / f for f in known.files]
    return next((p for p in paths if p.is_file()), paths[0])


def _load_ml1m_raw(root: Path, with_text: bool) -> SequenceDataset:
    known = resolve_name("ml-1m-raw")
    assert known is not None
    path = _main_file(known, root)
    if not path.is_file():
        raise DatasetNotFound(path, known.how_to_get)
    ds = load_interactions_file(path, has_header=False, text_cols=[], name="ml-1m-raw")
    movies = root / "ml-1m" / "movies.dat"
    if with_text and movies.is_file():
        # Raw ratings use MovieLens ids, so titles join directly.
        by_movie = _read_movies_dat(movies)
        ds.item_texts = [""] + [by_movie.get(int(i), "") for i in ds.item_ids[1:]]
    return ds


def _load_known(known: KnownDataset, root: Path, with_text: bool = True) -> SequenceDataset:
    if known.name == "ml-1m-raw":
        return _load_ml1m_raw(root, with_text)
    loaders = {"ml-1m": load_ml1m, "ml-100k": load_ml100k, "beauty": load_beauty}
    return loaders[known.name](root, with_text=with_text)


def _root(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    from tandemrec.paths import data_dir as default_data_dir

    return default_data_dir()


def load_dataset(name_or_path: str, data_dir: Path | None = None) -> SequenceDataset:
    """Load a dataset by name (ml-1m, ml-100k, beauty, ml-1m-raw) or from an interactions file.

    Names are looked up under `data_dir` (default: tandemrec.paths.data_dir()); a path is tried
    as given, then relative to `data_dir`.
    """
    root = _root(data_dir)
    known = resolve_name(name_or_path)
    if known is not None:
        return _load_known(known, root)
    path = Path(name_or_path).expanduser()
    for candidate in (path, root / path):
        if candidate.is_file():
            return load_interactions_file(candidate)
    if path.suffix or len(path.parts) > 1:
        raise DatasetNotFound(path, "Pass an existing CSV/TSV/Parquet file of interactions")
    raise UnknownDataset(name_or_path, [d.name for d in KNOWN_DATASETS])


def describe_data_dir(data_dir: Path | None = None) -> list[dict[str, object]]:
    """One row per known dataset (status, path, counts, how to get it), backing `tandem data`.

    Counting loads the interactions without texts (about a second for all of them).
    """
    root = _root(data_dir)
    rows: list[dict[str, object]] = []
    for known in KNOWN_DATASETS:
        path = _main_file(known, root)
        row: dict[str, object] = {
            "name": known.name,
            "status": "missing",
            "path": str(path),
            "users": None,
            "items": None,
            "interactions": None,
            "description": known.description,
            "how_to_get": known.how_to_get,
            "error": None,
        }
        if path.is_file():
            try:
                ds = _load_known(known, root, with_text=False)
            except (DataFormatError, OSError) as exc:
                # A broken file should show up in the listing, not abort it.
                row.update(status="invalid", error=str(exc))
            else:
                row.update(
                    status="found",
                    users=ds.n_users,
                    items=ds.n_items,
                    interactions=ds.n_interactions,
                )
        rows.append(row)
    return rows
