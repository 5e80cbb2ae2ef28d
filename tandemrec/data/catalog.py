"""The datasets tandemrec knows by name: where each lives under the data dir and how to get it."""

from __future__ import annotations

from dataclasses import dataclass

_PLACE = "Place the files under $TANDEM_DATA_DIR/{folder}/ (default data dir: ../shared/data)"


@dataclass(frozen=True)
class KnownDataset:
    """A named dataset: its main file relative to the data dir and where to obtain it."""

    name: str
    files: tuple[str, ...]  # candidate main files, first found wins
    description: str
    how_to_get: str
    aliases: tuple[str, ...] = ()


KNOWN_DATASETS: tuple[KnownDataset, ...] = (
    KnownDataset(
        name="ml-1m",
        files=("ml-1m/ml-1m.txt",),
        description="MovieLens 1M as preprocessed by SASRec (user item pairs in time order)",
        how_to_get=(
            "Get ml-1m.txt from the SASRec repository (github.com/kang205/SASRec, data/ml-1m.txt); "
            "for titles add movies.dat from ml-1m.zip (grouplens.org/datasets/movielens/1m/) and "
            "sas_to_original_items.txt / sas_to_original_users.txt from "
            "github.com/asash/ml1m-sas-mapping. " + _PLACE.format(folder="ml-1m")
        ),
        aliases=("ml1m", "movielens-1m"),
    ),
    KnownDataset(
        name="ml-100k",
        files=("ml-100k/u.data",),
        description="MovieLens 100K (u.data ratings with timestamps; titles in u.item)",
        how_to_get=(
            "Download ml-100k.zip from grouplens.org/datasets/movielens/100k/ and unzip it. "
            + _PLACE.format(folder="ml-100k")
        ),
        aliases=("ml100k", "movielens-100k"),
    ),
    KnownDataset(
        name="beauty",
        files=("amazon-beauty/Beauty.txt",),
        description="Amazon Beauty 5-core as used by S3-Rec (one user per line)",
        how_to_get=(
            "Get data/Beauty.txt from the S3-Rec repository (github.com/aHuiWang/CIKM2020-S3Rec); "
            "titles go in Beauty_item_titles.tsv (item_id, asin, title). "
            + _PLACE.format(folder="amazon-beauty")
        ),
        aliases=("amazon-beauty",),
    ),
    KnownDataset(
        name="ml-1m-raw",
        files=("ml-1m/ratings.dat", "ml-1m/partial_raw/ratings.dat.gz"),
        description="MovieLens 1M raw ratings.dat (UserID::MovieID::Rating::Timestamp)",
        how_to_get=(
            "Download ml-1m.zip from grouplens.org/datasets/movielens/1m/ and put ratings.dat "
            "(or a gzipped copy at partial_raw/ratings.dat.gz) under ml-1m/. "
            + _PLACE.format(folder="ml-1m")
        ),
        aliases=("ml1m-raw",),
    ),
)

HOW_TO_GET: dict[str, str] = {d.name: d.how_to_get for d in KNOWN_DATASETS}


def resolve_name(name: str) -> KnownDataset | None:
    """The known dataset called `name` (or one of its aliases), case-insensitively."""
    key = name.strip().lower()
    return next((d for d in KNOWN_DATASETS if key == d.name or key in d.aliases), None)
