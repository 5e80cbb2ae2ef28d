"""Data layer: loading benchmark and user datasets as dense time-ordered sequences, and splits."""

from tandemrec.data.catalog import KNOWN_DATASETS, KnownDataset
from tandemrec.data.errors import DataFormatError, DatasetNotFound, UnknownDataset
from tandemrec.data.interactions import load_interactions_file
from tandemrec.data.loaders import (
    describe_data_dir,
    load_beauty,
    load_dataset,
    load_ml1m,
    load_ml100k,
)
from tandemrec.data.split import item_popularity, leave_one_out
from tandemrec.data.synthetic import make_synthetic, write_synthetic_csv
from tandemrec.data.types import PAD, LeaveOneOutSplit, SequenceDataset

__all__ = [
    "KNOWN_DATASETS",
    "PAD",
    "DataFormatError",
    "DatasetNotFound",
    "KnownDataset",
    "LeaveOneOutSplit",
    "SequenceDataset",
    "UnknownDataset",
    "describe_data_dir",
    "item_popularity",
    "leave_one_out",
    "load_beauty",
    "load_dataset",
    "load_interactions_file",
    "load_ml100k",
    "load_ml1m",
    "make_synthetic",
    "write_synthetic_csv",
]
