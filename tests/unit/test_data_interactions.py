"""The generic interactions-file loader: CSV/TSV/`::`/gz/Parquet, ordering, re-indexing, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tandemrec.data import (
    DataFormatError,
    DatasetNotFound,
    SequenceDataset,
    load_interactions_file,
    make_synthetic,
    write_synthetic_csv,
)

pytestmark = pytest.mark.unit


def originals(ds: SequenceDataset) -> dict[str, list[str]]:
    return {
        ds.user_ids[u]: [ds.item_ids[i] for i in seq.tolist()] for u, seq in enumerate(ds.sequences)
    }


def test_csv_sorts_each_user_by_time_with_stable_ties(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\nu2,c,30\nu1,b,20\nu1,a,10\nu2,a,30\nu2,b,5\nu1,c,20\n")
    ds = load_interactions_file(path)
    assert originals(ds) == {"u1": ["a", "b", "c"], "u2": ["b", "c", "a"]}
    assert ds.item_texts is None and ds.name == "log"


def test_dense_reindex_round_trip_orders_numeric_ids_numerically(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    rows = [(10, 100, 3), (9, 7, 1), (10, 9, 1), (9, 100, 2), (2, 7, 5)]
    path.write_text("user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    ds = load_interactions_file(path)
    assert ds.user_ids == ["2", "9", "10"]
    assert ds.item_ids == ["", "7", "9", "100"]
    assert ds.n_items == 3
    assert all(s.min() >= 1 and s.max() <= ds.n_items for s in ds.sequences)
    assert originals(ds) == {"2": ["7"], "9": ["7", "100"], "10": ["9", "100"]}


def test_text_columns_take_first_non_empty_per_item(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(
        "user,item,timestamp,title,genres\n"
        'a,1,1,,\na,2,2,"Heat, the film",Crime\nb,1,3,Toy Story,Comedy\nb,2,4,Other,\n'
    )
    ds = load_interactions_file(path)
    assert ds.item_texts == ["", "Toy Story. Comedy", "Heat, the film. Crime"]
    assert load_interactions_file(path, text_cols=[]).item_texts is None
    assert load_interactions_file(path, text_cols=["genres"]).item_texts == ["", "Comedy", "Crime"]


def test_tsv_gz_and_custom_column_names(tmp_path: Path) -> None:
    path = tmp_path / "events.tsv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("uid\tmovie\tts\n1\t5\t2\n1\t6\t1\n")
    ds = load_interactions_file(path, user_col="uid", item_col="movie", time_col="ts")
    assert originals(ds) == {"1": ["6", "5"]}
    assert ds.name == "events"


def test_movielens_raw_ratings_double_colon_gz_without_header(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("1::1193::5::978300760\n1::661::3::978302109\n1::914::3::978301968\n")
        handle.write("2::1357::5::978298709\n")
    ds = load_interactions_file(path)
    assert originals(ds) == {"1": ["1193", "914", "661"], "2": ["1357"]}
    assert ds.item_texts is None


def test_double_colon_with_text_falls_back_to_general_parser(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("user::item::timestamp::title\n1::5::2::Fargo (1996)\n1::4::1::Heat\n")
    ds = load_interactions_file(path)
    assert originals(ds) == {"1": ["4", "5"]}
    assert ds.item_texts == ["", "Heat", "Fargo (1996)"]


def test_headerless_three_columns_and_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    path.write_text("1 2 30\n1 3 10\n\n2 2 5\n")
    assert originals(load_interactions_file(path)) == {"1": ["3", "2"], "2": ["2"]}
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1 3\n1 2\n")
    assert originals(load_interactions_file(pairs)) == {"1": ["3", "2"]}  # file order


def test_missing_column_names_file_found_and_expected(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,2,3.5,100\n")
    with pytest.raises(DataFormatError) as err:
        load_interactions_file(path)
    message = str(err.value)
    assert message.startswith("ratings.csv: expected columns user, item, timestamp")
    assert 'got "userId, movieId, rating, timestamp"' in message
    ds = load_interactions_file(path, user_col="userId", item_col="movieId")
    assert ds.n_interactions == 1


def test_non_numeric_timestamp_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n1,2,100\n\n1,3,yesterday\n")
    with pytest.raises(DataFormatError) as err:
        load_interactions_file(path)
    assert str(err.value).startswith(
        "log.csv line 4: expected a numeric timestamp in column 'timestamp', got \"yesterday\""
    )


def test_float_timestamps_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n1,2,1.5e9\n1,3,1.2e9\n")
    assert originals(load_interactions_file(path)) == {"1": ["3", "2"]}


def test_wrong_field_count_and_bad_headerless_width(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n1,2,3\n1,2\n")
    with pytest.raises(DataFormatError, match="log.csv line 3: expected 3 fields separated by ','"):
        load_interactions_file(path)
    wide = tmp_path / "wide.dat"
    wide.write_text("1::2::3::4::5\n")
    with pytest.raises(DataFormatError, match="wide.dat line 1: expected 2-4 fields"):
        load_interactions_file(wide)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match="at least one interaction"):
        load_interactions_file(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("user,item,timestamp\n")
    with pytest.raises(DataFormatError, match="at least one interaction"):
        load_interactions_file(header_only)
    with pytest.raises(DatasetNotFound, match="nope.csv not found"):
        load_interactions_file(tmp_path / "nope.csv")


def test_parquet_round_trip(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "user": ["b", "a", "a", "b"],
            "item": [3, 1, 2, 1],
            "timestamp": pa.array([4, 2, 1, 3], type=pa.timestamp("s")),
            "title": ["three", "one", None, "one"],
        }
    )
    path = tmp_path / "log.parquet"
    pq.write_table(table, path)
    ds = load_interactions_file(path)
    assert originals(ds) == {"a": ["2", "1"], "b": ["1", "3"]}
    assert ds.item_texts == ["", "one", "", "three"]
    with pytest.raises(DataFormatError, match="log.parquet: expected columns user, item, time"):
        load_interactions_file(path, time_col="time")


def test_parquet_string_timestamp_error_names_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user": [1, 1], "item": [1, 2], "timestamp": ["1", "x"]}), path)
    with pytest.raises(DataFormatError, match="bad.parquet row 2: expected a numeric timestamp"):
        load_interactions_file(path)


@pytest.mark.parametrize("name", ["synthetic.csv", "synthetic.csv.gz"])
def test_synthetic_csv_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    written = write_synthetic_csv(path, n_users=20, n_items=30, seed=3)
    assert originals(written) == originals(make_synthetic(n_users=20, n_items=30, seed=3))
    loaded = load_interactions_file(path)
    assert originals(loaded) == originals(written)
    texts = dict(zip(written.item_ids, written.item_texts or [], strict=True))
    assert loaded.item_texts is not None
    for item_id, text in zip(loaded.item_ids[1:], loaded.item_texts[1:], strict=True):
        assert text == texts[item_id]


def test_ids_with_leading_zeros_are_kept_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp\n01,007,2\n01,7,1\n")
    ds = load_interactions_file(path)
    assert ds.user_ids == ["01"] and ds.item_ids == ["", "007", "7"]  # ties: by string
    assert originals(ds) == {"01": ["7", "007"]}
