"""Data: finding labelled images (``sources``) and turning them into batches (``images``)."""

from thaw.data import shards, store  # shards: registers the shards format with sources
from thaw.data.decoded import Decoded
from thaw.data.images import (
    class_weights,
    dataset_statistics,
    decode_sources,
    eval_transform,
    loader,
    policy_of,
    train_transform,
)
from thaw.data.sources import Item, Sources, discover, from_arrays, write_split

__all__ = [
    "Decoded",
    "Item",
    "Sources",
    "class_weights",
    "dataset_statistics",
    "decode_sources",
    "discover",
    "eval_transform",
    "from_arrays",
    "loader",
    "policy_of",
    "shards",
    "store",
    "train_transform",
    "write_split",
]
