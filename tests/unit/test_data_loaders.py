"""Benchmark loaders on tiny files written in the real formats (no real data is copied here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tandemrec.data import (
    DataFormatError,
    DatasetNotFound,
    UnknownDataset,
    describe_data_dir,
    load_beauty,
    load_dataset,
    load_interactions_file,
    load_ml1m,
    load_ml100k,
)
from tandemrec.paths import data_dir

pytestmark = pytest.mark.unit

MOVIES = [
    "10::Toy Story (1995)::Animation|Children's|Comedy",
    "20::Misérables, Les (1998)::Drama",  # written as Latin-1, like movies.dat
    "30::Heat (1995)::Action|Crime|Thriller",
]


def write_ml1m(root: Path, pairs: str, maps: bool = True) -> Path:
    folder = root / "ml-1m"
    folder.mkdir(parents=True)
    (folder / "ml-1m.txt").write_text(pairs)
    if maps:
        (folder / "sas_to_original_items.txt").write_text("1 20\n2 10\n3 30\n")
        (folder / "sas_to_original_users.txt").write_text("1 501\n2 502\n")
        (folder / "movies.dat").write_bytes("\n".join(MOVIES).encode("latin-1") + b"\n")
    return folder


def test_ml1m_keeps_file_order_and_dense_ids(tmp_path: Path) -> None:
    write_ml1m(tmp_path, "1 3\n1 1\n1 2\n2 2\n2 3\n2 1\n2 2\n")
    ds = load_ml1m(tmp_path)
    assert ds.n_users == 2 and ds.n_items == 3 and ds.n_interactions == 7
    assert ds.sequences[0].tolist() == [3, 1, 2]
    assert ds.sequences[1].tolist() == [2, 3, 1, 2]
    assert ds.sequences[0].dtype == np.int64


def test_ml1m_joins_original_ids_and_latin1_titles(tmp_path: Path) -> None:
    write_ml1m(tmp_path, "1 1\n1 2\n2 3\n")
    ds = load_ml1m(tmp_path)
    assert ds.user_ids == ["501", "502"]
    assert ds.item_ids == ["", "20", "10", "30"]
    assert ds.item_texts is not None
    assert ds.item_texts[0] == ""
    assert ds.item_texts[1] == "Misérables, Les (1998). Genres: Drama"
    assert ds.item_texts[2] == "Toy Story (1995). Genres: Animation, Children's, Comedy"


def test_ml1m_accepts_the_dataset_folder_itself(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path, "1 1\n1 2\n")
    assert load_ml1m(folder).n_interactions == 2


def test_ml1m_without_mapping_files_has_no_text(tmp_path: Path) -> None:
    write_ml1m(tmp_path, "1 1\n1 2\n", maps=False)
    ds = load_ml1m(tmp_path)
    assert ds.item_texts is None
    assert ds.item_ids == ["", "1", "2"] and ds.user_ids == ["1"]


@pytest.mark.parametrize(
    ("content", "line", "found"),
    [("1 1\n1 2\n1 a b\n", 3, "1 a b"), ("1 1\n1 2 3\n", 2, "1 2 3"), ("1 1\n\n2\n", 3, "2")],
)
def test_ml1m_bad_line_names_file_line_and_expectation(
    tmp_path: Path, content: str, line: int, found: str
) -> None:
    write_ml1m(tmp_path, content)
    with pytest.raises(DataFormatError) as err:
        load_ml1m(tmp_path)
    message = str(err.value)
    assert message.startswith(f'ml-1m.txt line {line}: expected "<user> <item>" (2 integers)')
    assert f'got "{found}"' in message
    assert err.value.line == line


def test_empty_files_are_reported(tmp_path: Path) -> None:
    write_ml1m(tmp_path, "\n")
    with pytest.raises(DataFormatError, match="ml-1m.txt: expected at least one line"):
        load_ml1m(tmp_path)
    write_beauty(tmp_path, "")
    with pytest.raises(DataFormatError, match="Beauty.txt: expected at least one user"):
        load_beauty(tmp_path)


def test_ml1m_rejects_padding_id(tmp_path: Path) -> None:
    write_ml1m(tmp_path, "1 1\n1 0\n")
    with pytest.raises(DataFormatError, match="line 2: expected ids >= 1"):
        load_ml1m(tmp_path)


def test_ml1m_bad_movies_line(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path, "1 1\n")
    (folder / "movies.dat").write_text("10::Toy Story (1995)::Comedy\n20 no separators\n")
    with pytest.raises(DataFormatError, match=r"movies\.dat line 2: expected \"MovieID::"):
        load_ml1m(tmp_path)


def test_missing_file_says_what_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound) as err:
        load_ml1m(tmp_path)
    message = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert "ml-1m.txt not found in" in message and str(tmp_path / "ml-1m") in message
    assert "SASRec" in message and "TANDEM_DATA_DIR" in message


def write_ml100k(root: Path) -> Path:
    folder = root / "ml-100k"
    folder.mkdir(parents=True)
    # user 7 has out-of-order timestamps and a tie (items 50 then 20 at t=300).
    rows = ["7\t30\t4\t500", "3\t20\t5\t100", "7\t50\t3\t300", "7\t20\t1\t300", "3\t40\t2\t50"]
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    genres = ["unknown", "Action", "Comedy", "Drama"]
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)) + "\n")
    items = [
        "20|Café Society (1995)|01-Jan-1995||http://x|0|0|1|1",
        "30|Heat (1995)|01-Jan-1995||http://x|0|1|0|0",
        "40|unknown||||1|0|0|0",
        "50|Crumb (1994)|01-Jan-1994||http://x|0|0|0|1",
    ]
    (folder / "u.item").write_bytes("\n".join(items).encode("latin-1"))
    return folder


def test_ml100k_sorts_by_time_with_stable_ties_and_reindexes(tmp_path: Path) -> None:
    write_ml100k(tmp_path)
    ds = load_ml100k(tmp_path)
    assert ds.user_ids == ["3", "7"]
    assert ds.item_ids == ["", "20", "30", "40", "50"]
    originals = [[ds.item_ids[i] for i in seq] for seq in ds.sequences]
    assert originals == [["40", "20"], ["50", "20", "30"]]
    assert ds.n_items == 4


def test_ml100k_texts_from_u_item_and_u_genre(tmp_path: Path) -> None:
    write_ml100k(tmp_path)
    texts = load_ml100k(tmp_path).item_texts
    assert texts is not None
    assert texts[1] == "Café Society (1995). Genres: Comedy, Drama"
    assert texts[2] == "Heat (1995). Genres: Action"
    assert texts[3] == "unknown"  # only the placeholder genre


def test_ml100k_bad_line(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path)
    (folder / "u.data").write_text("1\t2\t3\t4\n1\t2\t3\n")
    with pytest.raises(DataFormatError, match=r"u\.data line 2: expected .*4 integers"):
        load_ml100k(tmp_path)


def write_beauty(root: Path, lines: str) -> Path:
    folder = root / "amazon-beauty"
    folder.mkdir(parents=True)
    (folder / "Beauty.txt").write_text(lines)
    titles = (
        "item_id\tasin\ttitle\n1\tB001\tCr&egrave;me &amp; Gloss\n2\tB002\t\n3\tB003\tNail polish\n"
    )
    (folder / "Beauty_item_titles.tsv").write_text(titles)
    return folder


def test_beauty_one_user_per_line_with_asins_and_unescaped_titles(tmp_path: Path) -> None:
    write_beauty(tmp_path, "1 1 2 3\n2 3 1\n")
    ds = load_beauty(tmp_path)
    assert [s.tolist() for s in ds.sequences] == [[1, 2, 3], [3, 1]]
    assert ds.user_ids == ["1", "2"] and ds.n_items == 3
    assert ds.item_ids == ["", "B001", "B002", "B003"]
    assert ds.item_texts == ["", "Crème & Gloss", "", "Nail polish"]


@pytest.mark.parametrize(
    ("content", "line", "expected"),
    [
        ("1 1 2\n2\n", 2, "a user id, then item ids"),
        ("1 1 2\n2 x\n", 2, "a user id"),
        ("1 1 2\n2 3\n1 4\n", 3, "each user on one line only"),
    ],
)
def test_beauty_bad_lines(tmp_path: Path, content: str, line: int, expected: str) -> None:
    write_beauty(tmp_path, content)
    with pytest.raises(DataFormatError) as err:
        load_beauty(tmp_path)
    assert f"Beauty.txt line {line}: expected" in str(err.value)
    assert expected in str(err.value)


def test_beauty_titles_header_checked(tmp_path: Path) -> None:
    folder = write_beauty(tmp_path, "1 1 2\n")
    (folder / "Beauty_item_titles.tsv").write_text("id\ttitle\n1\tx\n")
    with pytest.raises(DataFormatError, match=r"Beauty_item_titles\.tsv line 1"):
        load_beauty(tmp_path)


def test_load_dataset_dispatches_names_aliases_and_paths(tmp_path: Path) -> None:
    write_beauty(tmp_path, "1 1 2\n")
    write_ml100k(tmp_path)
    assert load_dataset("beauty", tmp_path).name == "beauty"
    assert load_dataset("Amazon-Beauty", tmp_path).n_interactions == 2
    assert load_dataset("ml-100k", tmp_path).n_users == 2
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("user,item,timestamp\na,x,1\n")
    assert load_dataset(str(csv_path)).name == "mine"
    assert load_dataset("mine.csv", tmp_path).n_interactions == 1  # relative to data_dir


def test_load_dataset_unknown_name_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownDataset, match="ml-1m, ml-100k, beauty"):
        load_dataset("netflix", tmp_path)
    with pytest.raises(DatasetNotFound):
        load_dataset("nowhere/log.csv", tmp_path)
    with pytest.raises(DatasetNotFound, match="ml-1m.txt"):
        load_dataset("ml-1m", tmp_path)


def test_describe_data_dir_reports_found_missing_and_invalid(tmp_path: Path) -> None:
    write_ml100k(tmp_path)
    write_beauty(tmp_path, "1 1 2\n2 oops\n")
    rows = {row["name"]: row for row in describe_data_dir(tmp_path)}
    assert set(rows) >= {"ml-1m", "ml-100k", "beauty"}
    keys = {"name", "status", "path", "users", "items", "interactions", "how_to_get"}
    assert all(keys <= set(row) for row in rows.values())
    assert rows["ml-100k"]["status"] == "found"
    assert (rows["ml-100k"]["users"], rows["ml-100k"]["interactions"]) == (2, 5)
    assert rows["ml-1m"]["status"] == "missing" and rows["ml-1m"]["users"] is None
    assert "TANDEM_DATA_DIR" in str(rows["ml-1m"]["how_to_get"])
    assert "grouplens.org" in str(rows["ml-100k"]["how_to_get"])
    assert rows["beauty"]["status"] == "invalid" and "line 2" in str(rows["beauty"]["error"])


# Real datasets: only where the (non-redistributable) files are present.
REAL = data_dir()


def _need(relative: str) -> Path:
    path = REAL / relative
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def test_real_ml1m_counts_and_titles() -> None:
    _need("ml-1m/ml-1m.txt")
    ds = load_ml1m(REAL)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (6040, 3416, 999611)
    assert ds.item_texts is not None and "(19" in ds.item_texts[1]  # "Title (Year). Genres: ..."
    assert min(len(s) for s in ds.sequences) == 18


def test_real_ml100k_counts() -> None:
    _need("ml-100k/u.data")
    ds = load_ml100k(REAL)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1682, 100000)
    assert ds.item_texts is not None and ds.item_texts[1].startswith("Toy Story (1995)")


def test_real_beauty_counts() -> None:
    _need("amazon-beauty/Beauty.txt")
    ds = load_beauty(REAL)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (22363, 12101, 198502)
    assert ds.item_texts is not None and sum(t == "" for t in ds.item_texts[1:]) == 7


def test_real_partial_raw_ratings() -> None:
    path = _need("ml-1m/partial_raw/ratings.dat.gz")
    ds = load_interactions_file(path)
    assert (ds.n_users, ds.n_interactions) == (2999, 487650)
