"""Datasets for train.py: where they come from (fetch), and how they are
read and transformed (loading), both through torchvision's own classes.

    python -m custom_conv.datasets fetch mnist fashion-mnist [--data-dir ./data]
"""
from .catalog import DATASETS
from .sources import FetchFailed, fetch
from .loading import DatasetUnavailable, OfflineMNIST, load_datasets

__all__ = ["DATASETS", "DatasetUnavailable", "FetchFailed", "OfflineMNIST", "fetch", "load_datasets"]
